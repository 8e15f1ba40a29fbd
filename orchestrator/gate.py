"""The approval gate's bookkeeping: which calls wait for a decision, whether one may be made, and
what a denied call leaves for the model.

Pure functions over the conversation's state, so that the `decide` validator, the `status` query
and the waiting turn all read the same facts, in any run: pending calls live in the turn's state
(`TurnState.step_calls`) and decisions in `CarriedState.decisions`, both carried across
continue-as-new. Workflow code: deterministic, no I/O.
"""

from __future__ import annotations

from datetime import UTC, datetime

from orchestrator.dispatch import Resolved, StepResult, unrun
from orchestrator.models import (
    ApprovalRecord,
    CarriedState,
    Decision,
    PendingApproval,
    TurnState,
)
from shared.approval import Verdict

# Decisions remembered by call id, so that a late or repeated decision is refused by name.
DECISIONS_KEPT = 200
SYSTEM_APPROVER = "system"


def waiting_calls(turn: TurnState | None, memory: CarriedState) -> list[PendingApproval]:
    """The calls of the turn's current step that still wait for a decision, in call order."""
    if turn is None or turn.step_calls is None:
        return []
    return [
        planned.pending
        for planned in turn.step_calls
        if planned.pending is not None
        and not planned.done
        and planned.pending.call_id not in memory.decisions
    ]


def decision_problem(
    decision: Decision, turn: TurnState | None, memory: CarriedState, conversation_id: str
) -> str | None:
    """Why this decision cannot be taken, in words for the person who tried; None if it can."""
    earlier = memory.decisions.get(decision.call_id)
    if earlier is not None:
        verb = "approved" if earlier.verdict == "approve" else "denied"
        when = f"{verb} by {earlier.approver} at {earlier.decided_at}"
        if turn is not None and earlier.turn == turn.turn:
            return f"call {decision.call_id} was already {when}"
        return f"the turn of call {decision.call_id} has ended; the call was {when}"
    waiting = waiting_calls(turn, memory)
    pending = next((p for p in waiting if p.call_id == decision.call_id), None)
    if pending is None:
        listed = ", ".join(p.call_id for p in waiting) if waiting else "none"
        return (
            f"no call {decision.call_id} is waiting for approval in conversation "
            f"{conversation_id} (waiting: {listed})"
        )
    if pending.approvers and decision.approver not in pending.approvers:
        return (
            f"{decision.approver} may not decide call {decision.call_id}: "
            f"{pending.tool} is decided by {', '.join(pending.approvers)}"
        )
    return None


def record_decision(
    memory: CarriedState,
    pending: PendingApproval,
    *,
    verdict: Verdict,
    approver: str,
    reason: str,
    decided_at: str,
    timed_out: bool = False,
) -> ApprovalRecord:
    record = ApprovalRecord(
        call_id=pending.call_id,
        tool=pending.tool,
        service=pending.service,
        verdict=verdict,
        approver=approver,
        reason=reason,
        decided_at=decided_at,
        turn=pending.turn,
        policy_reason=pending.reason,
        timed_out=timed_out,
    )
    memory.decisions[pending.call_id] = record
    while len(memory.decisions) > DECISIONS_KEPT:
        memory.decisions.pop(next(iter(memory.decisions)))
    return record


def denied(resolved: Resolved, record: ApprovalRecord) -> StepResult:
    """What a denied (or timed-out) call leaves: the model reads who said no and why."""
    why = f": {record.reason}" if record.reason else ""
    message = (
        f"not run: approval timed out{why}"
        if record.timed_out
        else f"not run: {record.approver} denied this call{why}"
    )
    return unrun(resolved, "denied", message)


def iso_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
