"""The activity that runs a registered tool function inside the team's worker."""

from __future__ import annotations

import json
import time
from typing import Any

from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from shared.contract import (
    TOOL_ARGUMENTS_ERROR,
    TOOL_ERROR,
    TOOL_NEEDS_APPROVAL,
    TOOL_NOT_FOUND,
    TOOL_TRANSIENT_ERROR,
)
from shared.heartbeat import heartbeating
from shared.log import bound_context, get_logger
from shared.telemetry import span_in_trace
from shared.tool_workflow import RUN_TOOL_ACTIVITY
from shared.tools import ToolArgumentsError, ToolCall, ToolContext, ToolError, ToolRegistry

log = get_logger(__name__)

# Results travel through activity, workflow and Nexus payloads (2 MB at most each) and end up in
# the caller's history and its model's context: a larger result is cut, with a marker.
DEFAULT_MAX_RESULT_BYTES = 64 * 1024


class ToolActivities:
    """The team worker's `run_tool` activity, bound to the team's registry."""

    def __init__(
        self,
        registry: ToolRegistry,
        client: Client,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    ) -> None:
        self._registry = registry
        self._client = client
        self._max_result_bytes = max_result_bytes

    @activity.defn(name=RUN_TOOL_ACTIVITY)
    async def run_tool(self, call: ToolCall) -> Any:
        return await run_registered_tool(
            self._registry, self._client, call, max_result_bytes=self._max_result_bytes
        )


def bounded_result(output: Any, max_bytes: int) -> Any:
    """The output as is when its JSON fits `max_bytes`; otherwise a marked, truncated preview."""
    encoded = json.dumps(output, ensure_ascii=False, default=str).encode()
    if len(encoded) <= max_bytes:
        return output
    preview = encoded[: max_bytes // 2].decode(errors="ignore")
    return {
        "result_truncated": True,
        "original_bytes": len(encoded),
        "limit_bytes": max_bytes,
        "preview": preview,
    }


async def run_registered_tool(
    registry: ToolRegistry,
    client: Client,
    call: ToolCall,
    *,
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
) -> Any:
    """Run one call from inside an activity, mapping tool errors onto Temporal's retry rules."""
    info = activity.info()
    with bound_context(
        namespace=info.namespace,
        workflow_id=info.workflow_id,
        conversation_id=call.conversation_id,
        tool=call.tool,
        attempt=info.attempt,
    ):
        registered = registry.get(call.tool)
        if registered is None:
            raise ApplicationError(
                f"unknown tool '{call.tool}'", type=TOOL_NOT_FOUND, non_retryable=True
            )
        context = ToolContext(
            call_id=call.call_id,
            conversation_id=call.conversation_id,
            namespace=info.namespace,
            task_queue=info.task_queue,
            client=client,
            approval=call.approval,
            user=call.user,
        )
        started = time.monotonic()
        outcome = "error"
        ran = span_in_trace(
            f"run {registry.service}.{registered.spec.name}",
            {"agent.call_id": call.call_id, "agent.attempt": info.attempt},
        )
        with ran as span:
            try:
                # The handler checked the call's approval before starting anything; checked again
                # here for any other way in (a tool workflow started directly, a local tool).
                problem = (
                    registered.approval_problem(call) if registered.spec.approval.gated else None
                )
                if problem:
                    raise ApplicationError(problem, type=TOOL_NEEDS_APPROVAL, non_retryable=True)
                async with heartbeating():
                    output = await registered.invoke(call.args, context)
                outcome = "ok"
            except ToolArgumentsError as err:
                raise ApplicationError(
                    str(err), type=TOOL_ARGUMENTS_ERROR, non_retryable=True
                ) from None
            except ToolError as err:
                log.warning("tool refused", error=err.message, retryable=err.retryable)
                raise ApplicationError(
                    err.message,
                    type=TOOL_TRANSIENT_ERROR if err.retryable else TOOL_ERROR,
                    non_retryable=not err.retryable,
                ) from None
            finally:
                record_execution(registry.service, registered.spec.name, outcome, started)
                span.set_attribute("agent.tool.outcome", outcome)
        bounded = bounded_result(output, max_result_bytes)
        if bounded is not output:
            log.warning("tool result truncated", limit_bytes=max_result_bytes)
        log.info("tool completed")
        return bounded


def record_execution(service: str, tool: str, outcome: str, started: float) -> None:
    """Count one attempt of a tool in the team's worker metrics (retries count: each ran)."""
    meter = activity.metric_meter()
    labels = {"service": service, "tool": tool, "outcome": outcome}
    meter.create_counter(
        "agent_tool_executions", "Tool attempts run by the team's worker, by outcome"
    ).add(1, labels)
    meter.create_histogram_float(
        "agent_tool_execution_duration_seconds", "Tool attempt latency in the team's worker", "s"
    ).record(time.monotonic() - started, {"service": service, "tool": tool})
