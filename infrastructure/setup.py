"""Create the namespaces and Nexus endpoints a stack needs. Idempotent: safe to run on every start.

Used by `make up`, by the test suite, and by the compose stack's one-shot setup container.
`python -m infrastructure.setup` waits for the server, then creates what is missing and corrects
endpoints whose target changed. What it creates comes from the team manifests (`*/team.toml`, see
shared.manifest), read as data: the setup image carries those files and no team code.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Sequence
from datetime import timedelta

from google.protobuf.duration_pb2 import Duration
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from temporalio.api.nexus.v1 import EndpointSpec, EndpointTarget
from temporalio.api.operatorservice.v1 import (
    CreateNexusEndpointRequest,
    ListNexusEndpointsRequest,
    UpdateNexusEndpointRequest,
)
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, RegisterNamespaceRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from shared.config import (
    ConfigError,
    OrchestratorTemporalSettings,
    TemporalSettings,
    load_settings,
)
from shared.log import configure_logging, get_logger
from shared.manifest import TeamManifest, discover_teams
from shared.temporal import connect_when_ready

log = get_logger(__name__)


class EndpointDefinition(BaseModel):
    name: str = Field(pattern=r"^[a-zA-Z][a-zA-Z0-9-]*$")
    namespace: str
    task_queue: str


def team_endpoint(team: TeamManifest) -> EndpointDefinition:
    return EndpointDefinition(
        name=team.endpoint, namespace=team.namespace, task_queue=team.task_queue
    )


def stack_namespaces(teams: Sequence[TeamManifest]) -> list[str]:
    """The orchestrator's namespace, then each team's."""
    orchestrator = OrchestratorTemporalSettings.model_fields["namespace"].default
    return list(dict.fromkeys([orchestrator, *(team.namespace for team in teams)]))


def _discovered_namespaces() -> list[str]:
    return stack_namespaces(discover_teams())


def _discovered_endpoints() -> list[EndpointDefinition]:
    return [team_endpoint(team) for team in discover_teams()]


class StackSettings(BaseSettings):
    """What to create: by default the orchestrator's namespace and, for every team manifest
    (`*/team.toml`), its namespace and Nexus endpoint. Overridable with STACK_NAMESPACES /
    STACK_ENDPOINTS (JSON)."""

    model_config = SettingsConfigDict(env_prefix="STACK_", env_file=".env", extra="ignore")

    namespaces: list[str] = Field(default_factory=_discovered_namespaces)
    endpoints: list[EndpointDefinition] = Field(default_factory=_discovered_endpoints)
    retention_days: int = Field(default=3, ge=1, le=90)


async def ensure_namespace(client: Client, namespace: str, retention: timedelta) -> bool:
    """Register a namespace unless it exists. Returns True when it was created."""
    try:
        await client.workflow_service.register_namespace(
            RegisterNamespaceRequest(
                namespace=namespace,
                workflow_execution_retention_period=Duration(
                    seconds=int(retention.total_seconds())
                ),
            )
        )
    except RPCError as err:
        if err.status == RPCStatusCode.ALREADY_EXISTS:
            return False
        raise
    return True


async def wait_for_namespace(client: Client, namespace: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await client.workflow_service.describe_namespace(
                DescribeNamespaceRequest(namespace=namespace)
            )
            return
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.2)


async def ensure_endpoint(client: Client, endpoint: EndpointDefinition) -> str:
    """Create or correct one Nexus endpoint. Returns 'created', 'updated' or 'unchanged'."""
    spec = EndpointSpec(
        name=endpoint.name,
        target=EndpointTarget(
            worker=EndpointTarget.Worker(
                namespace=endpoint.namespace, task_queue=endpoint.task_queue
            )
        ),
    )
    existing = await client.operator_service.list_nexus_endpoints(
        ListNexusEndpointsRequest(name=endpoint.name, page_size=10)
    )
    for current in existing.endpoints:
        if current.spec.name != endpoint.name:
            continue
        target = current.spec.target.worker
        if (target.namespace, target.task_queue) == (endpoint.namespace, endpoint.task_queue):
            return "unchanged"
        await client.operator_service.update_nexus_endpoint(
            UpdateNexusEndpointRequest(id=current.id, version=current.version, spec=spec)
        )
        return "updated"
    try:
        await client.operator_service.create_nexus_endpoint(CreateNexusEndpointRequest(spec=spec))
    except RPCError as err:
        if err.status == RPCStatusCode.ALREADY_EXISTS:  # a concurrent setup won the race
            return "unchanged"
        raise
    return "created"


async def ensure_stack(client: Client, stack: StackSettings) -> None:
    retention = timedelta(days=stack.retention_days)
    for namespace in stack.namespaces:
        created = await ensure_namespace(client, namespace, retention)
        await wait_for_namespace(client, namespace)
        log.info("namespace ready", namespace=namespace, created=created)
    for endpoint in stack.endpoints:
        outcome = await ensure_endpoint(client, endpoint)
        log.info(
            "nexus endpoint ready",
            endpoint=endpoint.name,
            target=f"{endpoint.namespace}/{endpoint.task_queue}",
            outcome=outcome,
        )


async def _main() -> int:
    try:
        temporal = load_settings(TemporalSettings)
        stack = load_settings(StackSettings)
    except ConfigError as err:
        log.error(str(err))
        return 2
    try:
        client = await connect_when_ready(temporal, wait_seconds=120)
        await ensure_stack(client, stack)
    except (RuntimeError, RPCError) as err:
        log.error("setup failed", address=temporal.address, error=str(err))
        return 1
    return 0


if __name__ == "__main__":
    configure_logging()
    code = asyncio.run(_main())
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter finalisation: the Temporal core runtime's threads can abort it
    # (PyGILState_Release), turning a successful setup into exit 134.
    os._exit(code)
