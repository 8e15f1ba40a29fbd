"""Create the namespaces and Nexus endpoints a stack needs. Idempotent: safe to run on every start.

Used by `make up`, by the test suite, and by the compose stack's one-shot setup container.
`python -m infrastructure.setup` waits for the server, then creates what is missing and corrects
endpoints whose target changed. What it creates comes from the team manifests (`*/team.toml`, see
shared.manifest), read as data: the setup image carries those files and no team code.

With STORE_SETUP_ADMIN_URL set (the compose stack), it first gives the orchestrator's conversation
store its own PostgreSQL database and user (see `ensure_store_database`): the password is made
here, once, and kept as a file in the orchestrator's secrets directory (a named volume), so no
password for it is ever committed.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from google.protobuf.duration_pb2 import Duration
from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.nexus.v1 import EndpointSpec, EndpointTarget
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    CreateNexusEndpointRequest,
    ListNexusEndpointsRequest,
    ListSearchAttributesRequest,
    UpdateNexusEndpointRequest,
)
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, RegisterNamespaceRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from shared.config import (
    AWAITING_APPROVAL_ATTRIBUTE,
    ConfigError,
    OrchestratorTemporalSettings,
    TemporalSettings,
    load_settings,
)
from shared.log import configure_logging, get_logger
from shared.manifest import TeamManifest, discover_teams
from shared.temporal import connect_when_ready, exit_process

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


async def ensure_search_attribute(client: Client, namespace: str, name: str) -> bool:
    """Register a Bool search attribute in a namespace unless it has it. True when added."""
    existing = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    if name in existing.custom_attributes:
        return False
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=namespace,
                search_attributes={name: IndexedValueType.INDEXED_VALUE_TYPE_BOOL},
            )
        )
    except RPCError as err:
        if err.status == RPCStatusCode.ALREADY_EXISTS:  # a concurrent setup won the race
            return False
        raise
    return True


async def ensure_stack(client: Client, stack: StackSettings) -> None:
    retention = timedelta(days=stack.retention_days)
    for namespace in stack.namespaces:
        created = await ensure_namespace(client, namespace, retention)
        await wait_for_namespace(client, namespace)
        log.info("namespace ready", namespace=namespace, created=created)
    orchestrator = OrchestratorTemporalSettings.model_fields["namespace"].default
    if orchestrator in stack.namespaces:
        added = await ensure_search_attribute(client, orchestrator, AWAITING_APPROVAL_ATTRIBUTE)
        log.info("search attribute ready", name=AWAITING_APPROVAL_ATTRIBUTE, added=added)
    for endpoint in stack.endpoints:
        outcome = await ensure_endpoint(client, endpoint)
        log.info(
            "nexus endpoint ready",
            endpoint=endpoint.name,
            target=f"{endpoint.namespace}/{endpoint.task_queue}",
            outcome=outcome,
        )


# The file the orchestrator reads its store password from, in its SECRETS_DIR: the name
# pydantic-settings gives OrchestratorSettings.store_password (ORCHESTRATOR_STORE_PASSWORD).
# Spelled here, not imported: the setup image carries no orchestrator code.
STORE_PASSWORD_FILE = "orchestrator_store_password"
SQL_NAME_PATTERN = r"^[a-z_][a-z0-9_]{0,62}$"


class StoreSetupSettings(BaseSettings):
    """`STORE_SETUP_*`: the orchestrator's PostgreSQL database and user, made by the setup job.

    Unset admin URL (`make up`, the tests): nothing to do. The admin password is best given as the
    file `store_setup_admin_password` in SECRETS_DIR; the store user's password is generated once
    and kept in `password_dir` (the orchestrator's secrets directory, shared through a volume)."""

    model_config = SettingsConfigDict(env_prefix="STORE_SETUP_", env_file=".env", extra="ignore")

    admin_url: str | None = Field(
        default=None, description="postgresql://superuser@host:5432/postgres (no password)."
    )
    admin_password: SecretStr | None = None
    database: str = Field(default="orchestrator", pattern=SQL_NAME_PATTERN)
    user: str = Field(default="orchestrator", pattern=SQL_NAME_PATTERN)
    password_dir: Path | None = Field(
        default=None, description="Where the store user's password file is kept (a volume)."
    )


def write_private_file(path: Path, text: str) -> None:
    """Replace `path` with `text`, mode 0600 from its first byte, whatever the umask or the mode a
    file of that name had before: written to a fresh file and renamed over the old one, so the
    secret is never in a file that others can read, nor ever half-written."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(descriptor, 0o600)  # the umask can only clear bits; make it exactly 0600
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            descriptor = -1  # the file object owns it now
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if descriptor >= 0:
            os.close(descriptor)
        temporary.unlink(missing_ok=True)
        raise


def store_password(directory: Path) -> str:
    """The store user's password from `directory`, made (and written 0600) on first use."""
    path = directory / STORE_PASSWORD_FILE
    if path.is_file():
        existing = path.read_text(encoding="utf-8").strip()
        if existing:
            return existing
    password = secrets.token_urlsafe(32)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private_file(path, password)
    return password


async def ensure_store_database(settings: StoreSetupSettings) -> str | None:
    """Create the store's user and database unless they exist, and (re)set the user's password to
    the one in the secrets directory. Idempotent. Returns what it did, or None when not asked."""
    if not settings.admin_url:
        return None
    if settings.password_dir is None:
        raise ConfigError(
            "invalid configuration: STORE_SETUP_PASSWORD_DIR is required with STORE_SETUP_ADMIN_URL"
        )
    import psycopg  # the `store` dependency group: only a setup that makes a database needs it
    from psycopg import sql

    password = store_password(settings.password_dir)
    admin = settings.admin_password.get_secret_value() if settings.admin_password else None
    extra: dict[str, Any] = {"password": admin} if admin else {}
    user, database = sql.Identifier(settings.user), sql.Identifier(settings.database)
    done: list[str] = []
    async with await psycopg.AsyncConnection.connect(
        settings.admin_url, autocommit=True, connect_timeout=10, **extra
    ) as conn:
        role = await conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (settings.user,))
        if await role.fetchone() is None:
            await conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(user))
            done.append("user created")
        # Every run: the password in the volume is the one that works, even after a rotation
        # (delete the file and run setup again).
        await conn.execute(
            sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(user, sql.Literal(password))
        )
        found = await conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (settings.database,)
        )
        if await found.fetchone() is None:
            await conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(database, user))
            done.append("database created")
        # Only its owner (and superusers) may connect: not the Temporal server's user.
        await conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(database))
    return ", ".join(done) or "unchanged"


async def _main() -> int:
    try:
        temporal = load_settings(TemporalSettings)
        stack = load_settings(StackSettings)
        store = load_settings(StoreSetupSettings)
    except ConfigError as err:
        log.error(str(err))
        return 2
    try:
        outcome = await ensure_store_database(store)
    except ConfigError as err:
        log.error(str(err))
        return 2
    except Exception as err:  # psycopg's errors: the database is not up yet, or refused us
        log.error("store database setup failed", error=f"{type(err).__name__}: {err}")
        return 1
    if outcome is not None:
        log.info("store database ready", database=store.database, user=store.user, outcome=outcome)
    try:
        client = await connect_when_ready(temporal, wait_seconds=120)
        await ensure_stack(client, stack)
    except (RuntimeError, RPCError) as err:
        log.error("setup failed", address=temporal.address, error=str(err))
        return 1
    return 0


if __name__ == "__main__":
    configure_logging()
    exit_process(asyncio.run(_main()))
