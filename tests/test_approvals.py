"""The approval gate on the real stack: a turn pauses on the calls that need a decision, the rest
of its step runs, and `decide` resolves each call; timeouts, restarts, continue-as-new, cancel and
double-texting. The team's own refusal of unapproved calls is in tests/test_auth.py."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowUpdateFailedError
from temporalio.service import RPCError

from finance_service.ledger import LEDGER_WORKFLOW_ID, ExpenseLedgerWorkflow
from orchestrator.client import ConversationClient
from orchestrator.models import (
    CANCEL_UPDATE,
    DECIDE_UPDATE,
    ApprovalRecord,
    CancelRequest,
    CancelResult,
    ConversationStatus,
    Decision,
    PendingApproval,
    TurnResult,
)
from orchestrator.store import open_store
from orchestrator.worker import build_orchestrator_worker
from shared.config import AWAITING_APPROVAL_ATTRIBUTE
from shared.contract import tool_workflow_id
from tests.conftest import (
    CANARY_ENDPOINT,
    FINANCE_ENDPOINT,
    STORE_URL,
    Stack,
    custom_orchestrator,
    eventually,
    fake_llm_settings,
    orchestrator_settings,
)
from tests.support.fake_llm import FakeModelServer, completion, last_tool_messages
from tests.support.histories import record_if_requested

LEAD = "it-lead"


def _conversation() -> str:
    return f"approve-{uuid.uuid4().hex[:10]}"


@asynccontextmanager
async def gated_orchestrator(
    stack: Stack, fake_model: FakeModelServer, task_queue: str | None = None, **overrides: Any
) -> AsyncIterator[ConversationClient]:
    """An orchestrator that discovers only the canary IT deployment (grant_access, hold)."""
    client = stack.client("orchestrator")
    queue = task_queue or f"orchestrator-gate-{uuid.uuid4().hex[:8]}"
    settings = orchestrator_settings(tool_endpoints=[CANARY_ENDPOINT], **overrides)
    worker = build_orchestrator_worker(
        client, task_queue=queue, settings=settings, llm_settings=fake_llm_settings(fake_model)
    )
    async with worker:
        yield ConversationClient(client, queue)


async def _status(conversations: ConversationClient, cid: str) -> ConversationStatus:
    return await conversations.status(cid)


async def _waiting(
    conversations: ConversationClient, cid: str, count: int = 1
) -> list[PendingApproval]:
    async def check() -> list[PendingApproval] | None:
        try:
            pending = (await conversations.status(cid)).pending_approvals
        except RPCError:
            return None
        return pending if len(pending) == count else None

    pending = await eventually(check, timeout=20)
    assert pending, f"expected {count} calls waiting for approval"
    return pending


async def _decide(
    conversations: ConversationClient,
    cid: str,
    call_id: str,
    verdict: str = "approve",
    approver: str = LEAD,
    reason: str = "",
) -> ApprovalRecord:
    record: ApprovalRecord = await conversations.handle(cid).execute_update(
        DECIDE_UPDATE,
        Decision(call_id=call_id, verdict=verdict, approver=approver, reason=reason),  # type: ignore[arg-type]
        result_type=ApprovalRecord,
    )
    return record


async def _refused(decide: Awaitable[Any]) -> str:
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await decide
    return str(refused.value.cause)


def _tool_results(fake_model: FakeModelServer) -> dict[str, Any]:
    """The tool messages of the model's last request, by tool name."""
    last = fake_model.requests[-1]
    return {m["name"]: json.loads(m["content"]) for m in last_tool_messages(last)}


async def _tool_workflow_status(client: Client, call_id: str) -> WorkflowExecutionStatus | None:
    try:
        described = await client.get_workflow_handle(tool_workflow_id(call_id)).describe()
    except RPCError:
        return None
    return described.status


def _send(conversations: ConversationClient, cid: str, text: str) -> asyncio.Task[TurnResult]:
    return asyncio.create_task(conversations.send(cid, text))


async def test_a_gated_call_waits_while_the_rest_of_its_step_runs_then_runs_when_approved(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    cid = _conversation()
    fake_model.script(
        completion(
            tool_calls=[
                ("grant_access", {"user": "ada", "system": "vpn", "days": 90}),
                ("service_status", {}),
            ]
        ),
        completion("Access granted for 90 days."),
    )
    async with gated_orchestrator(stack, fake_model) as conversations:
        turn = _send(conversations, cid, "Give ada VPN access for 90 days")
        [pending] = await _waiting(conversations, cid)
        assert (pending.tool, pending.service, pending.reason) == (
            "grant_access",
            "it",
            "days > 30",
        )
        assert pending.approvers == [LEAD]
        assert pending.args == {"user": "ada", "system": "vpn", "days": 90}

        async def paused() -> bool:
            return (await _status(conversations, cid)).state == "awaiting_approval"

        assert await eventually(paused)
        # The ungated call of the same step ran meanwhile: its tool workflow has completed.
        service_call = pending.call_id[: pending.call_id.rfind("-")] + "-1"
        assert (
            await _tool_workflow_status(stack.client("it"), service_call)
            == WorkflowExecutionStatus.COMPLETED
        )
        assert await _tool_workflow_status(stack.client("it"), pending.call_id) is None

        refused = await _refused(_decide(conversations, cid, pending.call_id, approver="mallory"))
        assert "mallory may not decide" in refused and LEAD in refused
        unknown = await _refused(_decide(conversations, cid, "no-such-call"))
        assert "no call no-such-call is waiting" in unknown and pending.call_id in unknown

        # The conversation marks itself as waiting, and `pending_approvals` finds it that way.
        assert await eventually(lambda: _listed_as_waiting(stack, cid))
        listed = await conversations.pending_approvals()
        assert (cid, pending) in listed

        record = await _decide(conversations, cid, pending.call_id, reason="ticket IT-7")
        assert (record.verdict, record.approver, record.reason) == ("approve", LEAD, "ticket IT-7")
        again = await _refused(_decide(conversations, cid, pending.call_id))
        assert f"call {pending.call_id} was already approved by {LEAD}" in again

        result = await turn
        assert result.ok and result.answer == "Access granted for 90 days."
        granted = next(c for c in result.tool_calls if c.name == "grant_access")
        assert granted.ok and granted.approval is not None
        assert granted.approval.approver == LEAD and granted.approval.policy_reason == "days > 30"
        assert _tool_results(fake_model)["grant_access"]["call_id"] == pending.call_id

        late = await _refused(_decide(conversations, cid, pending.call_id))
        assert f"the turn of call {pending.call_id} has ended" in late

        async def no_longer_waiting() -> bool:
            return not await _listed_as_waiting(stack, cid)

        assert await eventually(no_longer_waiting)
    store = open_store(STORE_URL)
    try:
        [stored] = await store.approvals(cid)
    finally:
        await store.close()
    assert stored == record


async def test_a_denied_call_never_runs_and_the_model_is_told_why(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    cid = _conversation()
    fake_model.script(
        completion(tool_calls=[("grant_access", {"user": "eve", "system": "prod", "days": 365})]),
        completion("Sorry, that was denied."),
    )
    async with gated_orchestrator(stack, fake_model) as conversations:
        turn = _send(conversations, cid, "Give eve prod access for a year")
        [pending] = await _waiting(conversations, cid)
        await _decide(conversations, cid, pending.call_id, "deny", reason="too long")
        result = await turn
    assert result.ok and result.answer == "Sorry, that was denied."
    [call] = result.tool_calls
    assert not call.ok and call.approval is not None and call.approval.verdict == "deny"
    told = _tool_results(fake_model)["grant_access"]
    assert told["error"] == "denied" and "it-lead denied this call: too long" in told["message"]
    assert await _tool_workflow_status(stack.client("it"), pending.call_id) is None


async def test_an_undecided_call_is_denied_at_the_timeout(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    cid = _conversation()
    fake_model.script(
        completion(tool_calls=[("grant_access", {"user": "bob", "system": "vpn", "days": 60})]),
        completion("Nobody approved it in time."),
    )
    async with gated_orchestrator(stack, fake_model, approval_timeout_seconds=1) as conversations:
        result = await conversations.send(cid, "Give bob VPN access for 60 days")
    [call] = result.tool_calls
    assert call.approval is not None and call.approval.timed_out
    assert (call.approval.verdict, call.approval.approver) == ("deny", "system")
    told = _tool_results(fake_model)["grant_access"]
    assert told["error"] == "denied" and "approval timed out" in told["message"]


async def test_two_gated_calls_decided_in_reverse_order_and_one_under_the_threshold_runs(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    cid = _conversation()
    fake_model.script(
        completion(
            tool_calls=[
                ("grant_access", {"user": "ada", "system": "vpn", "days": 40}),
                ("grant_access", {"user": "bob", "system": "vpn", "days": 50}),
                ("grant_access", {"user": "cy", "system": "vpn", "days": 5}),
            ]
        ),
        completion("Done."),
    )
    async with gated_orchestrator(stack, fake_model) as conversations:
        turn = _send(conversations, cid, "Grant three VPN accesses")
        first, second = await _waiting(conversations, cid, count=2)
        assert [first.args["user"], second.args["user"]] == ["ada", "bob"]  # type: ignore[index]
        await _decide(conversations, cid, second.call_id, "deny", reason="not bob")
        assert [p.call_id for p in (await _status(conversations, cid)).pending_approvals] == [
            first.call_id
        ]
        await _decide(conversations, cid, first.call_id)
        result = await turn
    by_user = {c.args["user"]: c for c in result.tool_calls}  # type: ignore[index]
    assert by_user["ada"].ok and by_user["ada"].approval.verdict == "approve"  # type: ignore[union-attr]
    assert not by_user["bob"].ok and by_user["bob"].approval.verdict == "deny"  # type: ignore[union-attr]
    assert by_user["cy"].ok and by_user["cy"].approval is None


async def test_a_pending_approval_survives_a_worker_restart(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    cid = _conversation()
    queue = f"orchestrator-gate-restart-{uuid.uuid4().hex[:8]}"
    fake_model.script(
        completion(tool_calls=[("grant_access", {"user": "ada", "system": "db", "days": 45})]),
        completion("Granted after the restart."),
    )
    async with gated_orchestrator(stack, fake_model, task_queue=queue) as conversations:
        turn = _send(conversations, cid, "Give ada db access for 45 days")
        [pending] = await _waiting(conversations, cid)
    # No worker now: the conversation waits in Temporal. A new one replays it and carries on.
    async with gated_orchestrator(stack, fake_model, task_queue=queue) as conversations:
        [again] = await _waiting(conversations, cid)
        assert again == pending
        await _decide(conversations, cid, pending.call_id)
        result = await turn
    assert result.ok and result.answer == "Granted after the restart."


async def test_a_paused_turn_is_carried_across_continue_as_new(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    cid = _conversation()
    fake_model.script(
        completion("Hello."),
        completion(tool_calls=[("grant_access", {"user": "ada", "system": "vpn", "days": 31})]),
        completion("Granted in the next run."),
    )
    async with gated_orchestrator(stack, fake_model, max_turns_per_run=1) as conversations:
        assert (await conversations.send(cid, "Hi")).ok  # the run is full: it continues as new
        turn = _send(conversations, cid, "Give ada VPN access for 31 days")
        [pending] = await _waiting(conversations, cid)

        async def handed_over() -> bool:
            return len(await _run_ids(stack, cid)) == 3

        # Run 1 answered "Hi" and continued as new; run 2 paused on the approval and, being full,
        # handed the paused turn (and its waiting message) to run 3.
        assert await eventually(handed_over, timeout=20)
        [carried] = await _waiting(conversations, cid)
        assert carried == pending
        await _decide(conversations, cid, pending.call_id)
        result = await turn
        assert result.ok and result.answer == "Granted in the next run."
        late = await _refused(_decide(conversations, cid, pending.call_id))
        assert "has ended" in late
        status = await _status(conversations, cid)
        # The run that resumed the carried turn and answered it.
        await record_if_requested(conversations.handle(cid), "conversation_paused_turn_carried")
    assert status.turns == 2 and not status.pending_approvals


async def _run_ids(stack: Stack, cid: str) -> list[str]:
    client = stack.client("orchestrator")
    return [
        execution.run_id
        async for execution in client.list_workflows(f"WorkflowId = '{cid}'")
        if execution.run_id
    ]


async def _cancel(conversations: ConversationClient, cid: str, reason: str = "") -> CancelResult:
    result: CancelResult = await conversations.handle(cid).execute_update(
        CANCEL_UPDATE,
        CancelRequest(requested_by="ops", reason=reason),
        result_type=CancelResult,
    )
    return result


async def _running(conversations: ConversationClient, cid: str, tool: str) -> bool:
    async def check() -> bool:
        try:
            status = await conversations.status(cid)
        except RPCError:
            return False
        return any(running.name == tool for running in status.running)

    return bool(await eventually(check, timeout=20))


async def test_cancel_stops_a_slow_tool_and_drops_pending_approvals(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    cid = _conversation()
    fake_model.script(
        completion(
            tool_calls=[
                ("hold", {"seconds": 60}),
                ("grant_access", {"user": "ada", "system": "vpn", "days": 90}),
            ]
        ),
        completion("Still here."),
    )
    async with gated_orchestrator(stack, fake_model) as conversations:
        turn = _send(conversations, cid, "Hold on, and give ada access")
        assert await _running(conversations, cid, "hold")
        [pending] = await _waiting(conversations, cid)
        hold_call = pending.call_id[: pending.call_id.rfind("-")] + "-0"

        cancelled = await _cancel(conversations, cid, reason="wrong request")
        assert cancelled.cancelled and cancelled.dropped_approvals == [pending.call_id]
        result = await turn
        assert result.cancelled and not result.ok
        assert "cancelled by ops: wrong request" in (result.error or "")
        # The team's tool workflow saw the cancellation (Nexus cancelled it).
        assert (
            await _tool_workflow_status(stack.client("it"), hold_call)
            == WorkflowExecutionStatus.CANCELED
        )
        assert not (await _cancel(conversations, cid)).cancelled
        # The conversation takes the next message, and the model saw every call answered.
        assert (await conversations.send(cid, "Are you there?")).answer == "Still here."
        await record_if_requested(conversations.handle(cid), "conversation_cancelled_turn")
    told = _tool_results_before_user(fake_model)
    assert told["hold"]["error"] == "cancelled" and told["grant_access"]["error"] == "denied"


def _tool_results_before_user(fake_model: FakeModelServer) -> dict[str, Any]:
    """The tool messages just before the last user message of the model's last request."""
    messages = fake_model.requests[-1].json()["messages"]
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    return {
        m["name"]: json.loads(m["content"]) for m in messages[:last_user] if m["role"] == "tool"
    }


async def test_double_texting_queue_answers_in_order(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    cid = _conversation()
    fake_model.script(
        completion(tool_calls=[("hold", {"seconds": 1.5})]),
        completion("First answer."),
        completion("Second answer."),
    )
    async with gated_orchestrator(stack, fake_model) as conversations:
        first = _send(conversations, cid, "first")
        assert await _running(conversations, cid, "hold")
        second = _send(conversations, cid, "second")

        async def queued() -> bool:
            return (await conversations.status(cid)).queued_messages == 1

        assert await eventually(queued)
        assert (await first).answer == "First answer."
        assert (await second).answer == "Second answer."
        turns = await conversations.turns(cid)
    assert [t.message for t in turns] == ["first", "second"]


async def test_double_texting_interrupt_cancels_the_running_turn(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    cid = _conversation()
    fake_model.script(
        completion(tool_calls=[("hold", {"seconds": 60})]),
        completion("Answering the newer message."),
    )
    async with gated_orchestrator(stack, fake_model, double_texting="interrupt") as conversations:
        first = _send(conversations, cid, "something slow")
        assert await _running(conversations, cid, "hold")
        second = await conversations.send(cid, "never mind, this instead")
        interrupted = await first
        await record_if_requested(conversations.handle(cid), "conversation_interrupted_turn")
    assert interrupted.cancelled and "interrupted by a newer message" in (interrupted.error or "")
    assert second.ok and second.answer == "Answering the newer message."


async def _ledger_call_ids(stack: Stack) -> dict[str, str]:
    """Recorded expenses in the Finance ledger: call id -> who approved."""
    handle = stack.client("finance").get_workflow_handle_for(
        ExpenseLedgerWorkflow.run, LEDGER_WORKFLOW_ID
    )
    try:
        listing = await handle.query(ExpenseLedgerWorkflow.expenses, 100)
    except RPCError:
        return {}
    return {expense.call_id: expense.approved_by for expense in listing.expenses}


async def test_an_expense_over_the_threshold_is_recorded_only_once_approved(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    cid = _conversation()

    def expense(amount: str, reason: str) -> Any:
        args = {"amount": amount, "currency": "EUR", "cost_centre": "CC-7001", "reason": reason}
        return completion(tool_calls=[("submit_expense", args)])

    fake_model.script(
        expense("750.00", "offsite"),
        completion("Recorded."),
        expense("900.00", "upgrade"),
        completion("Not recorded: denied."),
    )
    async with custom_orchestrator(
        stack, fake_model, tool_endpoints=[FINANCE_ENDPOINT]
    ) as conversations:
        approved_turn = _send(conversations, cid, "Submit 750 EUR for the offsite")
        [approved] = await _waiting(conversations, cid)
        assert approved.reason == "amount > 500" and approved.service == "finance"
        assert approved.call_id not in await _ledger_call_ids(stack)
        await _decide(conversations, cid, approved.call_id, approver="ada")
        assert (await approved_turn).answer == "Recorded."
        assert (await _ledger_call_ids(stack))[approved.call_id] == "ada"

        denied_turn = _send(conversations, cid, "Submit 900 EUR for an upgrade")
        [denied] = await _waiting(conversations, cid)
        await _decide(conversations, cid, denied.call_id, "deny", approver="ada")
        assert (await denied_turn).answer == "Not recorded: denied."
    assert denied.call_id not in await _ledger_call_ids(stack)
    assert await _tool_workflow_status(stack.client("finance"), denied.call_id) is None


async def test_a_deployment_policy_only_tightens_the_teams(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    """`approval_policies` gates a call the team lets through; where both name approvers who
    share no one, no one may approve and the call is denied at once."""
    cid = _conversation()
    fake_model.script(
        completion(tool_calls=[("grant_access", {"user": "ada", "system": "vpn", "days": 5})]),
        completion("Granted once security agreed."),
        completion(tool_calls=[("grant_access", {"user": "ada", "system": "vpn", "days": 90})]),
        completion("Nobody may approve that."),
    )
    policies = {"it.grant_access": {"mode": "always", "approvers": ["security"]}}
    async with gated_orchestrator(stack, fake_model, approval_policies=policies) as conversations:
        turn = _send(conversations, cid, "Give ada VPN access for 5 days")
        [pending] = await _waiting(conversations, cid)
        assert (pending.reason, pending.approvers) == ("always needs approval", ["security"])
        refused = await _refused(_decide(conversations, cid, pending.call_id, approver=LEAD))
        assert "it-lead may not decide" in refused
        await _decide(conversations, cid, pending.call_id, approver="security")
        assert (await turn).tool_calls[0].ok

        result = await conversations.send(cid, "Now for 90 days")
    [call] = result.tool_calls
    assert call.approval is not None and call.approval.approver == "system"
    assert "share no one" in call.approval.reason
    assert await _tool_workflow_status(stack.client("it"), call.approval.call_id) is None


def test_a_deployment_policy_cannot_relax_a_team_policy() -> None:
    with pytest.raises(ValueError, match="can only add approval"):
        orchestrator_settings(approval_policies={"finance.*": {"mode": "never"}})
    with pytest.raises(ValueError, match=r"service\.tool"):
        orchestrator_settings(approval_policies={"submit_expense": {"mode": "always"}})


async def test_queued_messages_are_capped_and_end_drops_waiting_approvals(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    """Each waiting message holds one of the server's in-flight updates, which decide, cancel
    and end need too: past `max_queued_messages` a message is refused. Ending the conversation
    drops the approvals its turn waits for."""
    cid = _conversation()
    fake_model.script(
        completion(tool_calls=[("grant_access", {"user": "ada", "system": "vpn", "days": 90})]),
        completion("Ended before anyone decided."),
    )
    async with gated_orchestrator(stack, fake_model, max_queued_messages=1) as conversations:
        turn = _send(conversations, cid, "Give ada VPN access for 90 days")
        [pending] = await _waiting(conversations, cid)
        queued = _send(conversations, cid, "and then?")

        async def one_queued() -> bool:
            return (await _status(conversations, cid)).queued_messages == 1

        assert await eventually(one_queued)
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await conversations.send(cid, "hello?")
        assert "1 messages already wait behind the running turn (the limit is 1)" in str(
            refused.value.cause
        )

        await conversations.end(cid)
        result = await turn
        assert result.cancelled and "the conversation ended" in (result.error or "")
        [call] = result.tool_calls
        assert call.approval is not None and call.approval.approver == "system"
        dropped = await queued
        assert not dropped.ok and "ended before this message was answered" in (dropped.error or "")
    assert await _tool_workflow_status(stack.client("it"), pending.call_id) is None


async def _listed_as_waiting(stack: Stack, cid: str) -> bool:
    query = f"WorkflowId = '{cid}' AND {AWAITING_APPROVAL_ATTRIBUTE} = true"
    return (await stack.client("orchestrator").count_workflows(query)).count == 1
