"""`python -m orchestrator.gateway`: serve the gateway with uvicorn.

Reads GATEWAY_* (GatewaySettings), TEMPORAL_* (the orchestrator's namespace and task queue) and
ORCHESTRATOR_STORE_URL / ORCHESTRATOR_STORE_PASSWORD (the conversation store the worker writes).
A bad setting is one line on stderr and exit code 2; an unreachable Temporal, exit code 1.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import uvicorn

from orchestrator.config import OrchestratorSettings
from orchestrator.gateway.app import create_app
from orchestrator.gateway.services import Services
from orchestrator.gateway.settings import GatewaySettings
from orchestrator.mcp_server import McpSettings
from shared.config import ConfigError, OrchestratorTemporalSettings, load_settings
from shared.log import configure_logging, get_logger
from shared.temporal import exit_process

log = get_logger("gateway")


def server_config(app: object, settings: GatewaySettings) -> uvicorn.Config:
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.host,
        port=settings.port,
        log_config=None,  # our logging (shared.log) renders uvicorn's lines too
        access_log=True,  # method, path and status: never a header, so never a key
        lifespan="on",
        timeout_graceful_shutdown=5,
        # Request heads beyond this are refused by uvicorn itself.
        h11_max_incomplete_event_size=64 * 1024,
    )


async def serve(
    settings: GatewaySettings,
    temporal: OrchestratorTemporalSettings,
    orchestrator: OrchestratorSettings,
    mcp: McpSettings | None = None,
) -> int:
    try:
        services = await Services.open(temporal, orchestrator)
    except RuntimeError as error:
        text = str(error).strip()
        first = (text.splitlines() or ["unreachable"])[0]
        reason = "connection refused" if "refused" in text.lower() else first
        print(
            f"error: cannot reach Temporal at {temporal.address} (namespace "
            f"{temporal.namespace}): {reason}",
            file=sys.stderr,
        )
        return 1
    try:
        server = uvicorn.Server(server_config(create_app(settings, services, mcp), settings))
        # After its graceful shutdown uvicorn raises the stop signal again, for the handler that
        # was in place before it: with the default one, SIGTERM (`docker stop`) would then kill
        # the process (exit 143) instead of letting it exit 0 like the workers. Make that one
        # a no-op (SIGINT too: no KeyboardInterrupt traceback after Ctrl-C).
        for stop in (signal.SIGTERM, signal.SIGINT):
            signal.signal(stop, lambda *_: None)
        await server.serve()
        return 0 if server.started else 1
    finally:
        await services.close()


def main() -> int:
    configure_logging()
    try:
        settings = load_settings(GatewaySettings)
        temporal = load_settings(OrchestratorTemporalSettings)
        orchestrator = load_settings(OrchestratorSettings)
        mcp = load_settings(McpSettings)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    log.info("gateway starting", host=settings.host, port=settings.port)
    return asyncio.run(serve(settings, temporal, orchestrator, mcp))


if __name__ == "__main__":
    exit_process(main())
