"""Diagnostic caller workflows: call any team's tool service from a workflow, as the orchestrator does.

Used by the test suite, by `make bench`, and by operators checking an endpoint end to end.
Each probe records how long every call took, measured in workflow time.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, Field
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from shared.caller import ToolOutcome, execute_tool, list_tools
    from shared.tools import ToolCall, ToolCatalog

PROBE_TASK_QUEUE = "tool-probe"


class ListToolsProbeInput(BaseModel):
    endpoints: list[str]
    timeout_seconds: float = 10.0
    repeat: int = Field(default=1, ge=1)


class ListToolsProbeResult(BaseModel):
    catalogs: list[ToolCatalog]
    durations_ms: list[float]


class ExecuteToolProbeInput(BaseModel):
    endpoint: str
    calls: list[ToolCall]
    timeout_seconds: float = 30.0
    headers: dict[str, str] | None = None


class ExecuteToolProbeResult(BaseModel):
    outcomes: list[ToolOutcome]
    durations_ms: list[float]


@workflow.defn(name="ListToolsProbe")
class ListToolsProbe:
    @workflow.run
    async def run(self, probe: ListToolsProbeInput) -> ListToolsProbeResult:
        catalogs: list[ToolCatalog] = []
        durations: list[float] = []
        for _ in range(probe.repeat):
            for endpoint in probe.endpoints:
                started = workflow.time()
                catalog = await list_tools(
                    endpoint, timeout=timedelta(seconds=probe.timeout_seconds)
                )
                durations.append((workflow.time() - started) * 1000)
                if len(catalogs) < len(probe.endpoints):
                    catalogs.append(catalog)
        return ListToolsProbeResult(catalogs=catalogs, durations_ms=durations)


@workflow.defn(name="ExecuteToolProbe")
class ExecuteToolProbe:
    """Runs the given calls one after another, so each duration is one full round trip."""

    @workflow.run
    async def run(self, probe: ExecuteToolProbeInput) -> ExecuteToolProbeResult:
        outcomes: list[ToolOutcome] = []
        durations: list[float] = []
        for call in probe.calls:
            started = workflow.time()
            outcomes.append(
                await execute_tool(
                    probe.endpoint,
                    call,
                    timeout=timedelta(seconds=probe.timeout_seconds),
                    headers=probe.headers,
                )
            )
            durations.append((workflow.time() - started) * 1000)
        return ExecuteToolProbeResult(outcomes=outcomes, durations_ms=durations)
