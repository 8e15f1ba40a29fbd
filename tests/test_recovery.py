"""A worker killed (SIGKILL) mid-turn is replaced and the turn goes on within seconds.

The stack runs in its own processes, as `make up` runs it; `bench/recovery.py` holds the scenarios
and reports the figures (`uv run python -m bench.recovery`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from temporalio.api.enums.v1 import EventType, TimeoutType
from temporalio.client import WorkflowQueryFailedError
from temporalio.service import RPCError

from bench.recovery import RecoveryStack, recover_orchestrator, recover_team
from orchestrator.client import ConversationClient
from orchestrator.models import LLM_STEP_ACTIVITY, Decision, PendingApproval
from tests.support.fake_http import FakeHttpServer
from tests.support.fake_llm import FakeModelServer, completion


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[FakeModelServer, FakeHttpServer]]:
    model, quotes = FakeModelServer(), FakeHttpServer()
    model.start()
    quotes.start()
    yield model, quotes
    model.stop()
    quotes.stop()


@pytest.fixture(scope="module")
async def stack(servers: tuple[FakeModelServer, FakeHttpServer]) -> AsyncIterator[RecoveryStack]:
    async with RecoveryStack(*servers) as running:
        yield running


async def test_a_killed_worker_s_local_model_step_runs_again_after_the_task_timeout(
    stack: RecoveryStack,
) -> None:
    recovery = await recover_orchestrator(stack, "recovery-local", "local")
    assert recovery.result.ok, recovery.result.error
    assert recovery.result.answer == "answered after the restart"
    assert stack.client is not None
    history = await stack.client.get_workflow_handle(recovery.conversation_id).fetch_history()
    kinds = [event.event_type for event in history.events]
    # The dead worker's workflow task (running the step) timed out and went to the new worker;
    # the step never became a slow activity retry.
    assert EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT in kinds
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED not in kinds


async def test_a_killed_worker_s_activity_model_step_is_retried_on_its_heartbeat_timeout(
    stack: RecoveryStack,
) -> None:
    recovery = await recover_orchestrator(stack, "recovery-activity", "activity")
    assert recovery.result.ok, recovery.result.error
    assert recovery.result.answer == "answered after the restart"
    assert stack.client is not None
    history = await stack.client.get_workflow_handle(recovery.conversation_id).fetch_history()
    retried = [
        event.activity_task_started_event_attributes
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
        and event.activity_task_started_event_attributes.attempt > 1
    ]
    assert len(retried) == 1, "exactly the killed model step ran again"
    failure = retried[0].last_failure.timeout_failure_info
    # Retried because its heartbeats stopped, not after the step's start-to-close timeout.
    assert failure.timeout_type == TimeoutType.TIMEOUT_TYPE_HEARTBEAT
    scheduled = {
        event.event_id: event.activity_task_scheduled_event_attributes.activity_type.name
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    }
    assert scheduled[retried[0].scheduled_event_id] == LLM_STEP_ACTIVITY


async def test_a_killed_team_worker_mid_call_is_replaced_and_the_call_answers(
    stack: RecoveryStack,
) -> None:
    before = len(stack.upstream.requests)
    recovery = await recover_team(stack, "recovery-team")
    assert recovery.result.ok, recovery.result.error
    [call] = recovery.result.tool_calls
    assert call.ok and call.result["price"] == "123.45", call
    # The held request died with the worker; the tool ran again on the new one, once.
    assert len(stack.upstream.requests) - before == 2


async def test_a_worker_killed_while_a_call_waits_for_approval_loses_nothing(
    stack: RecoveryStack,
) -> None:
    """SIGKILL the orchestrator worker while a Finance expense waits for approval: the approval
    is still pending on the new worker, and approving it records the expense once."""
    assert stack.client is not None
    conversations = ConversationClient(stack.client, "orchestrator")
    cid = f"recovery-approval-{uuid.uuid4().hex[:8]}"
    expense = {"amount": "750.00", "currency": "EUR", "cost_centre": "CC-4242", "reason": "offsite"}
    stack.model.script(
        completion(tool_calls=[("submit_expense", expense)]),
        completion("Recorded after the restart."),
    )
    turn = asyncio.create_task(conversations.send(cid, "Submit 750 EUR for the offsite"))
    pending = await _pending(conversations, cid)

    await stack.kill_and_restart("orchestrator")

    assert await _pending(conversations, cid) == pending
    await conversations.decide(
        cid, Decision(call_id=pending.call_id, verdict="approve", approver="ada")
    )
    result = await asyncio.wait_for(turn, 60)
    assert result.ok and result.answer == "Recorded after the restart.", result
    [call] = result.tool_calls
    assert call.ok and call.approval is not None and call.approval.approver == "ada"


async def _pending(conversations: ConversationClient, cid: str) -> PendingApproval:
    for _ in range(300):
        try:
            waiting = (await conversations.status(cid)).pending_approvals
        except (RPCError, WorkflowQueryFailedError):
            waiting = []  # not started yet, or the worker is restarting
        if waiting:
            return waiting[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no call of {cid} waited for approval")
