"""Approval policies: when a tool call needs a person's yes before it runs, declared as data.

A team gives each tool a policy: never (the default), always, or `when` one of a few conditions on
its validated arguments holds:

    @tool(approval=ApprovalPolicy.when(Arg("amount") > 500, approvers=["finance-lead"]))
    async def submit_expense(amount: Decimal, ...) -> Expense:

The policy travels in the catalog (`ToolSpec.approval`). The orchestrator reads it to pause a turn
on the calls that need a decision, and the team evaluates it again, on the arguments its own
pydantic model validated, before anything starts: a call that needs approval and carries none is
refused at the team, whatever the caller did.

Imported by workflow code: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Comparison = Literal[">", ">=", "<", "<=", "==", "!="]
ORDERING: frozenset[str] = frozenset({">", ">=", "<", "<="})
Verdict = Literal["approve", "deny"]
ApprovalMode = Literal["never", "always", "when"]
Scalar = bool | int | float | str


class ApprovalCondition(BaseModel):
    """`argument op value`, e.g. `amount > 500`. Ordering compares numbers exactly (decimals)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    argument: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    op: Comparison
    value: Scalar

    @model_validator(mode="after")
    def _ordering_needs_a_number(self) -> ApprovalCondition:
        if self.op in ORDERING and _number(self.value) is None:
            raise ValueError(f"'{self.op}' compares numbers; {self.value!r} is not one")
        return self

    def describe(self) -> str:
        return f"{self.argument} {self.op} {self.value}"

    def holds(self, args: Mapping[str, Any]) -> bool | None:
        """Whether the condition holds for these arguments; None when it cannot be told (the
        argument is missing or not a number where a number is compared)."""
        if self.argument not in args:
            return None
        actual = args[self.argument]
        if isinstance(actual, Enum):
            actual = actual.value
        if self.op in ORDERING:
            number, limit = _number(actual), _number(self.value)
            if number is None or limit is None:
                return None
            return {
                ">": number > limit,
                ">=": number >= limit,
                "<": number < limit,
                "<=": number <= limit,
            }[self.op]
        equal = _same(actual, self.value)
        return equal if self.op == "==" else not equal


class Arg:
    """Names a tool argument in a condition: `Arg("amount") > 500`."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __gt__(self, value: Scalar) -> ApprovalCondition:
        return ApprovalCondition(argument=self.name, op=">", value=value)

    def __ge__(self, value: Scalar) -> ApprovalCondition:
        return ApprovalCondition(argument=self.name, op=">=", value=value)

    def __lt__(self, value: Scalar) -> ApprovalCondition:
        return ApprovalCondition(argument=self.name, op="<", value=value)

    def __le__(self, value: Scalar) -> ApprovalCondition:
        return ApprovalCondition(argument=self.name, op="<=", value=value)

    def equals(self, value: Scalar) -> ApprovalCondition:
        return ApprovalCondition(argument=self.name, op="==", value=value)

    def differs_from(self, value: Scalar) -> ApprovalCondition:
        return ApprovalCondition(argument=self.name, op="!=", value=value)


class ApprovalPolicy(BaseModel):
    """When a tool's calls need approval, and who may give it (empty: any operator who can reach
    the conversation). With `when`, one holding condition is enough."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: ApprovalMode = "never"
    conditions: tuple[ApprovalCondition, ...] = ()
    approvers: tuple[str, ...] = Field(default=(), description="Who may decide; empty: anyone.")

    @model_validator(mode="after")
    def _conditions_only_with_when(self) -> ApprovalPolicy:
        if self.mode == "when" and not self.conditions:
            raise ValueError("mode 'when' needs at least one condition")
        if self.mode != "when" and self.conditions:
            raise ValueError(f"mode '{self.mode}' takes no conditions; use 'when'")
        return self

    @classmethod
    def never(cls) -> ApprovalPolicy:
        return cls()

    @classmethod
    def always(cls, *, approvers: Iterable[str] = ()) -> ApprovalPolicy:
        return cls(mode="always", approvers=tuple(approvers))

    @classmethod
    def when(cls, *conditions: ApprovalCondition, approvers: Iterable[str] = ()) -> ApprovalPolicy:
        return cls(mode="when", conditions=conditions, approvers=tuple(approvers))

    @property
    def gated(self) -> bool:
        return self.mode != "never"

    def reason(self, args: Mapping[str, Any]) -> str | None:
        """Why a call with these arguments needs approval, or None when it does not.

        Fails closed: a condition that cannot be evaluated (argument missing or not a number)
        asks for approval.
        """
        if self.mode == "never":
            return None
        if self.mode == "always":
            return "always needs approval"
        for condition in self.conditions:
            holds = condition.holds(args)
            if holds is None:
                return f"{condition.describe()} cannot be checked for these arguments"
            if holds:
                return condition.describe()
        return None

    def allows(self, approver: str) -> bool:
        return not self.approvers or approver in self.approvers

    def check_fields(self, tool: str, fields: Iterable[str]) -> None:
        """Raise ValueError for a condition on an argument the tool does not take."""
        known = set(fields)
        for condition in self.conditions:
            if condition.argument not in known:
                raise ValueError(
                    f"tool '{tool}': approval condition '{condition.describe()}' names no "
                    f"argument of the tool (arguments: {', '.join(sorted(known)) or 'none'})"
                )


class CallApproval(BaseModel):
    """A person's decision on one call, as it travels to the team inside the call (and is bound
    by the caller's signed token): the team runs a gated call only with an `approve` for its id."""

    model_config = ConfigDict(frozen=True)

    call_id: str = Field(max_length=200)
    verdict: Verdict
    approver: str = Field(max_length=200)
    reason: str = Field(default="", max_length=2000)
    decided_at: str = Field(description="ISO 8601, from the caller's workflow clock.")


def approval_problem(
    policy: ApprovalPolicy,
    tool: str,
    call_id: str,
    args: Mapping[str, Any],
    approval: CallApproval | None,
) -> str | None:
    """Why the team must refuse this call, or None when it may run: the team's own check."""
    reason = policy.reason(args)
    if reason is None:
        return None
    prefix = f"tool '{tool}' needs approval ({reason})"
    if approval is None:
        return f"{prefix} and the call carries none; nothing was started"
    if approval.call_id != call_id:
        return f"{prefix}; the approval is for call '{approval.call_id}', not '{call_id}'"
    if approval.verdict != "approve":
        return f"{prefix}; the call was denied by {approval.approver}"
    if not policy.allows(approval.approver):
        return (
            f"{prefix}; {approval.approver} may not approve it "
            f"(approvers: {', '.join(policy.approvers)})"
        )
    return None


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, Decimal | int):
        return Decimal(value)
    if isinstance(value, float | str):
        try:
            number = Decimal(str(value).strip())
        except InvalidOperation:
            return None
        return number if number.is_finite() else None
    return None


def _same(actual: Any, expected: Scalar) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return actual is expected
    left, right = _number(actual), _number(expected)
    if left is not None and right is not None and not isinstance(expected, str):
        return left == right
    return str(actual) == str(expected)
