"""How a turn looks in a terminal: shared by the `agent` CLI and `make demo`.

Imports no litellm and no workflow code, so the CLI stays fast to start.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from temporalio.service import RPCError

from orchestrator.client import ConversationClient
from orchestrator.models import ConversationStatus, TurnResult

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


def turn_json(result: TurnResult) -> dict[str, Any]:
    payload = result.model_dump(
        mode="json", include={"conversation_id", "answer", "tool_calls", "usage"}
    )
    if not result.ok:
        payload["error"] = result.error
    if result.notes:
        payload["notes"] = result.notes
    return payload


def print_turn(result: TurnResult) -> None:
    if result.tool_calls:
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
    for note in result.notes:
        out.print(f"[dim]note: {escape(note)}[/]")
    if result.ok:
        out.print(f"[bold cyan]agent:[/] {escape(result.answer)}")
    else:
        print_error(result.error or "the turn failed")


def compact(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_status(status: ConversationStatus) -> str:
    if status.state == "running_tools" and status.running:
        running = ", ".join(f"{tool.name} on {tool.service}" for tool in status.running)
        return f"running {running}"
    return {"thinking": "thinking…", "starting": "starting…"}.get(status.state, status.state)


async def send_with_status(
    conversations: ConversationClient, conversation_id: str, message: str, *, live: bool
) -> TurnResult:
    """Send a message; while it is answered, show which tools run on which service."""
    task = asyncio.create_task(conversations.send(conversation_id, message))
    if not live:
        return await task
    with out.status("sending…") as status_line:
        while not task.done():
            await asyncio.wait({task}, timeout=0.25)
            if task.done():
                break
            try:
                status = await conversations.status(conversation_id)
            except RPCError:
                continue  # not started yet
            status_line.update(escape(describe_status(status)))
    return await task
