"""A later version of the IT service, deployed beside the current one: two tools more."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel

from it_service.tools import registry as it_registry
from shared.tools import ToolRegistry


class Uptime(BaseModel):
    service: str
    status: str


async def service_status() -> Uptime:
    """Report that the IT service is up. Published only by the canary deployment."""
    return Uptime(service="it", status="ok")


async def bulk_report(rows: int) -> list[dict[str, str]]:
    """A report with `rows` rows: large enough, with many rows, to exceed the result limit."""
    return [{"row": str(index), "text": "x" * 100} for index in range(rows)]


def canary_registry() -> ToolRegistry:
    registry = it_registry.copy()
    registry.add(service_status, timeout=timedelta(seconds=5))
    registry.add(bulk_report, timeout=timedelta(seconds=5))
    return registry
