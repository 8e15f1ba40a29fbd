"""Workflow-side helpers for calling any team's tool service over Nexus.

Runs inside the workflow sandbox: no I/O, only Temporal workflow APIs. Failures are turned into a
`ToolOutcome` the caller can hand back to a model, so a bad argument or a team's outage is data,
never a failed workflow task.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

import nexusrpc
from pydantic import BaseModel
from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    NexusOperationError,
    TimeoutError,
)

with workflow.unsafe.imports_passed_through():
    from shared.contract import (
        TOOL_ARGUMENTS_ERROR,
        AgentUsage,
        ListToolsRequest,
        ToolCall,
        ToolCatalog,
        ToolService,
    )

NO_ANSWER = "service unavailable: no answer within the timeout"
ToolErrorKind = Literal[
    "bad_request", "not_found", "unauthenticated", "unavailable", "failed", "cancelled"
]


class ToolOutcome(BaseModel):
    """How one tool call ended, wherever it ran. Built only through the two constructors."""

    call_id: str
    tool: str
    endpoint: str
    ok: bool
    output: Any = None
    error_kind: ToolErrorKind | None = None
    error: str | None = None
    usage: AgentUsage | None = None  # what an agent tool's own model steps used

    @classmethod
    def succeeded(
        cls, call: ToolCall, endpoint: str, output: Any, *, usage: AgentUsage | None = None
    ) -> ToolOutcome:
        return cls(
            call_id=call.call_id,
            tool=call.tool,
            endpoint=endpoint,
            ok=True,
            output=output,
            usage=usage,
        )

    @classmethod
    def failed(
        cls, call: ToolCall, endpoint: str, kind: ToolErrorKind, message: str
    ) -> ToolOutcome:
        return cls(
            call_id=call.call_id,
            tool=call.tool,
            endpoint=endpoint,
            ok=False,
            error_kind=kind,
            error=message,
        )


async def list_tools(endpoint: str, *, timeout: timedelta) -> ToolCatalog:
    client = workflow.create_nexus_client(service=ToolService, endpoint=endpoint)
    return await client.execute_operation(
        ToolService.list_tools,
        ListToolsRequest(caller=workflow.info().namespace),
        schedule_to_close_timeout=timeout,
    )


async def execute_tool(
    endpoint: str,
    call: ToolCall,
    *,
    timeout: timedelta,
    headers: dict[str, str] | None = None,
) -> ToolOutcome:
    client = workflow.create_nexus_client(service=ToolService, endpoint=endpoint)
    try:
        result = await client.execute_operation(
            ToolService.execute_tool,
            call,
            schedule_to_close_timeout=timeout,
            headers=headers,
            summary=call.tool,
        )
    except NexusOperationError as err:
        return ToolOutcome.failed(call, endpoint, *classify_nexus_error(err))
    return ToolOutcome.succeeded(call, endpoint, result.output, usage=result.usage)


def classify_nexus_error(err: NexusOperationError) -> tuple[ToolErrorKind, str]:
    cause = err.cause
    if isinstance(cause, nexusrpc.HandlerError):
        handler_kinds: dict[nexusrpc.HandlerErrorType, ToolErrorKind] = {
            nexusrpc.HandlerErrorType.BAD_REQUEST: "bad_request",
            nexusrpc.HandlerErrorType.NOT_FOUND: "not_found",
            nexusrpc.HandlerErrorType.UNAUTHENTICATED: "unauthenticated",
            nexusrpc.HandlerErrorType.UNAUTHORIZED: "unauthenticated",
        }
        return handler_kinds.get(cause.type, "unavailable"), innermost_message(cause)
    if isinstance(cause, TimeoutError):
        return "unavailable", f"{NO_ANSWER} ({cause})"
    if isinstance(cause, CancelledError):
        return "cancelled", "the tool call was cancelled"
    if isinstance(cause, ApplicationError):
        return "failed", innermost_message(cause)
    return "failed", innermost_message(err)


def classify_activity_error(err: ActivityError) -> tuple[ToolErrorKind, str]:
    """A tool run as an activity (the orchestrator's local tools) that ended in an error."""
    cause = err.cause
    bad_arguments = isinstance(cause, ApplicationError) and cause.type == TOOL_ARGUMENTS_ERROR
    return ("bad_request" if bad_arguments else "failed"), innermost_message(err)


def innermost_message(error: BaseException) -> str:
    """The real reason behind wrapped errors (activity, update, Nexus handler failures).

    The deepest ApplicationError message wins; without one, the deepest non-empty message.
    """
    application: str | None = None
    message = str(error)
    current: BaseException | None = error
    while current is not None:
        if isinstance(current, ApplicationError):
            if current.message:
                application = current.message
        elif str(current):
            message = str(current)
        current = getattr(current, "cause", None) or current.__cause__
    return application or message
