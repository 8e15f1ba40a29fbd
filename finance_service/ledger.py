"""The Finance team's expense ledger: one long-running entity workflow in the finance namespace.

`submit_expense` reaches it by update-with-start, so the first expense creates it and later ones
find it. The update id comes from the call id, and the ledger also looks the call id up among the
expenses it keeps, so a retried activity (even one that lands on the next run, after
continue-as-new) records its expense once. The team's own limits are checked here, where the totals live, in one
synchronous handler: two expenses arriving together cannot both slip under a limit.

Imported by workflow code: no I/O.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.exceptions import ApplicationError

LEDGER_WORKFLOW_NAME = "ExpenseLedgerWorkflow"
LEDGER_WORKFLOW_ID = "finance-expense-ledger"
LIMIT_ERROR = "ExpenseLimitExceeded"
Currency = Literal["EUR", "USD", "GBP", "CHF"]

# The team's limits. Without exchange rates a day's total is kept per cost centre and currency.
MAX_PER_EXPENSE = Decimal("10000")
MAX_PER_CENTRE_PER_DAY = Decimal("25000")
# The state is carried at continue-as-new: keep it bounded (about 400 bytes an expense). A retry
# arrives within the tool's few attempts, long before 500 newer expenses push its own out.
KEPT_EXPENSES = 500
# A fixed bound as well as the server's suggestion keeps each run's history short and replays fast.
EXPENSES_PER_RUN = 500


class ExpenseRequest(BaseModel):
    call_id: str
    conversation_id: str = ""
    amount: Decimal
    currency: Currency
    cost_centre: str
    reason: str
    approved_by: str = Field(default="", description="Who approved it, when its policy asked.")


class Expense(ExpenseRequest):
    recorded_at: datetime
    day: str = Field(description="UTC date the expense counts towards, YYYY-MM-DD.")


class DayTotal(BaseModel):
    day: str
    cost_centre: str
    currency: Currency
    total: Decimal
    count: int


class LedgerState(BaseModel):
    expenses: list[Expense] = Field(default_factory=list, description="Newest last.")
    # Only the current UTC day's totals: earlier days can no longer be charged.
    day_totals: list[DayTotal] = Field(default_factory=list)
    recorded_total: int = Field(default=0, description="Expenses recorded over all runs.")


class LedgerStart(BaseModel):
    state: LedgerState = Field(default_factory=LedgerState)
    expenses_per_run: int = Field(default=EXPENSES_PER_RUN, ge=1)


class ExpenseListing(BaseModel):
    expenses: list[Expense] = Field(description="Newest first.")
    day_totals: list[DayTotal]
    recorded_total: int


@workflow.defn(name=LEDGER_WORKFLOW_NAME)
class ExpenseLedgerWorkflow:
    @workflow.init
    def __init__(self, start: LedgerStart) -> None:
        self._state = start.state
        self._recorded_this_run = 0

    @workflow.run
    async def run(self, start: LedgerStart) -> None:
        await workflow.wait_condition(
            lambda: (
                self._recorded_this_run >= start.expenses_per_run
                or workflow.info().is_continue_as_new_suggested()
            )
        )
        # Updates accepted but not yet finished would be lost with this run.
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(
            LedgerStart(state=self._state, expenses_per_run=start.expenses_per_run)
        )

    @workflow.update
    def record_expense(self, request: ExpenseRequest) -> Expense:
        existing = self._recorded(request.call_id)
        if existing is not None:
            return existing
        now = workflow.now()
        day = now.date().isoformat()
        if request.amount > MAX_PER_EXPENSE:
            raise ApplicationError(
                f"expense of {request.amount} {request.currency} is over the limit of "
                f"{MAX_PER_EXPENSE} per expense; split it or ask Finance",
                type=LIMIT_ERROR,
                non_retryable=True,
            )
        self._state.day_totals = [t for t in self._state.day_totals if t.day == day]
        total = self._day_total(day, request.cost_centre, request.currency)
        if total.total + request.amount > MAX_PER_CENTRE_PER_DAY:
            raise ApplicationError(
                f"cost centre {request.cost_centre} has {total.total} {request.currency} recorded "
                f"today (UTC); {request.amount} more would pass its daily limit of "
                f"{MAX_PER_CENTRE_PER_DAY}",
                type=LIMIT_ERROR,
                non_retryable=True,
            )
        expense = Expense(
            **request.model_dump(),
            recorded_at=now,
            day=day,
        )
        total.total += request.amount
        total.count += 1
        if not any(t is total for t in self._state.day_totals):
            self._state.day_totals.append(total)
        self._state.expenses.append(expense)
        del self._state.expenses[:-KEPT_EXPENSES]
        self._state.recorded_total += 1
        self._recorded_this_run += 1
        return expense

    @workflow.query
    def expenses(self, limit: int) -> ExpenseListing:
        newest = self._state.expenses[::-1][: max(0, limit)]
        return ExpenseListing(
            expenses=newest,
            day_totals=self._state.day_totals,
            recorded_total=self._state.recorded_total,
        )

    def _recorded(self, call_id: str) -> Expense | None:
        return next((e for e in reversed(self._state.expenses) if e.call_id == call_id), None)

    def _day_total(self, day: str, cost_centre: str, currency: Currency) -> DayTotal:
        """The running total, or a new zero one that the caller adds only if it records."""
        for total in self._state.day_totals:
            if total.cost_centre == cost_centre and total.currency == currency:
                return total
        return DayTotal(
            day=day, cost_centre=cost_centre, currency=currency, total=Decimal(0), count=0
        )
