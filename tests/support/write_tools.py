"""Helpers for the teams' gated write tools: approvals, calls, and direct looks at what ran.

Everything here reads strongly consistent state (a workflow's own record, a query), never
visibility, so "nothing was started" is known at once instead of after a lag.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from temporalio.client import Client, WithStartWorkflowOperation, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from finance_service.ledger import (
    LEDGER_WORKFLOW_ID,
    Expense,
    ExpenseLedgerWorkflow,
    ExpenseListing,
    ExpenseRequest,
    LedgerStart,
)
from shared.approval import CallApproval, Verdict
from shared.tools import ToolCall, tool_workflow_id

DECIDED_AT = "2026-01-05T10:00:00+00:00"
FINANCE_TASK_QUEUE = "finance-tools"


def approval(call_id: str, verdict: Verdict = "approve", approver: str = "ada") -> CallApproval:
    return CallApproval(call_id=call_id, verdict=verdict, approver=approver, decided_at=DECIDED_AT)


def gated_call(tool: str, decision: Verdict | None = None, **args: Any) -> ToolCall:
    """A call with a fresh id, carrying a decision on itself when one is given."""
    call_id = f"call-{uuid.uuid4()}"
    return ToolCall(
        call_id=call_id,
        tool=tool,
        args=args,
        conversation_id=f"conv-{uuid.uuid4()}",
        approval=approval(call_id, decision) if decision else None,
    )


def cost_centre() -> str:
    """A cost centre of its own per test: the ledger (and its daily totals) lives for the session."""
    return f"CC-{secrets.randbelow(900_000) + 100_000}"


async def ledger_listing(client: Client, workflow_id: str = LEDGER_WORKFLOW_ID) -> ExpenseListing:
    handle = client.get_workflow_handle_for(ExpenseLedgerWorkflow.run, workflow_id)
    try:
        return await handle.query(ExpenseLedgerWorkflow.expenses, 10_000)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return ExpenseListing(expenses=[], day_totals=[], recorded_total=0)
        raise


async def ledger_entries(client: Client, call_id: str) -> list[Expense]:
    return [e for e in (await ledger_listing(client)).expenses if e.call_id == call_id]


async def tool_workflow_exists(client: Client, call: ToolCall) -> bool:
    try:
        await client.get_workflow_handle(tool_workflow_id(call.call_id)).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


async def record_directly(
    client: Client,
    request: ExpenseRequest,
    update_id: str,
    workflow_id: str = LEDGER_WORKFLOW_ID,
    start: LedgerStart | None = None,
) -> tuple[Expense, WorkflowHandle[Any, Any]]:
    """The ledger update as the tool sends it, with a chosen update id; and the run it reached."""
    operation = WithStartWorkflowOperation(
        ExpenseLedgerWorkflow.run,
        start or LedgerStart(),
        id=workflow_id,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        task_queue=FINANCE_TASK_QUEUE,
    )
    expense = await client.execute_update_with_start_workflow(
        ExpenseLedgerWorkflow.record_expense,
        request,
        start_workflow_operation=operation,
        id=update_id,
    )
    return expense, await operation.workflow_handle()
