"""Agents that teams publish over their own Nexus endpoints (shared.agents), on the real stack.

The conversation's model and the lab agents' model are two fake OpenAI-compatible servers (the
only stand-ins); IT's triage agent runs on the built-in offline model, as `make demo` runs it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus

from infrastructure.setup import EndpointDefinition, ensure_endpoint
from orchestrator.models import CancelRequest, TurnResult
from orchestrator.store import open_store
from shared.agents import AGENT_WORKFLOW_NAME
from shared.contract import MAX_AGENT_DEPTH, ToolCall
from shared.manifest import ManifestError, load_manifest
from shared.worker import build_manifest_worker
from tests.conftest import STORE_URL, Orchestrator, Stack, custom_orchestrator, eventually
from tests.support.fake_llm import FakeModelServer, completion
from tests.support.gateway import dev_server_address
from tests.support.histories import record_if_requested
from tests.support.team_process import (
    SUPPORT,
    serving,
    start_team_worker,
    stop_team_worker,
    wait_for_file,
)

LAB = load_manifest(SUPPORT / "agent_lab" / "team.toml")


def _conversation() -> str:
    return f"agents-{uuid.uuid4()}"


@pytest.fixture(scope="module")
def agent_model() -> Iterator[FakeModelServer]:
    """The lab agents' own provider, separate from the conversation's."""
    with FakeModelServer() as server:
        yield server


@pytest.fixture(scope="module")
async def lab(
    stack: Stack, agent_model: FakeModelServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Path]:
    """The lab team in this process, on its manifest's task queue and endpoint."""
    gate = tmp_path_factory.mktemp("agent-lab")
    os.environ.update(
        AGENT_LAB_MODEL_URL=f"{agent_model.url}/v1",
        AGENT_LAB_MODEL_KEY="sk-lab",
        AGENT_LAB_GATE_DIR=str(gate),
    )
    if str(SUPPORT) not in sys.path:
        sys.path.insert(0, str(SUPPORT))
    await ensure_endpoint(
        stack.client("orchestrator"),
        EndpointDefinition(name=LAB.endpoint, namespace=LAB.namespace, task_queue=LAB.task_queue),
    )
    worker = await build_manifest_worker(
        stack.client(LAB.namespace), LAB, fast_path_budget=timedelta(0)
    )
    async with worker:
        yield gate


@pytest.fixture
def lab_model(agent_model: FakeModelServer) -> FakeModelServer:
    agent_model.reset()
    return agent_model


async def _agent_runs(client: Client, conversation: str) -> list[Any]:
    """The TeamAgentWorkflow runs a conversation started, oldest first."""
    runs = []
    async for execution in client.list_workflows(f"WorkflowType = '{AGENT_WORKFLOW_NAME}'"):
        handle = client.get_workflow_handle(execution.id)
        history = await handle.fetch_history()
        start = history.events[0].workflow_execution_started_event_attributes
        payload = start.input.payloads[0].data.decode()
        if conversation in payload:
            runs.append((execution, history))
    return sorted(runs, key=lambda run: run[0].start_time)


def _count(history: Any, event_type: int, name: str | None = None) -> int:
    total = 0
    for event in history.events:
        if event.event_type != event_type:
            continue
        if name is None:
            total += 1
        elif event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            total += event.activity_task_scheduled_event_attributes.activity_type.name == name
        elif event_type == EventType.EVENT_TYPE_NEXUS_OPERATION_SCHEDULED:
            total += event.nexus_operation_scheduled_event_attributes.operation == name
    return total


async def test_a_conversation_delegates_to_it_triage_and_its_usage_rolls_up(
    stack: Stack, orchestrator: Orchestrator, fake_model: FakeModelServer
) -> None:
    """IT's triage agent, discovered as a tool, runs its own loop in the `it` namespace on the
    offline model; the parent's history holds one Nexus operation, and its usage the child's."""
    cid = _conversation()
    task = "Check the IP history and read the Jira metrics for host 192.0.2.7"
    fake_model.script(
        completion(tool_calls=[("it_triage", {"task": task})]),
        completion("Triage is done."),
    )
    result = await orchestrator.conversations.send(cid, "Triage host 192.0.2.7")
    assert result.ok, result.error
    [call] = result.tool_calls
    assert (call.name, call.service, call.ok) == ("it_triage", "it", True), call.result
    answer = call.result
    assert answer["answer"] and answer["steps"] >= 2
    assert "get_ip_history" in [c["tool"] for c in answer["tool_calls"]]
    assert answer["models"] == ["offline/keyword-router"] * answer["steps"]
    # Two parent steps on the fake model (20 + 20 prompt tokens), plus the agent's own.
    assert call.usage is not None and call.usage.model_steps == answer["steps"]
    assert result.usage.prompt_tokens == 40 + call.usage.prompt_tokens
    assert call.usage.prompt_tokens > 0
    assert result.usage.unpriced_steps == 2 + answer["steps"]
    # The parent's history: one Nexus operation for the delegation.
    parent = await stack.client("orchestrator").get_workflow_handle(cid).fetch_history()
    assert _count(parent, EventType.EVENT_TYPE_NEXUS_OPERATION_SCHEDULED, "execute_tool") == 1
    # The child's: its own loop, model steps and tool workflows, in the team's namespace.
    [(execution, child)] = await eventually(lambda: _agent_runs(stack.client("it"), cid))
    assert execution.status == WorkflowExecutionStatus.COMPLETED
    await record_if_requested(
        stack.client("it").get_workflow_handle(execution.id), "team_agent_triage"
    )
    await record_if_requested(
        stack.client("orchestrator").get_workflow_handle(cid), "conversation_team_agent"
    )
    steps = _count(child, EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED, "agent_model_step")
    assert steps == answer["steps"]
    assert _count(child, EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED) == len(
        answer["tool_calls"]
    )
    # The agent's spending is a usage row of its own: budgets and `agent usage` count it.
    store = open_store(STORE_URL)
    try:
        rows = [r for r in await store.usage_steps() if r.conversation_id == cid]
    finally:
        await store.close()
    [agent_row] = [r for r in rows if r.model == "agent it.it_triage"]
    assert agent_row.prompt_tokens == call.usage.prompt_tokens and agent_row.cost_usd is None
    assert len(rows) == 3  # the conversation's two model steps, and the agent's
    # Whoever watched the turn saw the agent's run in its tool_finished event.
    events = await orchestrator.conversations.events(cid)
    finished = [e for e in events.events if e.kind == "tool_finished" and e.tool == "it_triage"]
    assert finished and finished[0].detail and finished[0].detail.startswith("agent:")


async def test_a_gated_call_is_proposed_to_the_caller_not_run(
    stack: Stack, lab: Path, lab_model: FakeModelServer, fake_model: FakeModelServer
) -> None:
    cid = _conversation()
    fake_model.script(
        completion(tool_calls=[("researcher", {"task": "report on alpha"})]),
        completion("I will ask for approval."),
    )
    lab_model.script(
        completion(
            tool_calls=[("lookup", {"topic": "alpha"}), ("file_report", {"title": "alpha"})]
        ),
        completion("alpha is fine; a report is proposed."),
    )
    async with custom_orchestrator(stack, fake_model, tool_endpoints=[LAB.endpoint]) as client:
        result = await client.send(cid, "report on alpha")
    assert result.ok, result.error
    answer = result.tool_calls[0].result
    assert answer["answer"] == "alpha is fine; a report is proposed."
    [proposed] = answer["proposed_calls"]
    assert (proposed["tool"], proposed["args"]) == ("file_report", {"title": "alpha"})
    assert "approval" in proposed["reason"]
    # The agent's model read why the call did not run.
    told = [m for m in lab_model.chat_requests()[1]["messages"] if m["role"] == "tool"]
    assert any("proposed to your caller" in m["content"] for m in told)
    assert (lab / "lookups").read_text().count(f"{cid} alpha") == 1


async def test_cancelling_the_parent_turn_cancels_the_agent_and_its_tool(
    stack: Stack, lab: Path, lab_model: FakeModelServer, fake_model: FakeModelServer
) -> None:
    cid = _conversation()
    token = uuid.uuid4().hex[:8]
    fake_model.script(completion(tool_calls=[("researcher", {"task": "hold on"})]))
    lab_model.script(completion(tool_calls=[("hold", {"token": token})]))
    async with custom_orchestrator(stack, fake_model, tool_endpoints=[LAB.endpoint]) as client:
        turn = asyncio.create_task(client.send(cid, "hold on"))
        await wait_for_file(lab / f"entered-{token}")
        cancelled = await client.cancel(cid, CancelRequest(requested_by="test", reason="enough"))
        assert cancelled.cancelled
        result: TurnResult = await asyncio.wait_for(turn, 60)
    assert not result.ok and result.cancelled
    lab_client = stack.client(LAB.namespace)

    async def agent_cancelled() -> Any:
        runs = await _agent_runs(lab_client, cid)
        return runs and runs[0][0].status == WorkflowExecutionStatus.CANCELED and runs

    [(_, history)] = await eventually(agent_cancelled, timeout=30)
    # The hold tool's workflow, the agent's child, was cancelled with it.
    started = [
        e.start_child_workflow_execution_initiated_event_attributes.workflow_id
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED
    ]
    [tool_run] = started

    async def tool_cancelled() -> bool:
        described = await lab_client.get_workflow_handle(tool_run).describe()
        return described.status == WorkflowExecutionStatus.CANCELED

    assert await eventually(tool_cancelled, timeout=30)


async def test_agents_that_delegate_to_each_other_stop_at_the_depth_limit(
    stack: Stack, lab: Path, lab_model: FakeModelServer, fake_model: FakeModelServer
) -> None:
    cid = _conversation()
    fake_model.script(completion(tool_calls=[("ping_agent", {"task": "ping"})]), completion("done"))
    lab_model.script(
        completion(tool_calls=[("pong_agent", {"task": "pong"})]),  # depth 1 delegates
        completion(tool_calls=[("ping_agent", {"task": "ping"})]),  # depth 2 delegates
        completion(tool_calls=[("pong_agent", {"task": "pong"})]),  # depth 3: refused
        completion("the chain is too deep"),
        completion("pong answered"),
        completion("ping answered"),
    )
    async with custom_orchestrator(stack, fake_model, tool_endpoints=[LAB.endpoint]) as client:
        result = await client.send(cid, "ping")
    assert result.ok, result.error
    level1 = result.tool_calls[0].result
    level2 = level1["tool_calls"][0]["output"]
    level3 = level2["tool_calls"][0]["output"]
    refused = level3["tool_calls"][0]
    assert not refused["ok"] and f"at most {MAX_AGENT_DEPTH}" in refused["output"]
    assert level1["answer"] == "ping answered"
    # Each level's usage includes the levels below it: 4 steps under level 1's two.
    assert level1["usage"]["model_steps"] == 6
    assert len(lab_model.chat_requests()) == 6
    # A caller that claims a depth past the limit is refused by the team's handler itself.
    deep = ToolCall(
        call_id=f"deep-{uuid.uuid4().hex}", tool="ping_agent", args={"task": "x"}, depth=3
    )
    [refused_call] = (await stack.execute(LAB.endpoint, deep)).outcomes
    assert not refused_call.ok and refused_call.error_kind == "bad_request"
    assert "agents deep" in (refused_call.error or "")


async def test_a_team_agent_falls_back_to_its_next_model(
    stack: Stack, lab: Path, lab_model: FakeModelServer, fake_model: FakeModelServer
) -> None:
    cid = _conversation()
    fake_model.script(
        completion(tool_calls=[("fallback_agent", {"task": "say hi"})]), completion("ok")
    )
    lab_model.script(completion("hi"))
    async with custom_orchestrator(stack, fake_model, tool_endpoints=[LAB.endpoint]) as client:
        result = await client.send(cid, "say hi")
    assert result.ok, result.error
    answer = result.tool_calls[0].result
    assert answer["answer"] == "hi"
    assert answer["models"] == ["openai/agent-lab"]
    assert answer["notes"] == ["model openai/down unreachable; fell back to openai/agent-lab"]


def test_an_agent_that_lists_itself_is_refused(tmp_path: Path) -> None:
    team = tmp_path / "selfish_team"
    team.mkdir()
    (team / "team.toml").write_text(
        'service = "selfish"\nnamespace = "selfish"\ntask_queue = "q"\nendpoint = "e-p"\n'
        'registry = "selfish_team.tools:registry"\n'
        '[[agents]]\nname = "me"\ndescription = "d"\ninstructions = "i"\n'
        'models = ["offline/keyword-router"]\ntools = ["me"]\n'
    )
    with pytest.raises(ManifestError, match="agent 'me' lists itself"):
        load_manifest(team / "team.toml")


async def test_the_agent_finishes_once_after_its_worker_is_killed_mid_loop(
    stack: Stack, lab: Path, lab_model: FakeModelServer, fake_model: FakeModelServer, tmp_path: Path
) -> None:
    """The worker running the agent's loop is SIGKILLed while the agent's second tool is inside
    the team; a new worker carries the loop on: no model step or tool effect runs twice."""
    task_queue = f"agent-lab-kill-{uuid.uuid4().hex[:6]}"
    endpoint = f"agent-lab-kill-{uuid.uuid4().hex[:6]}"
    await ensure_endpoint(
        stack.client("orchestrator"),
        EndpointDefinition(name=endpoint, namespace=LAB.namespace, task_queue=task_queue),
    )
    address = dev_server_address(stack)
    worker = start_team_worker(
        "agent_lab", address, LAB.namespace, task_queue, tmp_path, AGENT_LAB_GATE_DIR=str(tmp_path)
    )
    cid, token = _conversation(), uuid.uuid4().hex[:8]
    try:
        await serving(stack, endpoint)
        fake_model.script(
            completion(tool_calls=[("researcher", {"task": "research beta"})]),
            completion("Research is back."),
        )
        lab_model.script(
            completion(tool_calls=[("lookup", {"topic": "beta"})]),
            completion(tool_calls=[("hold", {"token": token})]),
            completion("beta is fine"),
        )
        async with custom_orchestrator(
            stack, fake_model, tool_endpoints=[endpoint], tool_timeout_seconds=120
        ) as client:
            turn = asyncio.create_task(client.send(cid, "research beta"))
            await wait_for_file(tmp_path / f"entered-{token}", timeout=90)
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)
            (tmp_path / f"release-{token}").write_text("go")
            worker = start_team_worker(
                "agent_lab",
                address,
                LAB.namespace,
                task_queue,
                tmp_path,
                AGENT_LAB_GATE_DIR=str(tmp_path),
            )
            result = await asyncio.wait_for(turn, 120)
        assert result.ok, result.error
        answer = result.tool_calls[0].result
        assert answer["answer"] == "beta is fine"
        assert [c["tool"] for c in answer["tool_calls"]] == ["lookup", "hold"]
        # Three model steps asked once each, and the lookup's effect applied once.
        assert len(lab_model.chat_requests()) == 3
        assert (tmp_path / "lookups").read_text().count(f"{cid} beta") == 1
    finally:
        stop_team_worker(worker)


async def test_what_the_agent_s_model_gets_wrong_is_told_to_it_and_nothing_jams(
    stack: Stack, lab: Path, lab_model: FakeModelServer, fake_model: FakeModelServer
) -> None:
    """Broken JSON, an unknown tool, arguments nested past the limit: each is a tool message
    the agent's model reads, and the run goes on; the last allowed step is offered no tools."""
    cid = _conversation()
    deep: object = "x"
    for _ in range(40):
        deep = [deep]
    fake_model.script(
        completion(tool_calls=[("researcher", {"task": "try things"})]), completion("ok")
    )
    lab_model.script(
        completion(tool_calls=[("lookup", "{oops"), ("nope", {}), ("lookup", {"topic": deep})]),
        completion(tool_calls=[("lookup", {"topic": "gamma"})]),
        completion(tool_calls=[("lookup", {"topic": "delta"})]),
        completion("four steps were enough"),
    )
    async with custom_orchestrator(stack, fake_model, tool_endpoints=[LAB.endpoint]) as client:
        result = await client.send(cid, "try things")
    assert result.ok, result.error
    answer = result.tool_calls[0].result
    assert answer["answer"] == "four steps were enough" and answer["steps"] == 4
    told = [m["content"] for m in lab_model.chat_requests()[1]["messages"] if m["role"] == "tool"]
    assert "not valid JSON" in told[0]
    assert "unknown tool 'nope'" in told[1]
    assert "nested 41 levels deep; the limit is 32" in told[2]
    # researcher's max_steps is 4: the fourth step could only answer.
    assert "tools" in lab_model.chat_requests()[2]
    assert "tools" not in lab_model.chat_requests()[3]
    assert [c["tool"] for c in answer["tool_calls"]] == ["lookup", "lookup"]


async def test_this_deployment_s_rule_for_an_agent_s_tool_gates_the_delegation(
    stack: Stack, lab: Path, lab_model: FakeModelServer, fake_model: FakeModelServer
) -> None:
    """ORCHESTRATOR_APPROVAL_POLICIES gates lookup here; researcher may call it inside its team,
    out of this deployment's sight, so calling researcher waits for a person (here: in vain)."""
    fake_model.script(
        completion(tool_calls=[("researcher", {"task": "look"})]), completion("not allowed")
    )
    async with custom_orchestrator(
        stack,
        fake_model,
        tool_endpoints=[LAB.endpoint],
        approval_policies={"agentlab.lookup": {"mode": "always"}},
        approval_timeout_seconds=0.5,
    ) as client:
        result = await client.send(_conversation(), "look")
    [call] = result.tool_calls
    assert not call.ok and call.approval is not None and call.approval.timed_out
    assert "agent researcher may call lookup" in call.approval.policy_reason
    assert lab_model.chat_requests() == []
