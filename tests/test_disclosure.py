"""Tools disclosed on demand, on the real stack: a real dev server, three synthetic teams (200
tools, each team in its own namespace with its own Nexus endpoint and worker), the real
orchestrator worker and LiteLLM. The model is the offline router: behind an OpenAI-compatible
HTTP endpoint (tests/support/catalog_lab_model.py), which measures the requests LiteLLM really
sends, or the built-in offline provider itself.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from orchestrator.client import ConversationClient
from orchestrator.config import LLMSettings
from orchestrator.disclosure import LOAD_TOOLS, load
from orchestrator.dispatch import build_routes
from orchestrator.loop_settings import LoopSettings
from orchestrator.models import CarriedState
from orchestrator.worker import build_orchestrator_worker
from orchestrator.workflows import ConversationWorkflow
from shared.offline_model.disclosure import LOADER
from tests.conftest import Orchestrator, Stack, orchestrator_settings
from tests.support.catalog_lab import (
    CATALOG_SIZE,
    ENDPOINTS,
    RESERVED_NAME_TOOL,
    TARGET_ASSET,
    TARGET_REQUEST,
    TARGET_SERVICE,
    TARGET_TOOL,
    TEAMS,
    catalog_teams,
    change_ticket,
    registry,
)
from tests.support.catalog_lab_model import OfflineRouterServer
from tests.support.fake_llm import FakeModelServer, completion
from tests.support.histories import record_if_requested

TICKET = change_ticket(TARGET_SERVICE, TARGET_TOOL, TARGET_ASSET)
OFF = {"disclose_tools_over_count": 0, "disclose_tools_over_tokens": 0}

# litellm's own response types trip a pydantic warning the first time they are built.
pytestmark = pytest.mark.filterwarnings("ignore:Item .* is using the `ReadOnly` qualifier")


@pytest.fixture(scope="module")
async def catalog(stack: Stack) -> AsyncIterator[None]:
    async with catalog_teams(stack.client("orchestrator")):
        yield


@pytest.fixture(scope="module")
def router_server() -> Iterator[OfflineRouterServer]:
    with OfflineRouterServer() as server:
        yield server


@pytest.fixture
def router(router_server: OfflineRouterServer) -> OfflineRouterServer:
    router_server.reset()
    return router_server


@asynccontextmanager
async def conversations(
    stack: Stack, model: FakeModelServer | None, **settings: Any
) -> AsyncIterator[ConversationClient]:
    """An orchestrator on the catalog's endpoints: `model` over HTTP, or (None) the built-in
    offline provider. A generous model timeout: a 200-tool request is counted by the fake."""
    client = stack.client("orchestrator")
    task_queue = f"disclosure-{uuid.uuid4().hex[:8]}"
    llm = (
        LLMSettings(model=None)
        if model is None
        else LLMSettings(
            model="openai/fake-model",
            api_base=f"{model.url}/v1",
            api_key="sk-fake",  # type: ignore[arg-type]
            timeout_seconds=30,
            temperature=0,
        )
    )
    worker = build_orchestrator_worker(
        client,
        task_queue=task_queue,
        settings=orchestrator_settings(**({"tool_endpoints": ENDPOINTS} | settings)),
        llm_settings=llm,
    )
    async with worker:
        yield ConversationClient(client, task_queue)


def _conversation() -> str:
    return f"disclosure-{uuid.uuid4().hex[:10]}"


def _tool_messages(request: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in request["messages"] if m["role"] == "tool"]


def test_the_offline_model_knows_the_platform_s_loader() -> None:
    assert LOADER == LOAD_TOOLS


async def test_a_large_catalog_is_loaded_on_demand_and_the_prompt_is_much_smaller(
    stack: Stack, catalog: None, router: OfflineRouterServer
) -> None:
    cid = _conversation()
    async with conversations(stack, router) as client:
        disclosed = await client.send(cid, TARGET_REQUEST)
        await client.end(cid)
        await client.handle(cid).result()
    on = router.prompt_sizes()
    # Loading tools schedules nothing: the conversation replays against the workflow code.
    replayed = await Replayer(
        workflows=[ConversationWorkflow], data_converter=pydantic_data_converter
    ).replay_workflow(await client.handle(cid).fetch_history())
    assert replayed.replay_failure is None
    await record_if_requested(client.handle(cid), "conversation_disclosure")
    router.reset()
    async with conversations(stack, router, **OFF) as client:
        whole = await client.send(_conversation(), TARGET_REQUEST)
    off = router.prompt_sizes()

    assert disclosed.ok, disclosed.error
    assert [(c.name, c.ok) for c in disclosed.tool_calls] == [
        (LOAD_TOOLS, True),
        (TARGET_TOOL, True),
    ]
    assert disclosed.tool_calls[0].args == {"names": [TARGET_TOOL]}
    assert disclosed.tool_calls[1].args["asset"] == TARGET_ASSET
    assert TICKET in disclosed.answer
    # Step 1: the index only; step 2: the index and the loaded tool's schema; step 3: the answer.
    assert [size.tool_names for size in on] == [
        [LOAD_TOOLS],
        [LOAD_TOOLS, TARGET_TOOL],
        [LOAD_TOOLS, TARGET_TOOL],
    ]

    assert whole.ok, whole.error
    assert [c.name for c in whole.tool_calls] == [TARGET_TOOL]
    assert TICKET in whole.answer
    assert LOAD_TOOLS not in off[0].tool_names and off[0].tools >= CATALOG_SIZE
    # The first model step's prompt, as the provider received it, at least 5x smaller.
    assert off[0].tokens >= 5 * on[0].tokens, (off[0], on[0])
    assert off[0].bytes >= 5 * on[0].bytes
    # The whole task, one step more, still far cheaper.
    assert disclosed.usage.prompt_tokens * 3 < whole.usage.prompt_tokens


async def test_the_index_lists_every_tool_with_its_service_and_a_short_summary(
    stack: Stack, catalog: None, router: OfflineRouterServer
) -> None:
    async with conversations(stack, router) as client:
        await client.send(_conversation(), TARGET_REQUEST)
    [loader] = router.chat_requests()[0]["tools"]
    lines = loader["function"]["description"].splitlines()[1:]
    assert len(lines) >= CATALOG_SIZE
    assert f"{TARGET_SERVICE}/{TARGET_TOOL}: Quarantine a device managed by the netops team." in (
        lines
    )
    # A team tool named like the meta-tool is listed qualified by its service.
    assert any(line.startswith(f"platform/platform__{RESERVED_NAME_TOOL}: ") for line in lines)
    assert all(len(line.partition(": ")[2]) <= 80 for line in lines)
    assert loader["function"]["parameters"]["properties"]["names"]["maxItems"] == 20


async def test_below_the_thresholds_the_tool_list_is_unchanged(
    orchestrator: Orchestrator, fake_model: FakeModelServer
) -> None:
    fake_model.script(completion("Nothing to do."))
    cid = _conversation()
    result = await orchestrator.conversations.send(cid, "hello")
    assert result.ok, result.error
    status = await orchestrator.conversations.status(cid)
    [request] = fake_model.chat_requests()
    names = [tool["function"]["name"] for tool in request["tools"]]
    assert LOAD_TOOLS not in names
    assert sorted(names) == sorted(status.tools)


async def test_unknown_names_are_reported_and_known_ones_loaded(
    stack: Stack, catalog: None, router: OfflineRouterServer
) -> None:
    router.script(
        completion(
            tool_calls=[(LOAD_TOOLS, {"names": [TARGET_TOOL, "no_such_tool", "people/desk_x"]})]
        ),
        completion(tool_calls=[(LOAD_TOOLS, {"names": ["still_nothing"]})]),
        completion(tool_calls=[(LOAD_TOOLS, {"names": "netops/inspect_vlan"})]),
        completion(tool_calls=[(LOAD_TOOLS, {"names": ["netops/inspect_vlan"]})]),
        completion("Loaded."),
    )
    async with conversations(stack, router) as client:
        result = await client.send(_conversation(), "load a few tools")
    assert result.ok, result.error
    first, nothing, malformed, qualified = result.tool_calls
    assert first.ok and "Unknown tool names: no_such_tool, people/desk_x" in first.result
    assert not nothing.ok and "Unknown tool names: still_nothing" in nothing.result
    assert not malformed.ok and '{"names": [tool names]}' in malformed.result
    assert qualified.ok  # the index's `service/name` form is accepted

    requests = router.chat_requests()
    told = json.loads(_tool_messages(requests[1])[0]["content"])
    assert told["loaded"] == [TARGET_TOOL]
    assert told["unknown"] == ["no_such_tool", "people/desk_x"]
    assert json.loads(_tool_messages(requests[2])[-1]["content"])["error"] == "not_found"
    assert json.loads(_tool_messages(requests[3])[-1]["content"])["error"] == "bad_request"
    tools = [[t["function"]["name"] for t in request["tools"]] for request in requests]
    assert tools[0] == [LOAD_TOOLS]
    assert tools[1] == tools[2] == tools[3] == [LOAD_TOOLS, TARGET_TOOL]
    assert tools[4] == [LOAD_TOOLS, TARGET_TOOL, "inspect_vlan"]


async def test_a_team_tool_named_like_the_meta_tool_is_loaded_and_called_qualified(
    stack: Stack, catalog: None, router: OfflineRouterServer
) -> None:
    qualified = f"platform__{RESERVED_NAME_TOOL}"
    router.script(
        completion(tool_calls=[(LOAD_TOOLS, {"names": [qualified]})]),
        completion(tool_calls=[(qualified, {"asset": "SRV1234"})]),
        completion("Done."),
    )
    async with conversations(stack, router) as client:
        result = await client.send(_conversation(), "load the tool inventory of SRV1234")
    assert result.ok, result.error
    loaded, called = result.tool_calls
    assert (loaded.name, loaded.ok) == (LOAD_TOOLS, True)
    assert (called.name, called.service, called.ok) == (RESERVED_NAME_TOOL, "platform", True)
    assert called.result["ticket"] == change_ticket("platform", RESERVED_NAME_TOOL, "SRV1234")


async def test_the_loaded_tools_survive_continue_as_new(
    stack: Stack, catalog: None, router: OfflineRouterServer
) -> None:
    cid = _conversation()
    async with conversations(stack, router, max_turns_per_run=1) as client:
        first = await client.send(cid, TARGET_REQUEST)
        turn_one = len(router.chat_requests())
        second = await client.send(cid, "Quarantine device DEV0043")
    assert first.ok and second.ok, (first.error, second.error)
    assert [c.name for c in first.tool_calls] == [LOAD_TOOLS, TARGET_TOOL]
    # The next run already shows the tool: the model calls it without loading it again.
    assert [c.name for c in second.tool_calls] == [TARGET_TOOL]
    assert change_ticket(TARGET_SERVICE, TARGET_TOOL, "DEV0043") in second.answer
    asked = router.chat_requests()[turn_one]
    assert [t["function"]["name"] for t in asked["tools"]] == [LOAD_TOOLS, TARGET_TOOL]
    history = await stack.client("orchestrator").get_workflow_handle(cid).fetch_history()
    started = history.events[0]
    assert started.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED
    assert started.workflow_execution_started_event_attributes.continued_execution_run_id


async def test_the_built_in_offline_model_loads_then_calls_the_tool(
    stack: Stack, catalog: None
) -> None:
    async with conversations(stack, None) as client:
        result = await client.send(_conversation(), TARGET_REQUEST)
    assert result.ok, result.error
    assert [(c.name, c.ok) for c in result.tool_calls] == [(LOAD_TOOLS, True), (TARGET_TOOL, True)]
    assert TICKET in result.answer


async def test_a_tool_called_from_the_index_without_loading_it_runs_and_is_loaded(
    stack: Stack, catalog: None, router: OfflineRouterServer
) -> None:
    router.script(
        completion(tool_calls=[("inspect_vlan", {"asset": "NET1234"})]),
        completion("Inspected."),
    )
    async with conversations(stack, router) as client:
        result = await client.send(_conversation(), "inspect VLAN NET1234")
    assert result.ok, result.error
    [called] = result.tool_calls
    assert (called.name, called.service, called.ok) == ("inspect_vlan", "netops", True)
    second = router.chat_requests()[1]
    assert [t["function"]["name"] for t in second["tools"]] == [LOAD_TOOLS, "inspect_vlan"]


def test_the_loaded_set_is_bounded_oldest_first() -> None:
    routes = build_routes([(None, registered.spec) for registered in registry(TEAMS[0])])
    state = CarriedState(routes=routes)
    settings = LoopSettings(max_loaded_tools=2)
    names = list(routes)[:3]
    loaded = load(settings, state, {"names": names})
    assert state.loaded_tools == names[1:]
    # The first name was loaded and dropped again by the same call: it says so.
    assert loaded.loaded == names[1:] and loaded.dropped == [names[0]]
    again = load(settings, state, {"names": [names[0]]})
    assert state.loaded_tools == [names[2], names[0]]
    assert again.dropped == [names[1]] and "No longer loaded" in again.message
    assert not load(settings, state, {"names": []}).ok
    assert not load(settings, state, {"names": ["x"] * 21}).ok
