"""`agent`: start and continue durable conversations from the terminal.

Start-up stays fast: nothing here imports litellm or workflow code; conversations are reached by
workflow and update names through `orchestrator.client`.
"""

from __future__ import annotations

# isort: off
# First: installs the Ctrl-C handler before the slower imports below.
from orchestrator.interrupt import exit_on_interrupt

# isort: on
import io
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Annotated, NoReturn, TypeGuard

import typer
from rich.markup import escape
from temporalio.service import RPCError

from orchestrator import (
    approval_commands,
    conversation_commands,
    mcp_commands,
    trace_commands,
    usage_commands,
)
from orchestrator.approval_commands import (
    announce_approval,
    current_user,
    prompt_for_approval,
)
from orchestrator.chat_loop import chat_loop
from orchestrator.cli_support import (
    GatewayOption,
    JsonOption,
    KeyFileOption,
    ModelOption,
    StreamOption,
    UserOption,
    fail,
    first_line,
    open_conversations,
    run,
    translate,
)
from orchestrator.client import (
    ConversationClient,
    ConversationEndedError,
    check_conversation_id,
    check_message,
    check_user,
)
from orchestrator.key_commands import keys_app
from orchestrator.live import LiveShown, open_feeds, send_streaming
from orchestrator.models import (
    TurnResult,
    model_problem,
)
from orchestrator.render import (
    OFFLINE_NOTICE,
    ApprovalHandler,
    err,
    out,
    print_error,
    print_turn,
    send_with_status,
    turn_json,
)
from orchestrator.store_commands import store_app
from shared.config import ConfigError
from shared.log import configure_logging
from shared.temporal import exit_process

app = typer.Typer(
    name="agent",
    help="Durable LLM agent conversations on Temporal Nexus.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(store_app)
app.add_typer(keys_app)


def _via_gateway(
    url: str | None, key_file: Path | None, model: str | None = None
) -> TypeGuard[str]:
    """Whether the command talks to the gateway (`--gateway`/$AGENT_GATEWAY_URL) instead."""
    if key_file is not None and not url:
        fail("--api-key-file goes with --gateway URL (or AGENT_GATEWAY_URL)")
    if url and model is not None:
        fail("--model is for operators, straight to Temporal: leave out --gateway")
    return bool(url)


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
    user: UserOption = None,
    stream: StreamOption = None,
    gateway: GatewayOption = None,
    api_key_file: KeyFileOption = None,
    model: ModelOption = None,
) -> None:
    """Start a new conversation with one message and print the answer."""
    if _via_gateway(gateway, api_key_file, model):  # imported here: the direct mode does without
        from orchestrator.gateway_client import ask_or_send

        live = _live(stream, as_json)
        ask_or_send(gateway, api_key_file, None, message, as_json=as_json, live=live, user=user)
        return
    _check_and_send(
        _new_conversation_id(),
        message,
        as_json=as_json,
        new=True,
        user=user,
        stream=stream,
        model=model,
    )


@app.command()
def send(
    conversation_id: Annotated[str, typer.Argument(help="Conversation id.")],
    message: Annotated[str, typer.Argument(help="Your message.")],
    as_json: JsonOption = False,
    user: UserOption = None,
    stream: StreamOption = None,
    gateway: GatewayOption = None,
    api_key_file: KeyFileOption = None,
    model: ModelOption = None,
) -> None:
    """Continue a conversation (it is started if it does not exist yet; with --gateway, one
    of yours)."""
    if _via_gateway(gateway, api_key_file, model):
        from orchestrator.gateway_client import ask_or_send

        live = _live(stream, as_json)
        ask_or_send(
            gateway, api_key_file, conversation_id, message, as_json=as_json, live=live, user=user
        )
        return
    _check_and_send(
        conversation_id,
        message,
        as_json=as_json,
        new=False,
        user=user,
        stream=stream,
        model=model,
    )


def _live(stream: bool | None, as_json: bool) -> bool:
    """Show the turn as it happens: asked for, or by default in a terminal (never with --json)."""
    return not as_json and (out.is_terminal if stream is None else stream)


async def _send(
    conversations: ConversationClient,
    conversation_id: str,
    message: str,
    *,
    live: bool,
    on_approval: ApprovalHandler,
    user: str,
) -> tuple[TurnResult, LiveShown]:
    """Send a message; live, its answer streams when the store is in reach (else a status line).
    Returns the result, and what of it was printed as it happened."""
    feeds = open_feeds(conversations) if live else None
    if feeds is None:
        result = await send_with_status(
            conversations, conversation_id, message, live=live, on_approval=on_approval, user=user
        )
        return result, LiveShown()
    try:
        return await send_streaming(
            conversations, feeds, conversation_id, message, on_approval=on_approval, user=user
        )
    finally:
        await feeds.close()


def _check_and_send(
    conversation_id: str,
    message: str,
    *,
    as_json: bool,
    new: bool,
    user: str | None,
    stream: bool | None = None,
    model: str | None = None,
) -> None:
    async def work() -> tuple[TurnResult, LiveShown]:
        # Before connecting: a message the client would refuse needs no server to be refused.
        check_conversation_id(conversation_id)
        check_message(message)
        check_user(user or "")
        problem = model_problem(model)
        if problem:
            fail(f"--model: {problem}")
        direct, _ = await open_conversations()
        conversations = direct.with_model(model)
        # In a terminal, a call that waits for approval is named with the command that decides
        # it; no prompt: `send` may run in a script, and `agent chat` is the interactive way.
        result, shown = await _send(
            conversations,
            conversation_id,
            message,
            live=_live(stream, as_json),
            on_approval=announce_approval(conversation_id),
            user=user or current_user(),
        )
        if not as_json:
            await _announce_model(conversations, conversation_id)
        return result, shown

    result, shown = run(work)
    if as_json:
        print(json.dumps(turn_json(result), ensure_ascii=False))
    else:
        print_turn(result, answer_shown=shown.answer, tools_shown=shown.tools)
        if new:
            err.print(
                f"[dim]conversation {conversation_id} · continue with `agent send "
                f'{conversation_id} "..."`[/]'
            )
    if not result.ok:
        raise typer.Exit(1)


class DirectChat:
    """`agent chat` straight to Temporal and the conversation store."""

    def __init__(self, conversations: ConversationClient, conversation_id: str, user: str) -> None:
        self._conversations = conversations
        self._conversation_id = conversation_id
        self._user = user
        self._decide = prompt_for_approval(conversations, conversation_id, user)

    async def send(self, message: str) -> tuple[TurnResult, LiveShown]:
        return await translate(
            lambda: _send(
                self._conversations,
                self._conversation_id,
                message,
                live=True,
                on_approval=self._decide,
                user=self._user,
            )
        )

    async def end(self) -> str:
        try:
            await self._conversations.end(self._conversation_id)
        except ConversationEndedError as ended:
            return str(ended)
        return "conversation ended"

    async def announce_model(self) -> None:
        await _announce_model(self._conversations, self._conversation_id)

    def waiting_hint(self) -> str:
        return (
            "the turn keeps waiting for approval: see `agent approvals`, "
            f"or `agent cancel {self._conversation_id}`"
        )

    def resume_hint(self) -> str | None:
        return f"resume with `agent chat --conversation {self._conversation_id}`"


@app.command()
def chat(
    conversation: Annotated[
        str | None, typer.Option("--conversation", "-c", help="Resume this conversation.")
    ] = None,
    user: UserOption = None,
    gateway: GatewayOption = None,
    api_key_file: KeyFileOption = None,
) -> None:
    """Interactive, multi-turn chat. Type /exit (or Ctrl-D) to leave; the conversation stays."""
    conversation_id = conversation or _new_conversation_id()
    if isinstance(sys.stdin, io.TextIOWrapper):
        # Invalid UTF-8 typed or piped in becomes lone surrogates instead of a UnicodeDecodeError
        # that would end the chat; check_message then names the bad byte and where it is.
        sys.stdin.reconfigure(errors="surrogateescape")
    if _via_gateway(gateway, api_key_file):
        from orchestrator import gateway_client

        gateway_client.chat(gateway, api_key_file, conversation, user)
        return

    async def work() -> None:
        check_conversation_id(conversation_id)
        check_user(user or "")
        conversations, _ = await open_conversations()
        out.print(f"[bold]conversation[/] {conversation_id}  ·  /exit to leave, /end to close it")
        if conversation:
            turns = await conversations.recent_turns(conversation_id)
            for turn in turns[-3:]:
                out.print(f"[dim]you: {escape(turn.message)}[/]")
                out.print(f"[dim]agent: {escape(turn.answer or turn.error or '')}[/]")
        who = user or current_user()
        await chat_loop(DirectChat(conversations, conversation_id, who))

    run(work)


# After the commands above, so `agent --help` lists conversations first, then approvals.
conversation_commands.register(app)
approval_commands.register(app)
usage_commands.register(app)
trace_commands.register(app)
app.command("mcp")(mcp_commands.mcp)


# ---- entry point ---------------------------------------------------------------------------------
def main() -> NoReturn:
    """The `agent` command: run it, then leave without interpreter finalisation.

    The Temporal core runtime's threads outlive the last client; when the interpreter finalises
    while one of them still holds a Python object, it aborts (`Fatal Python error:
    PyGILState_Release`, exit 134, sometimes a segfault) after the answer was printed, and a
    script would send its message again (see shared.temporal.exit_process).
    """
    exit_on_interrupt()
    # Logs (the SDK's and the core's, forwarded by shared.temporal) go to stderr only: stdout
    # carries answers and --json objects.
    configure_logging(level=os.environ.get("LOG_LEVEL", "WARNING"))
    exit_process(_run_app())


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
        print_error(f"unexpected {type(error).__name__}: {first_line(error)}")
        return 1
    return 0
