"""How a turn looks in a terminal: shared by the `agent` CLI and `make demo`.

Imports no litellm and no workflow code, so the CLI stays fast to start.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from temporalio.client import WorkflowQueryFailedError
from temporalio.service import RPCError

from orchestrator.client import ConversationClient
from orchestrator.models import (
    ApprovalRecord,
    ConversationStatus,
    PendingApproval,
    ToolCallRecord,
    TurnResult,
    Usage,
)

out = Console()
err = Console(stderr=True)

OFFLINE_NOTICE = (
    "[yellow]Offline model:[/] a deterministic keyword router built into this project, "
    "[bold]not an LLM[/]. Set LLM_MODEL and a provider key (e.g. OPENAI_API_KEY) on the "
    "orchestrator worker for a real model."
)
UI_ADDRESS = "http://127.0.0.1:8233"


def print_error(message: str) -> None:
    """One line on stderr (never wrapped at the console width, line breaks in a server's message
    joined), so a script can grep it."""
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    err.print(f"[red]error:[/] {escape(printable(line))}", soft_wrap=True)


def printable(text: str) -> str:
    """`text` with anything the terminal cannot be sent (a path with invalid UTF-8 bytes, kept
    by Python as lone surrogates) shown as an escape, so printing it cannot fail."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def call_json(call: ToolCallRecord) -> dict[str, Any]:
    """A tool call for `--json`: `approval` only on a call that needed one and `usage` only on a
    team agent's, like `error` and `notes` on a turn, so the shape of a plain call does not
    change."""
    payload = call.model_dump(mode="json", exclude={"approval", "usage"})
    if call.approval is not None:
        payload["approval"] = call.approval.model_dump(mode="json")
    if call.usage is not None:
        payload["usage"] = call.usage.model_dump(mode="json")
    return payload


def turn_json(result: TurnResult) -> dict[str, Any]:
    payload = result.model_dump(mode="json", include={"conversation_id", "answer", "usage"})
    payload["tool_calls"] = [call_json(call) for call in result.tool_calls]
    if not result.ok:
        payload["error"] = result.error
    if result.notes:
        payload["notes"] = result.notes
    if result.cancelled:
        payload["cancelled"] = True
    return payload


def _utc(iso: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


def describe_time(iso: str) -> str:
    """An ISO 8601 time as `HH:MM:SS UTC`, with the date when it is not today."""
    moment = _utc(iso)
    if moment is None:
        return iso
    if moment.date() == datetime.now(UTC).date():
        return moment.strftime("%H:%M:%S UTC")
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def describe_expiry(iso: str) -> str:
    """When a pending call is denied on its own: the time, and how long is left."""
    moment = _utc(iso)
    if moment is None:
        return iso
    left = int((moment - datetime.now(UTC)).total_seconds())
    if left <= 0:
        return f"{describe_time(iso)} (due now)"
    hours, rest = divmod(left, 3600)
    minutes, seconds = divmod(rest, 60)
    span = f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"
    return f"{describe_time(iso)} (in {span})"


def describe_approvers(pending: PendingApproval) -> str:
    return ", ".join(pending.approvers) if pending.approvers else "anyone"


def describe_decision(record: ApprovalRecord) -> str:
    """`approved by alice at 10:02:03 UTC: looks fine` (one line, for a terminal)."""
    verb = "approved" if record.verdict == "approve" else "denied"
    who = "timed out, denied" if record.timed_out else f"{verb} by {record.approver}"
    text = f"{who} at {describe_time(record.decided_at)}"
    if record.reason:
        text += f": {record.reason}"
    return text


def print_pending(conversation_id: str, pending: PendingApproval) -> None:
    """One call waiting for approval, in full: what it would do, why it waits, who may decide."""
    out.print(
        f"[bold yellow]approval needed[/] · {escape(pending.tool)} on {escape(pending.service)} "
        f"[dim](conversation {escape(conversation_id)}, call {escape(pending.call_id)})[/]",
        soft_wrap=True,
    )
    out.print(f"  args:    {escape(compact(pending.args, 400))}", soft_wrap=True)
    out.print(f"  why:     {escape(pending.reason)}", soft_wrap=True)
    out.print(f"  who:     {escape(describe_approvers(pending))}", soft_wrap=True)
    out.print(f"  expires: {escape(describe_expiry(pending.expires_at))}", soft_wrap=True)


def print_turn(
    result: TurnResult, *, answer_shown: bool = False, tools_shown: bool = False
) -> None:
    """Print a turn's calls, notes and answer, leaving out what was shown live already
    (orchestrator.live)."""
    if result.tool_calls and not tools_shown:
        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        table.add_column("tool")
        table.add_column("service")
        table.add_column("args", overflow="fold")
        table.add_column("result", overflow="fold")
        for call in result.tool_calls:
            mark = "[green]ok[/]" if call.ok else "[red]error[/]"
            table.add_row(
                call.name,
                call.service,
                escape(compact(call.args)),
                f"{mark} {escape(compact(call.result, 160))}",
            )
        out.print(table)
    for call in result.tool_calls:
        if call.approval is not None:
            mark = "green" if call.approval.verdict == "approve" else "yellow"
            out.print(
                f"[{mark}]{escape(call.name)}: {escape(describe_decision(call.approval))}[/]",
                soft_wrap=True,
            )
    if result.cancelled:
        out.print("[yellow]the turn was cancelled[/]")
    for note in result.notes:
        out.print(f"[dim]note: {escape(note)}[/]")
    if not result.ok:
        print_error(result.error or "the turn failed")
    elif not answer_shown:
        out.print(f"[bold cyan]agent:[/] {escape(result.answer)}")


def describe_cost(cost_usd: float | None, unpriced_steps: int) -> str:
    """A cost as a person should read it: steps with no known price are counted, never shown
    as $0 (`$0.0123`, `$0.0123 + 2 unpriced steps`, `unpriced (3 steps)`)."""
    if not unpriced_steps:
        return f"${cost_usd or 0.0:.4f}"
    steps = f"{unpriced_steps} unpriced step{'s' if unpriced_steps != 1 else ''}"
    if not cost_usd:
        return f"unpriced ({unpriced_steps} step{'s' if unpriced_steps != 1 else ''})"
    return f"${cost_usd:.4f} + {steps}"


def describe_usage_cost(usage: Usage) -> str:
    return describe_cost(usage.cost_usd, usage.unpriced_steps)


def compact(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_status(status: ConversationStatus) -> str:
    if status.state == "running_tools" and status.running:
        running = ", ".join(f"{tool.name} on {tool.service}" for tool in status.running)
        return f"running {running}"
    if status.state == "awaiting_approval":
        return f"waiting for approval of {len(status.pending_approvals)} call(s)…"
    if status.queued_messages and status.state != "idle":
        return f"{status.state} · {status.queued_messages} message(s) queued…"
    return {"thinking": "thinking…", "starting": "starting…"}.get(status.state, status.state)


# Called once per call that starts waiting for approval while a message is answered, with the
# spinner stopped so it may print and read a line.
ApprovalHandler = Callable[[PendingApproval], Awaitable[None]]


async def send_with_status(
    conversations: ConversationClient,
    conversation_id: str,
    message: str,
    *,
    live: bool,
    on_approval: ApprovalHandler | None = None,
    user: str = "",
) -> TurnResult:
    """Send a message; while it is answered, show which tools run on which service, and hand
    each call that waits for approval to `on_approval` (once per call). `user` is who the
    conversation is for, when this message starts it."""
    task = asyncio.create_task(conversations.send(conversation_id, message, user=user))
    if not live:
        return await task
    seen: set[str] = set()
    try:
        while not task.done():
            waiting = await _spin_until_approval(conversations, conversation_id, task, seen)
            for pending in waiting:
                seen.add(pending.call_id)
                if on_approval is not None:
                    await on_approval(pending)
        return await task
    finally:
        # A handler that gave up (end of input) leaves the turn waiting on the server; the
        # client just stops listening for its answer.
        task.cancel()


async def _spin_until_approval(
    conversations: ConversationClient,
    conversation_id: str,
    task: asyncio.Task[TurnResult],
    seen: set[str],
) -> list[PendingApproval]:
    with out.status("sending…") as status_line:
        while not task.done():
            await asyncio.wait({task}, timeout=0.25)
            if task.done():
                break
            try:
                status = await conversations.status(conversation_id)
            except (RPCError, WorkflowQueryFailedError):
                continue  # not started yet, or between runs
            fresh = [p for p in status.pending_approvals if p.call_id not in seen]
            if fresh:
                return fresh
            status_line.update(escape(describe_status(status)))
    return []
