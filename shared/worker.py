"""Run a team's tool service: the Nexus handler, the generic tool workflow and the tool activity.

Every team's `worker.py` is a few lines on top of this, so a new team copies one folder.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine, Sequence
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.worker import Interceptor, Worker

from shared.auth import CallerVerificationInterceptor, NexusAuthSettings
from shared.config import ConfigError, TemporalSettings, ToolServiceSettings, load_settings
from shared.log import bind_context, configure_logging, get_logger
from shared.nexus import ToolServiceHandler
from shared.temporal import NamespaceMissingError, connect_when_ready, require_namespace
from shared.tool_activity import DEFAULT_MAX_RESULT_BYTES, ToolActivities
from shared.tool_workflow import ToolWorkflow
from shared.tools import ToolRegistry

log = get_logger(__name__)


def build_team_worker(
    client: Client,
    registry: ToolRegistry,
    *,
    task_queue: str,
    fast_path_budget: timedelta,
    workflows: Sequence[type] = (),
    activities: Sequence[Callable[..., Any]] = (),
    auth: NexusAuthSettings | None = None,
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
) -> Worker:
    """A team worker. With verify keys in `auth`, every Nexus request must carry a valid token."""
    interceptors: list[Interceptor] = []
    if auth is not None and auth.verify_keys:
        assert auth.audience, "check_team_side() validates this before a worker is built"
        interceptors.append(CallerVerificationInterceptor(auth.verifying(), auth.audience))
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[ToolWorkflow, *workflows],
        activities=[ToolActivities(registry, client, max_result_bytes).run_tool, *activities],
        nexus_service_handlers=[ToolServiceHandler(registry, task_queue, fast_path_budget)],
        interceptors=interceptors,
    )


async def run_until_signalled(worker: Worker) -> None:
    """Run a worker until SIGINT/SIGTERM, then let in-flight tasks finish."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    run = asyncio.create_task(worker.run())
    stopped = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({run, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if run not in done:
        log.info("shutting down worker")
        await worker.shutdown()
    await run


def serve_team(
    registry: ToolRegistry,
    settings_type: type[TemporalSettings],
    *,
    workflows: Sequence[type] = (),
    activities: Sequence[Callable[..., Any]] = (),
) -> int:
    """Entry point body for `python -m <team>_service.worker`. Returns a process exit code."""
    configure_logging()
    try:
        settings = load_settings(settings_type)
        tool_settings = load_settings(ToolServiceSettings)
        auth = load_settings(NexusAuthSettings)
        auth.check_team_side(registry.service)
    except (ConfigError, ValueError) as err:
        log.error(str(err))
        return 2
    if not auth.verify_keys:
        log.warning("Nexus caller authentication is OFF: set NEXUS_AUTH_VERIFY_KEYS to require it")

    async def main() -> None:
        bind_context(namespace=settings.namespace, task_queue=settings.task_queue)
        client = await connect_when_ready(settings)
        await require_namespace(client)
        worker = build_team_worker(
            client,
            registry,
            task_queue=settings.task_queue,
            fast_path_budget=tool_settings.fast_path_budget,
            workflows=workflows,
            activities=activities,
            auth=auth,
            max_result_bytes=tool_settings.max_result_bytes,
        )
        log.info("worker started", service=registry.service, tools=registry.names())
        await run_until_signalled(worker)

    return run_worker_process(main)


def run_worker_process(serve: Callable[[], Coroutine[Any, Any, None]]) -> int:
    """Run a worker's main coroutine; start-up failures become one log line and an exit code."""
    try:
        asyncio.run(serve())
    except NamespaceMissingError as err:
        log.error(str(err))
        return 2
    except RuntimeError as err:  # connection failures surface as RuntimeError from the core SDK
        log.error("worker stopped", error=str(err).splitlines()[0])
        return 1
    return 0
