"""What an MCP client reads from `agent mcp` and `/mcp` (orchestrator.mcp_server): the tools as
MCP lists them, call results, and every failure as one readable line (`isError`), never a
traceback."""

from __future__ import annotations

import json
from typing import Any

import mcp_types as types
from temporalio.client import WorkflowUpdateFailedError, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.service import RPCError, RPCStatusCode

from orchestrator.client import ConversationEndedError, InvalidMessageError
from orchestrator.models import PendingApproval, ToolRoute, TurnResult
from shared.caller import innermost_message
from shared.log import get_logger

log = get_logger("mcp")

ASK_AGENT = "ask_agent"

ASK_AGENT_TOOL = types.Tool(
    name=ASK_AGENT,
    title="Ask the agent",
    description=(
        "Ask the platform's agent: it runs one whole conversation turn (model steps and tool "
        "calls, durably on Temporal) and answers. Pass the returned conversation_id again to "
        "continue the same conversation; omit it to start a new one."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "message": {"type": "string", "minLength": 1, "description": "What to ask."},
            "conversation_id": {
                "type": "string",
                "description": "A conversation to continue (from an earlier ask_agent result).",
            },
        },
        "required": ["message"],
        "additionalProperties": False,
    },
    output_schema={
        "type": "object",
        "properties": {
            "conversation_id": {"type": "string"},
            "answer": {"type": "string"},
            "ok": {"type": "boolean"},
            "error": {"type": ["string", "null"]},
            "tool_calls": {"type": "array", "items": {"type": "object"}},
        },
        "required": ["conversation_id", "answer", "ok"],
    },
)


def waiting_message(conversation_id: str, pending: PendingApproval) -> str:
    who = ", ".join(pending.approvers) if pending.approvers else "anyone"
    return (
        f"waiting for approval: {pending.tool} on {pending.service} ({pending.reason}; {who} "
        f"may decide; expires {pending.expires_at}) · run `agent approve {conversation_id} "
        f"{pending.call_id}` (or `agent deny …`), or decide it in the web chat"
    )


def mcp_tool(route: ToolRoute) -> types.Tool:
    """A discovered tool as MCP lists it: its name for the model, real schema and description."""
    spec = route.spec
    description = spec.description
    if route.model_name != spec.name:
        description = f"[{spec.service}] {description}"
    policy = spec.approval
    if policy.gated:
        approvers = ", ".join(policy.approvers) or "anyone"
        when = (
            "always"
            if policy.mode == "always"
            else "when " + " or ".join(c.describe() for c in policy.conditions)
        )
        description += f" (Needs a person's approval {when}; decided by {approvers}.)"
    return types.Tool(
        name=route.model_name,
        description=description,
        input_schema=spec.parameters or {"type": "object", "properties": {}},
    )


def direct_result(conversation_id: str, result: TurnResult) -> types.CallToolResult:
    record = result.tool_calls[0] if result.tool_calls else None
    if result.ok and record is not None and record.ok:
        structured = _json_object(result.answer)
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=result.answer)],
            structured_content=structured,
        )
    content = _json_object(result.answer) or {}
    kind = str(content.get("error") or "failed")
    message = str(content.get("message") or result.error or "the call failed")
    text = message if message.startswith(kind) else f"{kind}: {message}"
    return error_result(f"{text} (conversation {conversation_id})")


def ask_result(conversation_id: str, result: TurnResult) -> types.CallToolResult:
    structured = {
        "conversation_id": conversation_id,
        "answer": result.answer,
        "ok": result.ok,
        "error": result.error,
        "tool_calls": [call.model_dump(mode="json") for call in result.tool_calls],
    }
    text = result.answer if result.ok else f"the turn failed: {result.error}"
    text += f"\n\n(conversation_id: {conversation_id})"
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        structured_content=structured,
        is_error=not result.ok,
    )


def error_result(message: str) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=message)], is_error=True
    )


def describe_failure(error: BaseException) -> str:
    """One readable line for anything a call raised."""
    if isinstance(error, WorkflowUpdateFailedError):
        return innermost_message(error)
    if isinstance(error, InvalidMessageError | ConversationEndedError):
        return str(error)
    if isinstance(error, WorkflowUpdateRPCTimeoutOrCancelledError):
        return "the conversation did not answer in time; it keeps working"
    if isinstance(error, RPCError):
        if error.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
            return "unavailable: Temporal is not reachable; try again shortly"
        return f"Temporal refused the request: {_first_line(error)}"
    log.warning("mcp call failed", error=f"{type(error).__name__}: {error}")
    return f"failed: {type(error).__name__}: {_first_line(error)}"


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None
