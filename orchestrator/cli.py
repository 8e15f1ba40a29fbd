"""`agent`: start and continue durable conversations from the terminal.

Start-up stays fast: nothing here imports litellm or workflow code; conversations are reached by
workflow and update names through `orchestrator.client`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from temporalio.client import (
    Client,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from orchestrator.client import ConversationClient
from orchestrator.models import ConversationStatus, TurnResult, Usage
from shared.caller import innermost_message
from shared.config import ConfigError, OrchestratorTemporalSettings, load_settings
from shared.temporal import connect

app = typer.Typer(
    name="agent",
    help="Durable LLM agent conversations on Temporal Nexus.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)
T = TypeVar("T")

OFFLINE_NOTICE = (
    "[yellow]Offline model:[/] a deterministic keyword router built into this project, "
    "[bold]not an LLM[/]. Set LLM_MODEL and a provider key (e.g. OPENAI_API_KEY) on the "
    "orchestrator worker for a real model."
)
UI_ADDRESS = "http://127.0.0.1:8233"

JsonOption = Annotated[bool, typer.Option("--json", help="Print a JSON object instead of text.")]


class CliError(Exception):
    """A problem to show as one line, with exit code 1."""


# ---- plumbing --------------------------------------------------------------------------------
async def _conversations() -> tuple[ConversationClient, OrchestratorTemporalSettings]:
    settings = load_settings(OrchestratorTemporalSettings)
    try:
        client: Client = await connect(settings)
    except RuntimeError as error:
        reason = "connection refused" if "refused" in str(error).lower() else _first_line(error)
        raise CliError(
            f"cannot reach Temporal at {settings.address} (namespace {settings.namespace}): "
            f"{reason}. Is the stack up? Run `make up`."
        ) from None
    return ConversationClient(client, settings.task_queue), settings


def _run(work: Callable[[], Awaitable[T]]) -> T:
    try:
        return asyncio.run(_translate(work))
    except CliError as error:
        _fail(str(error))
    except ConfigError as error:
        _fail(str(error))
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None


async def _translate(work: Callable[[], Awaitable[T]]) -> T:
    """Turn SDK errors into one readable line each."""
    try:
        return await work()
    except WorkflowUpdateFailedError as error:
        raise CliError(innermost_message(error)) from None
    except WorkflowUpdateRPCTimeoutOrCancelledError:
        raise CliError(
            "the conversation did not answer in time; it keeps working — "
            "check `agent history ID` later"
        ) from None
    except WorkflowAlreadyStartedError as error:
        raise CliError(f"conversation {error.workflow_id} has ended; start a new one") from None
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise CliError(f"no such conversation ({_first_line(error)})") from None
        raise CliError(f"Temporal refused the request: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _fail(message: str) -> NoReturn:
    err.print(f"[red]error:[/] {escape(message)}")
    raise typer.Exit(1)


def _check_message(message: str) -> str:
    if not message.strip():
        raise CliError("the message is empty")
    return message


def _new_conversation_id() -> str:
    return f"conv-{uuid.uuid4().hex[:12]}"


# ---- rendering ---------------------------------------------------------------------------------
def _turn_json(result: TurnResult) -> dict[str, Any]:
    payload = result.model_dump(
        mode="json", include={"conversation_id", "answer", "tool_calls", "usage"}
    )
    if not result.ok:
        payload["error"] = result.error
    if result.notes:
        payload["notes"] = result.notes
    return payload


def _print_turn(result: TurnResult) -> None:
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
                escape(_compact(call.args)),
                f"{mark} {escape(_compact(call.result, 160))}",
            )
        out.print(table)
    for note in result.notes:
        out.print(f"[dim]note: {escape(note)}[/]")
    if result.ok:
        out.print(f"[bold cyan]agent:[/] {escape(result.answer)}")
    else:
        err.print(f"[red]error:[/] {escape(result.error or 'the turn failed')}")


def _compact(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _describe_status(status: ConversationStatus) -> str:
    if status.state == "running_tools" and status.running:
        running = ", ".join(f"{tool.name} on {tool.service}" for tool in status.running)
        return f"running {running}"
    return {"thinking": "thinking…", "starting": "starting…"}.get(status.state, status.state)


async def _send_with_status(
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
            status_line.update(escape(_describe_status(status)))
    return await task


async def _announce_model(conversations: ConversationClient, conversation_id: str) -> None:
    try:
        status = await conversations.status(conversation_id)
    except RPCError:
        return
    if status.offline_model:
        err.print(OFFLINE_NOTICE)
    if status.unavailable_endpoints:
        err.print(
            "[yellow]tool services unavailable:[/] " + ", ".join(status.unavailable_endpoints)
        )


# ---- commands ----------------------------------------------------------------------------------
@app.command()
def ask(
    message: Annotated[str, typer.Argument(help="Your question.")],
    as_json: JsonOption = False,
) -> None:
    """Start a new conversation with one message and print the answer."""
    _check_and_send(_new_conversation_id(), message, as_json=as_json, new=True)


@app.command()
def send(
    conversation_id: Annotated[str, typer.Argument(help="Conversation id.")],
    message: Annotated[str, typer.Argument(help="Your message.")],
    as_json: JsonOption = False,
) -> None:
    """Continue a conversation (it is started if it does not exist yet)."""
    _check_and_send(conversation_id, message, as_json=as_json, new=False)


def _check_and_send(conversation_id: str, message: str, *, as_json: bool, new: bool) -> None:
    async def work() -> TurnResult:
        _check_message(message)
        conversations, _ = await _conversations()
        result = await _send_with_status(
            conversations, conversation_id, message, live=not as_json and out.is_terminal
        )
        if not as_json:
            await _announce_model(conversations, conversation_id)
        return result

    result = _run(work)
    if as_json:
        print(json.dumps(_turn_json(result), ensure_ascii=False))
    else:
        _print_turn(result)
        if new:
            err.print(
                f"[dim]conversation {conversation_id} · continue with `agent send "
                f'{conversation_id} "..."`[/]'
            )
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def chat(
    conversation: Annotated[
        str | None, typer.Option("--conversation", "-c", help="Resume this conversation.")
    ] = None,
) -> None:
    """Interactive, multi-turn chat. Type /exit (or Ctrl-D) to leave; the conversation stays."""
    conversation_id = conversation or _new_conversation_id()

    async def work() -> None:
        conversations, _ = await _conversations()
        out.print(f"[bold]conversation[/] {conversation_id}  ·  /exit to leave, /end to close it")
        if conversation:
            turns = await conversations.recent_turns(conversation_id)
            for turn in turns[-3:]:
                out.print(f"[dim]you: {escape(turn.message)}[/]")
                out.print(f"[dim]agent: {escape(turn.answer or turn.error or '')}[/]")
        announced = False
        while True:
            try:
                message = await asyncio.to_thread(out.input, "[bold green]you:[/] ")
            except EOFError:
                break
            message = message.strip()
            if not message:
                continue
            if message in ("/exit", "/quit"):
                break
            if message == "/end":
                await conversations.end(conversation_id)
                out.print("conversation ended")
                return
            try:
                result = await _translate(
                    lambda m=message: _send_with_status(  # type: ignore[misc]
                        conversations, conversation_id, m, live=True
                    )
                )
            except CliError as error:
                err.print(f"[red]error:[/] {escape(str(error))}")
                continue
            if not announced:
                await _announce_model(conversations, conversation_id)
                announced = True
            _print_turn(result)
        out.print(f"[dim]resume with `agent chat --conversation {conversation_id}`[/]")

    _run(work)


@app.command()
def history(
    conversation_id: Annotated[str, typer.Argument(help="Conversation id.")],
    as_json: JsonOption = False,
) -> None:
    """Show a conversation's turns, tool calls and usage."""

    async def work() -> list[TurnResult]:
        conversations, _ = await _conversations()
        return await conversations.turns(conversation_id)

    turns = _run(work)
    usage = Usage()
    for turn in turns:
        usage = usage.add(turn.usage)
    if as_json:
        payload = {
            "conversation_id": conversation_id,
            "answer": turns[-1].answer if turns else "",
            "tool_calls": [
                call.model_dump(mode="json") for turn in turns for call in turn.tool_calls
            ],
            "usage": usage.model_dump(mode="json"),
            "turns": [{"message": t.message, **_turn_json(t)} for t in turns],
        }
        print(json.dumps(payload, ensure_ascii=False))
        return
    if not turns:
        out.print(f"conversation {conversation_id} has no messages yet")
    for index, turn in enumerate(turns, start=1):
        out.rule(f"turn {index}")
        out.print(f"[bold green]you:[/] {escape(turn.message)}")
        _print_turn(turn)
    out.print(
        f"[dim]usage: {usage.prompt_tokens} prompt + {usage.completion_tokens} completion "
        f"tokens, ${usage.cost_usd:.4f}[/]"
    )


@app.command()
def end(conversation_id: Annotated[str, typer.Argument(help="Conversation id.")]) -> None:
    """Close a conversation. Its history stays readable."""

    async def work() -> Usage:
        conversations, _ = await _conversations()
        return await conversations.end(conversation_id)

    usage = _run(work)
    out.print(
        f"conversation {conversation_id} ended · {usage.prompt_tokens + usage.completion_tokens} "
        f"tokens, ${usage.cost_usd:.4f}"
    )


@app.command("list")
def list_conversations(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many to show.")] = 20,
) -> None:
    """Recent conversations, newest first."""

    async def work() -> list[tuple[str, str, str]]:
        conversations, _ = await _conversations()
        return [row async for row in conversations.list(limit)]

    rows = _run(work)
    if not rows:
        out.print('no conversations yet: try `agent ask "What is my IP address?"`')
        return
    table = Table("conversation", "status", "started")
    for row in rows:
        table.add_row(*row)
    out.print(table)


def main() -> None:
    try:
        app()
    except ConfigError as error:  # settings read before a command runs
        err.print(f"[red]error:[/] {escape(str(error))}")
        sys.exit(1)
