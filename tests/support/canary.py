"""A later version of the IT service, deployed beside the current one: a few tools more."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Annotated

from pydantic import BaseModel, Field

from it_service.tools import registry as it_registry
from shared.approval import ApprovalPolicy, Arg
from shared.tools import ToolContext, ToolRegistry

# Who may approve `grant_access`: the approver check is the team's as much as the caller's.
ACCESS_APPROVERS = ("it-lead",)


class Uptime(BaseModel):
    service: str
    status: str


class AccessGrant(BaseModel):
    user: str
    system: str
    days: int
    call_id: str


async def service_status() -> Uptime:
    """Report that the IT service is up. Published only by the canary deployment."""
    return Uptime(service="it", status="ok")


async def bulk_report(rows: int) -> list[dict[str, str]]:
    """A report with `rows` rows: large enough, with many rows, to exceed the result limit."""
    return [{"row": str(index), "text": "x" * 100} for index in range(rows)]


async def hold(seconds: Annotated[float, Field(ge=0, le=120)]) -> str:
    """Wait `seconds`, then answer: a tool slow enough to be cancelled while it runs."""
    await asyncio.sleep(seconds)
    return "held"


async def grant_access(
    user: Annotated[str, Field(max_length=64)],
    system: Annotated[str, Field(max_length=64)],
    days: Annotated[int, Field(ge=1, le=365)],
    context: ToolContext,
) -> AccessGrant:
    """Grant a user access to a system for some days; over 30 days needs the IT lead's approval."""
    return AccessGrant(user=user, system=system, days=days, call_id=context.call_id)


def canary_registry() -> ToolRegistry:
    registry = it_registry.copy()
    registry.add(service_status, timeout=timedelta(seconds=5))
    registry.add(bulk_report, timeout=timedelta(seconds=5))
    registry.add(hold, timeout=timedelta(seconds=60), max_attempts=1)
    registry.add(
        grant_access,
        timeout=timedelta(seconds=5),
        approval=ApprovalPolicy.when(Arg("days") > 30, approvers=ACCESS_APPROVERS),
    )
    return registry
