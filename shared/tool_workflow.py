"""The generic tool workflow each team runs in its own namespace: one workflow per tool call.

The workflow id comes from the call id, so a repeated start of the same call finds this run
instead of starting a second one. The tool itself runs in an activity under a retry policy.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from shared.contract import NON_RETRYABLE_TOOL_ERRORS, TOOL_FAILED
    from shared.heartbeat import HEARTBEAT_TIMEOUT
    from shared.telemetry import span_in_trace
    from shared.tools import ToolResult, ToolWorkflowInput

TOOL_WORKFLOW_NAME = "ToolWorkflow"
RUN_TOOL_ACTIVITY = "run_tool"
# Longer tools run as regular activities: they get their own task, timeouts and heartbeats.
LOCAL_ACTIVITY_MAX_TIMEOUT = timedelta(seconds=10)


# Outside the sandbox: this SDK-owned workflow is one local activity or activity and a result,
# reads no clock, randomness or I/O, and the sandbox's per-run set-up was a third of a team
# worker's CPU per call. Teams' own workflows stay sandboxed.
@workflow.defn(name=TOOL_WORKFLOW_NAME, sandboxed=False)
class ToolWorkflow:
    @workflow.run
    async def run(self, request: ToolWorkflowInput) -> ToolResult:
        timeout = timedelta(seconds=request.timeout_seconds)
        retry_policy = RetryPolicy(
            initial_interval=timedelta(milliseconds=200),
            backoff_coefficient=2.0,
            maximum_interval=timedelta(seconds=5),
            maximum_attempts=request.max_attempts,
            non_retryable_error_types=NON_RETRYABLE_TOOL_ERRORS,
        )
        traced = span_in_trace(
            f"tool workflow {request.service}.{request.call.tool}",
            {"agent.call_id": request.call.call_id},
        )
        try:
            with traced:
                output = await _run_tool(request, timeout, retry_policy)
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise  # the caller cancelled the call (a cancelled turn): the run ends CANCELED
            # Surface the tool's own message, not the activity wrapper, to the caller.
            cause = err.cause
            message = cause.message if isinstance(cause, ApplicationError) else str(cause or err)
            error_type = cause.type if isinstance(cause, ApplicationError) else TOOL_FAILED
            raise ApplicationError(message, type=error_type, non_retryable=True) from None
        return ToolResult(
            call_id=request.call.call_id,
            tool=request.call.tool,
            service=request.service,
            output=output,
        )


async def _run_tool(
    request: ToolWorkflowInput, timeout: timedelta, retry_policy: RetryPolicy
) -> Any:
    if timeout <= LOCAL_ACTIVITY_MAX_TIMEOUT and request.local_activity:
        # A short tool runs as a local activity: the whole workflow then completes in one
        # workflow task, which is what lets the handler's fast path answer synchronously.
        return await workflow.execute_local_activity(
            RUN_TOOL_ACTIVITY,
            request.call,
            start_to_close_timeout=timeout,
            retry_policy=retry_policy,
            summary=request.call.tool,
        )
    return await workflow.execute_activity(
        RUN_TOOL_ACTIVITY,
        request.call,
        start_to_close_timeout=timeout,
        # The activity heartbeats while the tool runs: a dead worker's call is retried within
        # seconds, not after the tool's whole timeout.
        heartbeat_timeout=HEARTBEAT_TIMEOUT,
        retry_policy=retry_policy,
        summary=request.call.tool,
    )
