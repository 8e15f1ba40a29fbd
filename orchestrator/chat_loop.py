"""`agent chat`'s loop, once for both ways of reaching a conversation: straight to Temporal and
the store (orchestrator.cli) or through the gateway (orchestrator.gateway_client). Each way is a
`ChatSession`; the loop reads lines, checks them, sends them and prints the turns.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from rich.markup import escape

from orchestrator.cli_support import CliError
from orchestrator.client import InvalidMessageError, check_message
from orchestrator.live import LiveShown
from orchestrator.models import TurnResult
from orchestrator.render import out, print_error, print_turn


class ChatSession(Protocol):
    async def send(self, message: str) -> tuple[TurnResult, LiveShown]:
        """Send one message, printing the turn live; CliError for a message refused. End of
        input at an approval prompt raises EOFError."""

    async def end(self) -> str:
        """End the conversation; what to tell the user."""

    async def announce_model(self) -> None:
        """After the first answer: which model answered (the offline one is announced)."""

    def waiting_hint(self) -> str:
        """When input ends at an approval prompt: where the waiting call can be decided."""

    def resume_hint(self) -> str | None:
        """How to come back to this conversation, if it exists yet."""


async def chat_loop(session: ChatSession) -> None:
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
            out.print(escape(await session.end()))
            return
        try:
            result, shown = await session.send(message)
        except CliError as error:
            print_error(str(error))
            continue
        except EOFError:  # input ended at an approval prompt
            out.print(f"[dim]{escape(session.waiting_hint())}[/]")
            break
        if not announced:
            await session.announce_model()
            announced = True
        print_turn(result, answer_shown=shown.answer, tools_shown=shown.tools)
    hint = session.resume_hint()
    if hint:
        out.print(f"[dim]{escape(hint)}[/]")
