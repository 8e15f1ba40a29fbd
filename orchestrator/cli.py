"""`agent`: start and continue durable conversations from the terminal.

Start-up stays fast: nothing here imports litellm or workflow code; conversations are reached by
workflow and update names through `orchestrator.client`.
"""

# The interrupt handler below is installed before the slower imports (about a second), so that
# section has to come first.
# ruff: noqa: E402

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import Any

try:
    import termios
except ImportError:  # not a POSIX terminal: nothing to restore
    termios = None  # type: ignore[assignment]

INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, what shells report for a Ctrl-C'd command
_terminal_settings: list[Any] | None = None


def _exit_interrupted(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C: say "interrupted" and leave at once with 130, wherever the program was.

    Leaving through KeyboardInterrupt is not reliable here: asyncio waits for the thread reading a
    `chat` line before it lets go, the SDK turns the cancelled update into "did not answer in
    time", and the Temporal core's threads can abort interpreter finalisation. Nothing is lost by
    leaving: the conversation is durable, and a message already sent is answered and kept.
    """
    try:
        sys.stdout.flush()  # what was already printed (an answer) still reaches a pipe
    except Exception:  # interrupted in the middle of a write to the same stream
        pass
    if termios is not None and _terminal_settings is not None:
        try:  # a chat line being read left the terminal without echo
            termios.tcsetattr(0, termios.TCSADRAIN, _terminal_settings)
        except (OSError, termios.error):
            pass
    if os.isatty(1):
        os.write(1, b"\x1b[?25h\n")  # rich's status spinner hides the cursor; show it again
    os.write(2, b"interrupted\n")
    os._exit(INTERRUPTED_EXIT_CODE)


def _exit_on_interrupt() -> None:
    global _terminal_settings
    if termios is not None and _terminal_settings is None and os.isatty(0):
        try:
            _terminal_settings = termios.tcgetattr(0)
        except termios.error:
            pass
    signal.signal(signal.SIGINT, _exit_interrupted)


# Only when this process is the `agent` command: a program that imports this module (the demo)
# keeps its own Ctrl-C handling until it calls main().
if os.path.basename(sys.argv[0]) == "agent":
    _exit_on_interrupt()

import asyncio
import io
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import typer
from rich.markup import escape
from rich.table import Table
from temporalio.client import (
    Client,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from orchestrator.client import (
    ConversationClient,
    ConversationEndedError,
    InvalidMessageError,
    check_conversation_id,
    check_message,
)
from orchestrator.config import OrchestratorSettings
from orchestrator.models import ConversationStatus, TurnResult, Usage
from orchestrator.render import (
    OFFLINE_NOTICE,
    err,
    out,
    print_error,
    print_turn,
    printable,
    send_with_status,
    turn_json,
)
from orchestrator.store_backup import (
    StoreBackupError,
    StoreCounts,
    backup_store,
    restore_store,
    sqlite_store_path,
)
from shared.caller import innermost_message
from shared.config import ConfigError, OrchestratorTemporalSettings, load_settings
from shared.log import configure_logging
from shared.temporal import connect

app = typer.Typer(
    name="agent",
    help="Durable LLM agent conversations on Temporal Nexus.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
store_app = typer.Typer(
    name="store",
    help="Back up and restore the SQLite conversation store (ORCHESTRATOR_STORE_URL).",
    no_args_is_help=True,
)
app.add_typer(store_app)
T = TypeVar("T")

JsonOption = Annotated[bool, typer.Option("--json", help="Print a JSON object instead of text.")]


class CliError(Exception):
    """A problem to show as one line, with exit code 1."""


# ---- plumbing --------------------------------------------------------------------------------
async def open_conversations() -> tuple[ConversationClient, OrchestratorTemporalSettings]:
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
    except (CliError, ConfigError) as error:
        _fail(str(error))


async def _translate(work: Callable[[], Awaitable[T]]) -> T:
    """Turn SDK errors into one readable line each."""
    try:
        return await work()
    except (InvalidMessageError, ConversationEndedError) as error:
        raise CliError(str(error)) from None
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
    print_error(message)
    raise typer.Exit(1)


def _new_conversation_id() -> str:
    return f"conv-{uuid.uuid4().hex[:12]}"


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
        # Before connecting: a message the client would refuse needs no server to be refused.
        check_conversation_id(conversation_id)
        check_message(message)
        conversations, _ = await open_conversations()
        result = await send_with_status(
            conversations, conversation_id, message, live=not as_json and out.is_terminal
        )
        if not as_json:
            await _announce_model(conversations, conversation_id)
        return result

    result = _run(work)
    if as_json:
        print(json.dumps(turn_json(result), ensure_ascii=False))
    else:
        print_turn(result)
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
    if isinstance(sys.stdin, io.TextIOWrapper):
        # Invalid UTF-8 typed or piped in becomes lone surrogates instead of a UnicodeDecodeError
        # that would end the chat; check_message then names the bad byte and where it is.
        sys.stdin.reconfigure(errors="surrogateescape")

    async def work() -> None:
        check_conversation_id(conversation_id)
        conversations, _ = await open_conversations()
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
            if not message.strip():
                continue
            try:
                check_message(message)  # positions are those of the line as typed
            except InvalidMessageError as error:
                print_error(str(error))
                continue
            message = message.strip()
            if message in ("/exit", "/quit"):
                break
            if message == "/end":
                try:
                    await conversations.end(conversation_id)
                    out.print("conversation ended")
                except ConversationEndedError as ended:
                    out.print(escape(str(ended)))
                return
            try:
                result = await _translate(
                    lambda m=message: send_with_status(  # type: ignore[misc]
                        conversations, conversation_id, m, live=True
                    )
                )
            except CliError as error:
                print_error(str(error))
                continue
            if not announced:
                await _announce_model(conversations, conversation_id)
                announced = True
            print_turn(result)
        out.print(f"[dim]resume with `agent chat --conversation {conversation_id}`[/]")

    _run(work)


@app.command()
def history(
    conversation_id: Annotated[str, typer.Argument(help="Conversation id.")],
    as_json: JsonOption = False,
) -> None:
    """Show a conversation's turns, tool calls and usage."""

    async def work() -> list[TurnResult]:
        check_conversation_id(conversation_id)
        conversations, _ = await open_conversations()
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
            "turns": [{"message": t.message, **turn_json(t)} for t in turns],
        }
        print(json.dumps(payload, ensure_ascii=False))
        return
    if not turns:
        out.print(f"conversation {conversation_id} has no messages yet")
    for index, turn in enumerate(turns, start=1):
        out.rule(f"turn {index}")
        out.print(f"[bold green]you:[/] {escape(turn.message)}")
        print_turn(turn)
    out.print(
        f"[dim]usage: {usage.prompt_tokens} prompt + {usage.completion_tokens} completion "
        f"tokens, ${usage.cost_usd:.4f}[/]"
    )


@app.command()
def end(conversation_id: Annotated[str, typer.Argument(help="Conversation id.")]) -> None:
    """Close a conversation. Its history stays readable. Ending it again is not an error."""

    async def work() -> tuple[Usage | None, bool]:
        check_conversation_id(conversation_id)
        conversations, _ = await open_conversations()
        try:
            return await conversations.end(conversation_id), False
        except ConversationEndedError as ended:
            return ended.usage, True

    usage, already = _run(work)
    # Exit 0 when it had already ended, like `rm -f` or `systemctl stop`: the state asked for
    # holds, and a script that retries `end` after a timeout (the first one may have landed)
    # must not see a failure. An unknown id is still an error (exit 1).
    verb = "has already ended" if already else "ended"
    totals = (
        f" · {usage.prompt_tokens + usage.completion_tokens} tokens, ${usage.cost_usd:.4f}"
        if usage is not None
        else ""
    )
    out.print(f"conversation {conversation_id} {verb}{totals}")


@app.command()
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

    status = _run(work)
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


@app.command("list")
def list_conversations(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many to show.")] = 20,
) -> None:
    """Recent conversations, newest first."""

    async def work() -> list[tuple[str, str, str]]:
        conversations, _ = await open_conversations()
        return [row async for row in conversations.list(limit)]

    rows = _run(work)
    if not rows:
        out.print('no conversations yet: try `agent ask "What is my IP address?"`')
        return
    table = Table("conversation", "status", "started")
    for row in rows:
        table.add_row(*row)
    out.print(table)


# ---- store ---------------------------------------------------------------------------------------
BackupPath = Annotated[Path, typer.Argument(help="Backup file.", dir_okay=False)]


@store_app.command("backup")
def store_backup(path: BackupPath) -> None:
    """Copy the live store to PATH (mode 0600), safely while the orchestrator worker runs."""
    store_url = _store_url()
    try:
        counts = backup_store(store_url, path)
    except StoreBackupError as error:
        _fail(str(error))
    _report_copy("backed up", counts, sqlite_store_path(store_url), path, "to")


@store_app.command("restore")
def store_restore(path: BackupPath) -> None:
    """Replace the live store's content with the backup at PATH (the worker may keep running)."""
    store_url = _store_url()
    try:
        counts = restore_store(store_url, path)
    except StoreBackupError as error:
        _fail(str(error))
    _report_copy("restored", counts, path, sqlite_store_path(store_url), "into")


def _store_url() -> str:
    try:
        return load_settings(OrchestratorSettings).store_url
    except ConfigError as error:
        _fail(str(error))


def _report_copy(verb: str, counts: StoreCounts, source: Path, target: Path, word: str) -> None:
    out.print(
        escape(printable(f"{verb} {counts.describe()} from {source} {word} {target}")),
        soft_wrap=True,
    )


# ---- entry point ---------------------------------------------------------------------------------
def main() -> NoReturn:
    """The `agent` command: run it, then leave without interpreter finalisation.

    The Temporal core runtime's threads outlive the last client; when the interpreter finalises
    while one of them still holds a Python object, it aborts (`Fatal Python error:
    PyGILState_Release`, exit 134, sometimes a segfault) after the answer was printed, and a
    script would send its message again. The SDK has no way to stop that runtime, so the command
    flushes its output and ends the process with the command's exit code via os._exit.
    """
    _exit_on_interrupt()
    # Logs (the SDK's and the core's, forwarded by shared.temporal) go to stderr only: stdout
    # carries answers and --json objects.
    configure_logging(level=os.environ.get("LOG_LEVEL", "WARNING"))
    code = _run_app()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed pipe: nothing more can be told to the reader
            pass
    os._exit(code)


def _run_app() -> int:
    """Run the typer app and return its exit code (typer and click always leave by SystemExit)."""
    try:
        app()
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            return exit_.code or 0
        print_error(str(exit_.code))
        return 1
    except ConfigError as error:  # settings read before a command runs
        print_error(str(error))
        return 1
    except BrokenPipeError:  # `agent list | head -1`: the reader left; say nothing more
        return 141  # 128 + SIGPIPE, what the shell reports for other tools in that case
    except Exception as error:  # a bug; still one line, never a traceback
        print_error(f"unexpected {type(error).__name__}: {_first_line(error)}")
        return 1
    return 0
