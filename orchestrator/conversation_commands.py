"""`agent history`, `end`, `refresh` and `list`: reading and closing conversations.

Registered on the `agent` app by `orchestrator.cli`, as the approval and usage commands are.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table
from temporalio.client import WorkflowExecutionStatus, WorkflowQueryFailedError
from temporalio.service import RPCError

from orchestrator.approval_commands import pending_json
from orchestrator.cli_support import JsonOption, open_conversations, run
from orchestrator.client import ConversationClient, ConversationEndedError, check_conversation_id
from orchestrator.models import ConversationStatus, PendingApproval, TurnResult, Usage
from orchestrator.render import (
    call_json,
    describe_usage_cost,
    out,
    print_pending,
    print_turn,
    turn_json,
)


async def _pending(
    conversations: ConversationClient, conversation_id: str
) -> list[PendingApproval]:
    """The calls a running conversation waits on; none for an ended one (asking it would replay
    its whole history on a worker for nothing)."""
    handle = conversations.handle(conversation_id)
    try:
        if (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:
            return []
        return (await conversations.status(conversation_id)).pending_approvals
    except (RPCError, WorkflowQueryFailedError):  # a courtesy: the history itself was read
        return []


def history(
    conversation_id: Annotated[str, typer.Argument(help="Conversation id.")],
    as_json: JsonOption = False,
) -> None:
    """Show a conversation's turns, tool calls and usage."""

    async def work() -> tuple[list[TurnResult], list[PendingApproval]]:
        check_conversation_id(conversation_id)
        conversations, _ = await open_conversations()
        turns = await conversations.turns(conversation_id)
        return turns, await _pending(conversations, conversation_id)

    turns, pending = run(work)
    usage = Usage()
    for turn in turns:
        usage = usage.add(turn.usage)
    if as_json:
        payload = {
            "conversation_id": conversation_id,
            "answer": turns[-1].answer if turns else "",
            "tool_calls": [call_json(call) for turn in turns for call in turn.tool_calls],
            "usage": usage.model_dump(mode="json"),
            "turns": [{"message": t.message, **turn_json(t)} for t in turns],
            "pending_approvals": [pending_json(conversation_id, p) for p in pending],
        }
        print(json.dumps(payload, ensure_ascii=False))
        return
    if not turns and not pending:
        out.print(f"conversation {conversation_id} has no messages yet")
    for index, turn in enumerate(turns, start=1):
        out.rule(f"turn {index}")
        out.print(f"[bold green]you:[/] {escape(turn.message)}")
        print_turn(turn)
    if pending:
        out.rule("waiting for approval")
        for call in pending:
            print_pending(conversation_id, call)
    out.print(
        f"[dim]usage: {usage.prompt_tokens} prompt + {usage.completion_tokens} completion "
        f"tokens, {describe_usage_cost(usage)}[/]"
    )


def end(conversation_id: Annotated[str, typer.Argument(help="Conversation id.")]) -> None:
    """Close a conversation. Its history stays readable. Ending it again is not an error."""

    async def work() -> tuple[Usage | None, bool]:
        check_conversation_id(conversation_id)
        conversations, _ = await open_conversations()
        try:
            return await conversations.end(conversation_id), False
        except ConversationEndedError as ended:
            return ended.usage, True

    usage, already = run(work)
    # Exit 0 when it had already ended, like `rm -f` or `systemctl stop`: the state asked for
    # holds, and a script that retries `end` after a timeout (the first one may have landed)
    # must not see a failure. An unknown id is still an error (exit 1).
    verb = "has already ended" if already else "ended"
    totals = (
        f" · {usage.prompt_tokens + usage.completion_tokens} tokens, {describe_usage_cost(usage)}"
        if usage is not None
        else ""
    )
    out.print(f"conversation {conversation_id} {verb}{totals}")


def refresh(
    conversation_id: Annotated[str, typer.Argument(help="Conversation id.")],
    as_json: JsonOption = False,
) -> None:
    """Discover the conversation's tools again, e.g. after a team deployed new tools or an
    unavailable tool service came back."""

    async def work() -> ConversationStatus:
        check_conversation_id(conversation_id)
        conversations, _ = await open_conversations()
        return await conversations.refresh_tools(conversation_id)

    status = run(work)
    if as_json:
        payload = {
            "conversation_id": conversation_id,
            "tools": status.tools,
            "unavailable_endpoints": status.unavailable_endpoints,
        }
        print(json.dumps(payload, ensure_ascii=False))
        return
    out.print(f"conversation {conversation_id}: {len(status.tools)} tools")
    for tool in status.tools:
        out.print(f"  {escape(tool)}")
    if status.unavailable_endpoints:
        out.print(
            "[yellow]still unavailable:[/] " + escape(", ".join(status.unavailable_endpoints))
        )


def list_conversations(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many to show.")] = 20,
) -> None:
    """Recent conversations, newest first."""

    async def work() -> list[tuple[str, str, str]]:
        conversations, _ = await open_conversations()
        return [row async for row in conversations.list(limit)]

    rows = run(work)
    if not rows:
        out.print('no conversations yet: try `agent ask "What is my IP address?"`')
        return
    table = Table("conversation", "status", "started")
    for row in rows:
        table.add_row(*row)
    out.print(table)


def register(app: typer.Typer) -> None:
    app.command()(history)
    app.command()(end)
    app.command()(refresh)
    app.command("list")(list_conversations)
