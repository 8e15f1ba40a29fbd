"""The CLI's live view of a turn: the answer printed token by token, tool calls as they run.

Reads the conversation's feed (orchestrator.feed) straight from Temporal and the conversation
store, as an operator's CLI can; when the store is out of reach it does without (the status
line of `send_with_status` instead). The gateway mode (orchestrator.gateway_client) prints the
events of the gateway's SSE stream with the same `TurnPrinter`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass

from rich.markup import escape
from temporalio.client import WorkflowQueryFailedError
from temporalio.service import RPCError

from orchestrator.client import ConversationClient
from orchestrator.config import OrchestratorSettings
from orchestrator.events import StreamEvent
from orchestrator.feed import ConversationFeeds
from orchestrator.models import TurnResult
from orchestrator.render import ApprovalHandler, out
from orchestrator.store import ConversationStore, open_store
from shared.config import ConfigError, load_settings
from shared.log import get_logger

log = get_logger(__name__)

STREAM_FILE_PREFIX = "sqlite:///"


def open_feeds(conversations: ConversationClient) -> ConversationFeeds | None:
    """Feeds over the orchestrator's store, or None when this machine cannot read it (a SQLite
    file that is not here, or settings that do not load)."""
    try:
        settings = load_settings(OrchestratorSettings)
    except ConfigError:
        return None
    url = settings.store_url
    if url.startswith(STREAM_FILE_PREFIX):
        from pathlib import Path

        # The worker's store lives beside it (`make up`: .run/); elsewhere there is none to read.
        if not Path(url.removeprefix(STREAM_FILE_PREFIX)).parent.is_dir():
            return None
    password = settings.store_password.get_secret_value() if settings.store_password else None
    try:
        store: ConversationStore = open_store(url, password)
    except ValueError:
        return None
    return ConversationFeeds(conversations, store)


@dataclass(frozen=True)
class LiveShown:
    """What a live turn put on screen already: the answer's text, every tool call."""

    answer: bool = False
    tools: bool = False


class TurnPrinter:
    """Prints stream events as they come: tokens inline, tool calls on lines of their own.

    Events of a step older than the one whose text is streaming arrive late (the server held
    the events query while the model step ran): they are not printed out of order; the turn's
    summary shows those calls instead (`tools_shown` False)."""

    def __init__(self) -> None:
        self.answer_shown = False  # the answer's text was printed as it streamed
        self.tools_shown = True  # every tool call was shown as it ran
        self._in_text = False
        self._text_key: tuple[int, int] = (0, 0)  # (turn, step) whose text was printed last
        self._text = ""  # what was printed of that step's text

    def end_line(self) -> None:
        """End the answer line being streamed, if any (before a prompt, or the turn's summary)."""
        if self._in_text:
            out.print()
            self._in_text = False

    def finish(self, result: TurnResult) -> LiveShown:
        """End the line being streamed; what of `result` is on screen already."""
        self.end_line()
        # Shown only if what streamed is the whole answer: a stream cut short (its store writes
        # failed, say) leaves the answer to be printed in full.
        whole = self.answer_shown and self._text == result.answer
        return LiveShown(answer=whole and result.ok, tools=self.tools_shown)

    def show(self, event: StreamEvent) -> None:
        turn_event = event.event
        key = (event.turn, event.step)
        if event.kind == "token":
            if not self._in_text or key != self._text_key:
                self.end_line()
                out.print("[bold cyan]agent:[/] ", end="")
                self._in_text, self._text_key, self._text = True, key, ""
            out.print(escape(event.text or ""), end="", soft_wrap=True, highlight=False)
            self._text += event.text or ""
            return
        if event.kind == "model_step_retry":
            self.end_line()
            out.print("[dim](the model step is retried; its answer starts again)[/]")
            self._text_key, self._text = (0, 0), ""
            return
        if event.kind in ("answer", "error"):
            self.end_line()
            # (0, 0): no text streamed (the gateway's own answer event carries no turn).
            streamed = self._text_key != (0, 0) and key == self._text_key
            self.answer_shown = event.kind == "answer" and streamed
            return
        if turn_event is None or event.kind not in ("tool_started", "tool_finished", "compaction"):
            return
        if key < self._text_key:  # late: its step's place on screen has passed
            self.tools_shown = self.tools_shown and event.kind == "compaction"
            return
        self.end_line()
        name = escape(f"{turn_event.service}.{turn_event.tool}")
        if event.kind == "compaction":
            out.print("[dim](older turns were summarised to fit the context window)[/]")
        elif event.kind == "tool_started":
            out.print(f"[dim]→ {name} …[/]")
        elif turn_event.ok:
            out.print(f"[dim]  [green]ok[/] {name}[/]")
        else:
            out.print(f"[dim]  [red]failed[/] {name}: {escape(turn_event.detail or '')}[/]")


async def send_streaming(
    conversations: ConversationClient,
    feeds: ConversationFeeds,
    conversation_id: str,
    message: str,
    *,
    on_approval: ApprovalHandler | None = None,
    user: str = "",
) -> tuple[TurnResult, LiveShown]:
    """Send a message and print its turn live. Returns the result, and what of it was shown."""
    message_id = uuid.uuid4().hex
    start = await feeds.message_cursor(conversation_id)
    printer = TurnPrinter()
    asked: set[str] = set()

    async def follow() -> None:
        async for event in feeds.subscribe(conversation_id, start, until_message_id=message_id):
            printer.show(event)
            if event.kind == "approval_requested" and on_approval is not None:
                printer.end_line()  # a prompt starts on a line of its own
                await _hand_over_approvals(conversations, conversation_id, asked, on_approval)

    sending = asyncio.create_task(
        conversations.send(conversation_id, message, message_id=message_id, user=user)
    )
    following = asyncio.create_task(follow())
    try:
        await asyncio.wait({sending, following}, return_when=asyncio.FIRST_COMPLETED)
        if following.done() and not sending.done() and following.exception() is not None:
            raise following.exception()  # type: ignore[misc]  # e.g. input ended at a prompt
        result = await sending
        # The answer's event follows the update's result within a poll or two.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(following), timeout=2.0)
        return result, printer.finish(result)
    finally:
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await following
        sending.cancel()


async def _hand_over_approvals(
    conversations: ConversationClient,
    conversation_id: str,
    asked: set[str],
    on_approval: ApprovalHandler,
) -> None:
    try:
        status = await conversations.status(conversation_id)
    except (RPCError, WorkflowQueryFailedError):
        return
    for pending in status.pending_approvals:
        if pending.call_id not in asked:
            asked.add(pending.call_id)
            await on_approval(pending)
