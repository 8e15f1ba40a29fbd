"""Run a team's tool service: the Nexus handler, the generic tool workflow and the tool activity.

One start-up path for every team, driven by its manifest (`<team>/team.toml`, see shared.manifest):

    python -m shared.worker <team_package>       # e.g. python -m shared.worker hr_service

A team's `worker.py` is the same thing as a one-liner (`serve_package(__package__)`), so images and
docs can keep running `python -m <team_package>.worker`.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from temporalio.client import Client
from temporalio.worker import Interceptor, Worker

from shared.auth import CallerVerificationInterceptor, NexusAuthSettings
from shared.config import (
    ConfigError,
    TemporalSettings,
    ToolServiceSettings,
    load_settings,
    temporal_settings_for,
)
from shared.heartbeat import HEARTBEAT_THROTTLE
from shared.log import bind_context, configure_logging, get_logger
from shared.manifest import ManifestError, TeamManifest, default_root, find_team
from shared.nexus import ToolServiceHandler
from shared.telemetry import TelemetrySettings, install_tracing
from shared.temporal import (
    NamespaceMissingError,
    connect_when_ready,
    exit_process,
    install_runtime,
    require_namespace,
)
from shared.tool_activity import DEFAULT_MAX_RESULT_BYTES, ToolActivities
from shared.tool_workflow import ToolWorkflow
from shared.tools import ToolRegistry

if TYPE_CHECKING:
    from shared.mcp_client import McpConnections

log = get_logger(__name__)


@dataclass(frozen=True)
class TeamCode:
    """What a team's manifest names, imported: only the team's own worker does this."""

    registry: ToolRegistry
    workflows: tuple[type, ...]
    activities: tuple[Callable[..., Any], ...]
    # The team's MCP servers' live sessions (shared.mcp_client); None without `mcp_servers`.
    mcp: McpConnections | None = None

    async def close(self) -> None:
        if self.mcp is not None:
            await self.mcp.close()


def resolve_import_path(path: str) -> Any:
    """The object a "module:attribute" path names, or ManifestError saying what is missing."""
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise ManifestError(f"cannot import '{path}': no module named '{err.name}'") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ManifestError(f"cannot import '{path}': {module_name} has no '{attribute}'") from None


def load_team_code(team: TeamManifest) -> TeamCode:
    """Import the registry, workflows and activities the manifest names, and check their kinds."""
    if team.registry is None:
        registry: Any = ToolRegistry(team.service)
    else:
        registry = resolve_import_path(team.registry)
    if not isinstance(registry, ToolRegistry):
        raise ManifestError(f"{team.package}: registry '{team.registry}' is not a ToolRegistry")
    if registry.service != team.service:
        raise ManifestError(
            f"{team.package}: the registry's service is '{registry.service}' but team.toml "
            f"says '{team.service}'; tool results and keys are keyed by it, so make them equal"
        )
    workflows = tuple(resolve_import_path(path) for path in team.workflows)
    for path, workflow_class in zip(team.workflows, workflows, strict=True):
        if not inspect.isclass(workflow_class):
            raise ManifestError(f"{team.package}: workflow '{path}' is not a class")
    activities = tuple(resolve_import_path(path) for path in team.activities)
    for path, function in zip(team.activities, activities, strict=True):
        if not callable(function):
            raise ManifestError(f"{team.package}: activity '{path}' is not callable")
    return TeamCode(registry=registry, workflows=workflows, activities=activities)


async def prepare_team_code(team: TeamManifest) -> TeamCode:
    """`load_team_code`, plus the tools of the team's MCP servers, listed from the servers.

    The registry is copied first: the module's own registry stays as the team wrote it."""
    code = load_team_code(team)
    if team.mcp_servers:
        code = await _with_mcp_servers(team, code)
    if team.agents:
        code = _with_agents(team, code)
    return code


async def _with_mcp_servers(team: TeamManifest, code: TeamCode) -> TeamCode:
    # Imported only here: a team without MCP servers needs no `mcp` package in its image.
    from shared.mcp_client import McpConnections
    from shared.mcp_session import McpSessionWorkflow
    from shared.mcp_tools import publish_mcp_servers

    registry = code.registry.copy()
    connections = McpConnections(root=default_root())
    await publish_mcp_servers(team, registry, connections)
    return TeamCode(
        registry=registry,
        workflows=(*code.workflows, McpSessionWorkflow),
        activities=code.activities,
        mcp=connections,
    )


def _with_agents(team: TeamManifest, code: TeamCode) -> TeamCode:
    """The manifest's agents in the registry, and what runs them: their workflow, and the model
    step, which needs LiteLLM (the `agents` dependency group), imported only here."""
    if importlib.util.find_spec("litellm") is None:
        raise ManifestError(
            f"{team.package} declares agents, which need the 'agents' dependency group "
            "(no module named 'litellm'): uv sync --group agents"
        )
    from shared.agent_workflow import TeamAgentWorkflow
    from shared.agents import AgentModelActivities, publish_agents

    registry = code.registry if team.mcp_servers else code.registry.copy()
    publish_agents(team.package, team.agents, registry, later=bool(team.mcp_servers))
    return TeamCode(
        registry=registry,
        workflows=(*code.workflows, TeamAgentWorkflow),
        activities=(*code.activities, AgentModelActivities().agent_model_step),
        mcp=code.mcp,
    )


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
        max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
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


async def build_manifest_worker(
    client: Client,
    team: TeamManifest,
    *,
    fast_path_budget: timedelta,
    task_queue: str | None = None,
    auth: NexusAuthSettings | None = None,
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
) -> Worker:
    """The worker a manifest describes, on its task queue unless `task_queue` says otherwise
    (tests and benches run a second deployment of a team beside the first)."""
    code = await prepare_team_code(team)
    return build_team_worker(
        client,
        code.registry,
        task_queue=task_queue or team.task_queue,
        fast_path_budget=fast_path_budget,
        workflows=code.workflows,
        activities=code.activities,
        auth=auth,
        max_result_bytes=max_result_bytes,
    )


def serve_team(team: TeamManifest) -> int:
    """Run one team's worker until signalled. Returns a process exit code.

    Namespace and task queue default to the manifest's; TEMPORAL_* variables override them.
    """
    configure_logging()
    try:
        load_team_code(team)  # a bad manifest or import is one line, before anything connects
        settings = load_settings(temporal_settings_for(team.namespace, team.task_queue))
        tool_settings = load_settings(ToolServiceSettings)
        auth = load_settings(NexusAuthSettings)
        auth.check_team_side(team.service)
    except (ConfigError, ValueError) as err:
        log.error(str(err))
        return 2

    async def build(client: Client) -> Worker:
        code = await prepare_team_code(team)
        closing.append(code)
        if not auth.verify_keys:
            log.warning(
                "Nexus caller authentication is OFF: set NEXUS_AUTH_VERIFY_KEYS to require it"
            )
            gated = [t.spec.name for t in code.registry if t.spec.approval.gated]
            if gated:
                # Without a signed token the approval a call carries is only the caller's say-so.
                log.warning(
                    "tools that need approval accept unauthenticated approvals", tools=gated
                )
            per_user = [source.name for source in team.mcp_servers if source.per_user]
            if per_user:
                # Their {user} is then whatever the caller claims.
                log.warning("MCP servers receive an unauthenticated user name", servers=per_user)
        log.info("tools published", tools=code.registry.names())
        return build_team_worker(
            client,
            code.registry,
            task_queue=settings.task_queue,
            fast_path_budget=tool_settings.fast_path_budget,
            workflows=code.workflows,
            activities=code.activities,
            auth=auth,
            max_result_bytes=tool_settings.max_result_bytes,
        )

    closing: list[TeamCode] = []

    async def close() -> None:
        for code in closing:
            await code.close()

    return serve_worker(settings, build, telemetry_name=team.service, http_spans=True, close=close)


def serve_worker(
    settings: TemporalSettings,
    build: Callable[[Client], Worker | Awaitable[Worker]],
    *,
    telemetry_name: str,
    http_spans: bool = False,
    close: Callable[[], Awaitable[None]] | None = None,
    **started: Any,
) -> int:
    """The start-up path of every worker process, team or orchestrator: set up metrics and
    traces, connect (waiting for a server that is starting), check the namespace, build the
    worker, run it until SIGINT/SIGTERM. Returns the process exit code; start-up failures are
    one log line. `telemetry_name` is the service name its spans carry; `http_spans` traces
    outgoing HTTP calls too (a team's tools)."""
    try:
        observability = load_settings(TelemetrySettings)
    except ConfigError as err:
        log.error(str(err))
        return 2
    try:
        install_runtime(observability.metrics_bind_address)
    except ValueError as err:  # the core cannot bind the address (in use, not local, ...)
        log.error(
            f"cannot serve metrics on METRICS_BIND_ADDRESS={observability.metrics_bind_address}: "
            f"{str(err).removeprefix('Failed starting Prometheus exporter: ')}"
        )
        return 2
    tracing = install_tracing(observability, telemetry_name, http_spans=http_spans)

    async def main() -> None:
        bind_context(namespace=settings.namespace, task_queue=settings.task_queue)
        client = await connect_when_ready(settings)
        await require_namespace(client)
        try:
            built = build(client)
            worker = await built if inspect.isawaitable(built) else built
            log.info(
                "worker started",
                service=telemetry_name,
                metrics=observability.metrics_bind_address or "off",
                tracing=tracing,
                **started,
            )
            await run_until_signalled(worker)
        finally:
            if close is not None:
                await close()

    return run_worker_process(main)


def serve_package(package: str) -> int:
    """`python -m <package>.worker` and `python -m shared.worker <package>`: serve the team whose
    manifest is `<package>/team.toml`."""
    try:
        team = find_team(package)
    except ManifestError as err:
        configure_logging()
        log.error(str(err))
        return 2
    return serve_team(team)


def run_worker_process(serve: Callable[[], Coroutine[Any, Any, None]]) -> int:
    """Run a worker's main coroutine; start-up failures become one log line and an exit code."""
    try:
        asyncio.run(serve())
    except (NamespaceMissingError, ManifestError) as err:
        log.error(str(err))
        return 2
    except RuntimeError as err:  # connection failures surface as RuntimeError from the core SDK
        log.error("worker stopped", error=str(err).splitlines()[0])
        return 1
    return 0


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2 or argv[1].startswith("-"):
        print(
            "usage: python -m shared.worker <team_package>   (a folder with a team.toml)",
            file=sys.stderr,
        )
        return 2
    return serve_package(argv[1])


if __name__ == "__main__":
    exit_process(main(sys.argv))
