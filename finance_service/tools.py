"""The Finance team's tools. Adding a tool here and redeploying this worker publishes it."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal, localcontext
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field
from temporalio.client import WithStartWorkflowOperation, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from finance_service.ledger import (
    LEDGER_WORKFLOW_ID,
    LIMIT_ERROR,
    Currency,
    Expense,
    ExpenseLedgerWorkflow,
    ExpenseListing,
    ExpenseRequest,
    LedgerStart,
)
from finance_service.quotes import QuoteSettings, StockQuote, fetch_quote
from shared.approval import ApprovalPolicy, Arg
from shared.config import integration_settings
from shared.tools import ToolContext, ToolError, ToolRegistry

registry = ToolRegistry(service="finance")
tool = registry.tool


def _normalise_ticker(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


Ticker = Annotated[
    str,
    BeforeValidator(_normalise_ticker),
    Field(
        pattern=r"^[A-Z]{1,5}([.-][A-Z]{1,2})?$",
        description="Stock ticker symbol, e.g. AAPL or BRK.B.",
    ),
]


def _upper(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


# The validator comes after the Field: the other order would drop the pattern from the schema.
CostCentre = Annotated[
    str,
    Field(pattern=r"^CC-\d{3,6}$", description="Cost centre code, e.g. CC-1001."),
    BeforeValidator(_upper),
]
# Over this amount a person must approve the expense before the team records it.
APPROVAL_THRESHOLD = 500


class RoiResult(BaseModel):
    principal: str
    rate_percent: str
    years: int
    final_value: str
    profit: str
    roi_percent: str


@tool(timeout=timedelta(seconds=30))
async def stock_price(ticker: Ticker) -> StockQuote:
    """Latest price for a stock ticker."""
    return await fetch_quote(ticker, integration_settings(QuoteSettings))


@tool(timeout=timedelta(seconds=5))
async def calculate_roi(
    principal: Annotated[
        Decimal,
        Field(gt=0, le=Decimal("1e12"), decimal_places=2, description="Amount invested."),
    ],
    rate: Annotated[
        Decimal,
        Field(
            gt=-100,
            le=100,
            decimal_places=4,
            description="Annual return in percent, e.g. 7.5 for 7.5% a year.",
        ),
    ],
    years: Annotated[int, Field(ge=1, le=100, description="Whole years, compounded yearly.")],
) -> RoiResult:
    """Compound growth of an investment with exact decimal arithmetic (no float rounding)."""
    # The bounds above keep every result under 10^43, so 80 digits is exact to the cent.
    with localcontext() as ctx:
        ctx.prec = 80
        final_value = principal * (1 + rate / 100) ** years
        cent = Decimal("0.01")
        final_rounded = final_value.quantize(cent)
        profit = (final_value - principal).quantize(cent)
        roi_percent = ((final_value - principal) / principal * 100).quantize(cent)
    return RoiResult(
        principal=str(principal),
        rate_percent=str(rate),
        years=years,
        final_value=str(final_rounded),
        profit=str(profit),
        roi_percent=str(roi_percent),
    )


@tool(
    timeout=timedelta(seconds=10),
    approval=ApprovalPolicy.when(Arg("amount") > APPROVAL_THRESHOLD),
)
async def submit_expense(
    amount: Annotated[
        Decimal,
        Field(gt=0, le=Decimal("1e9"), decimal_places=2, description="Amount spent."),
    ],
    currency: Annotated[Currency, BeforeValidator(_upper), Field(description="ISO 4217 code.")],
    cost_centre: CostCentre,
    reason: Annotated[str, Field(min_length=1, max_length=500, description="What it was for.")],
    context: ToolContext,
) -> Expense:
    """Submit an expense claim to the Finance ledger, charged to a cost centre.

    Amounts over 500 need a person's approval first. Finance refuses an expense over 10000, and
    more than 25000 a day (UTC) per cost centre and currency.
    """
    request = ExpenseRequest(
        call_id=context.call_id,
        conversation_id=context.conversation_id,
        amount=amount,
        currency=currency,
        cost_centre=cost_centre,
        reason=reason,
        approved_by=context.approval.approver if context.approval else "",
    )
    start = WithStartWorkflowOperation(
        ExpenseLedgerWorkflow.run,
        LedgerStart(),
        id=LEDGER_WORKFLOW_ID,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        task_queue=context.task_queue,
    )
    try:
        # The call id as update id: a retried activity is answered with the first recording.
        return await context.client.execute_update_with_start_workflow(
            ExpenseLedgerWorkflow.record_expense,
            request,
            start_workflow_operation=start,
            id=f"record_expense-{context.call_id}",
        )
    except WorkflowUpdateFailedError as err:
        cause = err.cause
        if isinstance(cause, ApplicationError) and cause.type == LIMIT_ERROR:
            raise ToolError(cause.message) from None
        raise


@tool(timeout=timedelta(seconds=5))
async def list_expenses(
    context: ToolContext,
    limit: Annotated[int, Field(ge=1, le=100, description="How many, newest first.")] = 20,
) -> ExpenseListing:
    """List the recorded expense claims, newest first, with today's totals per cost centre."""
    handle = context.client.get_workflow_handle_for(ExpenseLedgerWorkflow.run, LEDGER_WORKFLOW_ID)
    try:
        return await handle.query(ExpenseLedgerWorkflow.expenses, limit)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:  # nothing submitted yet
            return ExpenseListing(expenses=[], day_totals=[], recorded_total=0)
        raise
