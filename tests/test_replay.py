"""Replay: conversation histories must replay against the current workflow code.

A recorded history is committed under tests/histories/; a change that makes the workflow
non-deterministic for it fails here, in CI, before it reaches a running conversation.
Re-record (after an intentional, versioned change) with RECORD_HISTORIES=1.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError
from temporalio.worker import Replayer

from orchestrator.client import ConversationClient
from orchestrator.models import Decision, PendingApproval
from orchestrator.workflows import ConversationWorkflow
from shared.agent_workflow import TeamAgentWorkflow
from tests.conftest import Orchestrator
from tests.support.fake_http import Reply
from tests.support.fake_llm import FakeModelServer, completion
from tests.support.histories import record_if_requested

HISTORIES = Path(__file__).parent / "histories"


def _replayer() -> Replayer:
    # A team agent's run (team_agent_*.json) replays against the team side's workflow.
    return Replayer(
        workflows=[ConversationWorkflow, TeamAgentWorkflow],
        data_converter=pydantic_data_converter,
    )


async def test_live_conversation_replays(
    orchestrator: Orchestrator, fake_model: FakeModelServer
) -> None:
    cid = f"replay-{uuid.uuid4()}"
    fake_model.script(
        completion(
            tool_calls=[
                ("calculator", {"expression": "2 ** 8"}),
                ("stock_price", {"ticker": "MSFT"}),
                ("track_ip", {"ip": "203.0.113.9"}),
            ]
        ),
        completion("256; MSFT quoted; address tracked."),
        completion(tool_calls=[("get_ip_history", {})]),
        completion("You tracked 203.0.113.9."),
    )
    assert (await orchestrator.conversations.send(cid, "Three things please")).ok
    assert (await orchestrator.conversations.send(cid, "What did I track?")).ok
    await orchestrator.conversations.end(cid)
    await orchestrator.conversations.handle(cid).result()
    history = await orchestrator.conversations.handle(cid).fetch_history()
    result = await _replayer().replay_workflow(history)
    assert result.replay_failure is None
    # conversation_tools.json: the same conversation recorded when model steps were activities.
    await record_if_requested(
        orchestrator.conversations.handle(cid), "conversation_local_model_steps"
    )


@pytest.mark.parametrize("path", sorted(HISTORIES.glob("*.json")), ids=lambda p: p.stem)
async def test_committed_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    result = await _replayer().replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"


async def test_conversation_with_approvals_replays(
    orchestrator: Orchestrator, fake_model: FakeModelServer
) -> None:
    """A turn paused on a gated call, approved; another denied; both replay."""
    cid = f"replay-approvals-{uuid.uuid4()}"
    conversations = orchestrator.conversations

    def expense(amount: str) -> Reply:
        args = {"amount": amount, "currency": "EUR", "cost_centre": "CC-9001", "reason": "trip"}
        return completion(tool_calls=[("submit_expense", args), ("calculate_roi", ROI)])

    fake_model.script(
        expense("650.00"), completion("Recorded."), expense("950.00"), completion("Denied.")
    )
    for text, verdict in [("Submit 650", "approve"), ("Submit 950", "deny")]:
        turn = asyncio.create_task(conversations.send(cid, text))
        pending = await _first_pending(conversations, cid)
        await conversations.decide(
            cid,
            Decision(call_id=pending.call_id, verdict=verdict, approver="ada"),  # type: ignore[arg-type]
        )
        assert (await turn).ok
    await conversations.end(cid)
    await conversations.handle(cid).result()
    history = await conversations.handle(cid).fetch_history()
    result = await _replayer().replay_workflow(history)
    assert result.replay_failure is None
    await record_if_requested(conversations.handle(cid), "conversation_approvals")


ROI = {"principal": "100", "rate": "1", "years": 1}


async def _first_pending(conversations: ConversationClient, cid: str) -> PendingApproval:
    for _ in range(200):
        try:
            waiting = (await conversations.status(cid)).pending_approvals
        except RPCError:
            waiting = []
        if waiting:
            return waiting[0]
        await asyncio.sleep(0.05)
    raise AssertionError("no call waited for approval")
