"""One live, resumable stream per conversation, shared by every reader (gateway, CLI).

A feed merges a conversation's two ordered sources (orchestrator.events): turn events, read with
the workflow's `events` query, and token chunks, read from the conversation store. One poller per
conversation does the reading, however many readers follow it; each reader filters the merged
log by its own cursor, so it sees each source in order, from where it left off, once.

Order across the sources follows the turn: a step's tokens come after its `model_step_started`
and before its tool calls and answer, when both are read in the same poll. They may not be: while
a model step runs inside the workflow task (a local activity), the server holds queries until the
task completes, so a step's tokens can arrive before the events announcing it. Every event names
its turn and step, which is what readers place it by.

Polling is fast while a turn runs (tokens every 25 ms, events every 100 ms) and slow when the
conversation is idle; a reader waiting for a message's answer keeps it fast.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from temporalio.client import WorkflowQueryFailedError, WorkflowQueryRejectedError
from temporalio.service import RPCError

from orchestrator.client import ConversationClient
from orchestrator.events import (
    TOKEN_CURSOR_START,
    TURN_END_KINDS,
    StreamCursor,
    StreamEvent,
    TokenChunk,
    TurnEvent,
)
from orchestrator.store import ConversationStore
from shared.log import get_logger

log = get_logger(__name__)

TOKEN_POLL_ACTIVE = 0.025
EVENT_POLL_ACTIVE = 0.1
POLL_IDLE = 1.0
# A feed nobody follows stops after this long.
FEED_IDLE_SECONDS = 30.0
# Entries a feed keeps for readers that join late or come back (older ones are dropped).
LOG_KEPT = 5000
# How long `cursor`, and a feed's first read, wait for the events query (held while a step runs).
CURSOR_QUERY_WAIT = 1.0
# A new feed waits this long for its first events read (an idle conversation answers at once)
# before its tokens flow: a held query must not hold back the first token.
FIRST_READ_WAIT = 0.05
# A cursor's turn-event position meaning "the events that exist when the feed first reads".
LATEST_EVENTS = -1
# After a turn ends, the feed stays fast this long (a follow-up message is likely).
ACTIVE_AFTER_TURN = 3.0

_RANK = {"turn_started": 0, "model_step_started": 1}
_TOKEN_RANK = 2
_LATER_RANK = 3


@dataclass
class _Entry:
    """One merged event: a turn event (by offset) or a token chunk (by position)."""

    turn: int
    step: int
    rank: int
    event: TurnEvent | None = None
    chunk: TokenChunk | None = None

    @property
    def order(self) -> tuple[int, int, int, tuple[int, ...]]:
        position: tuple[int, ...] = (
            (self.event.offset,) if self.event is not None else self._chunk_position
        )
        return (self.turn, self.step, self.rank, position)

    @property
    def _chunk_position(self) -> tuple[int, int, int]:
        assert self.chunk is not None
        return (self.chunk.reply_seq, self.chunk.attempt, self.chunk.index)


@dataclass
class _Feed:
    conversation_id: str
    log: list[_Entry] = field(default_factory=list)
    first_index: int = 0  # the global index of log[0]
    events_next: int = 0  # the next turn-event offset to read
    tokens_last: tuple[int, int, int] = TOKEN_CURSOR_START
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    readers: int = 0
    urgent: int = 0  # readers waiting for an answer: poll fast
    active_until: float = 0.0
    task: asyncio.Task[None] | None = None
    loaded: asyncio.Event = field(default_factory=asyncio.Event)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    first_events_next: int = -1  # events_next after the feed's first events read (-1: not yet)

    def append(self, entries: list[_Entry]) -> None:
        if not entries:
            return
        self.log.extend(sorted(entries, key=lambda e: e.order))
        if len(self.log) > LOG_KEPT:
            dropped = len(self.log) - LOG_KEPT
            del self.log[:dropped]
            self.first_index += dropped
        self.changed.set()
        self.changed = asyncio.Event()

    @property
    def end_index(self) -> int:
        return self.first_index + len(self.log)


class ConversationFeeds:
    """The feeds of every conversation being followed in this process."""

    def __init__(self, conversations: ConversationClient, store: ConversationStore) -> None:
        self._conversations = conversations
        self._store = store
        self._feeds: dict[str, _Feed] = {}

    async def cursor(self, conversation_id: str) -> StreamCursor:
        """The position at the end of the stream now: following from here shows what comes next.

        The token position is read from the store and is exact. The events query is held by the
        server while a model step runs: after CURSOR_QUERY_WAIT the position says "the turn
        events that exist when this process first reads them" (LATEST_EVENTS), which `subscribe`
        resolves; nothing after it is lost.
        """
        last = await self._store.last_token(conversation_id)
        events = LATEST_EVENTS
        with contextlib.suppress(
            RPCError, WorkflowQueryFailedError, WorkflowQueryRejectedError, TimeoutError
        ):
            page = await asyncio.wait_for(
                self._conversations.events(conversation_id, after=2**62), CURSOR_QUERY_WAIT
            )
            events = page.next_offset
        return StreamCursor(events=events, tokens=last or TOKEN_CURSOR_START)

    async def message_cursor(self, conversation_id: str) -> StreamCursor:
        """Where a message about to be sent is followed from (with `until_message_id`): its turn
        events whenever they were published (the feed picks them by message id, so a message
        sent again replays its turn), and the tokens streamed from now on."""
        last = await self._store.last_token(conversation_id)
        return StreamCursor(events=0, tokens=last or TOKEN_CURSOR_START)

    async def subscribe(
        self,
        conversation_id: str,
        after: StreamCursor,
        *,
        until_message_id: str | None = None,
    ) -> AsyncGenerator[StreamEvent, None]:
        """Every event after `after`, live. With `until_message_id`, only that message's turn
        events (and the tokens after `after`), ending with its answer or error."""
        feed = self._feed(conversation_id)
        feed.readers += 1
        if until_message_id:
            feed.urgent += 1
            feed.wake.set()  # poll fast from now on, not after the idle pause
        cursor = after
        # The step whose tokens the reader saw last, and their attempt.
        retry_for: int | None = after.tokens[0] if after.tokens != TOKEN_CURSOR_START else None
        last_attempt = after.tokens[1]
        try:
            await feed.loaded.wait()
            index = feed.first_index
            while True:
                while index < feed.end_index:
                    entry = feed.log[max(index - feed.first_index, 0)]
                    index = max(index, feed.first_index) + 1
                    if entry.event is not None:
                        event = entry.event
                        if cursor.events == LATEST_EVENTS:
                            # "What exists at the first read": the feed knows it by now (turn
                            # events enter its log only from its reads).
                            cursor = cursor.model_copy(update={"events": feed.first_events_next})
                        if event.offset < cursor.events:
                            continue
                        cursor = cursor.model_copy(update={"events": event.offset + 1})
                        if until_message_id is not None and event.message_id != until_message_id:
                            continue  # another message's turn
                        yield StreamEvent(
                            id=str(cursor),
                            kind=event.kind,
                            turn=event.turn,
                            step=event.step,
                            text=event.text,
                            event=event,
                        )
                        if (
                            until_message_id is not None
                            and event.kind in TURN_END_KINDS
                            and event.message_id == until_message_id
                        ):
                            return
                        continue
                    chunk = entry.chunk
                    assert chunk is not None
                    position = (chunk.reply_seq, chunk.attempt, chunk.index)
                    if position <= cursor.tokens:
                        continue
                    if retry_for == chunk.reply_seq and chunk.attempt > last_attempt:
                        # The step is streaming again after a crash: drop its partial text.
                        yield StreamEvent(
                            id=str(cursor),
                            kind="model_step_retry",
                            turn=chunk.turn,
                            step=chunk.step,
                        )
                    retry_for, last_attempt = chunk.reply_seq, chunk.attempt
                    cursor = cursor.model_copy(update={"tokens": position})
                    if cursor.events == LATEST_EVENTS and feed.first_events_next >= 0:
                        cursor = cursor.model_copy(update={"events": feed.first_events_next})
                    yield StreamEvent(
                        id=str(cursor),
                        kind="token",
                        turn=chunk.turn,
                        step=chunk.step,
                        text=chunk.text,
                    )
                await feed.changed.wait()
        finally:
            feed.readers -= 1
            feed.urgent -= 1 if until_message_id else 0

    def _feed(self, conversation_id: str) -> _Feed:
        feed = self._feeds.get(conversation_id)
        if feed is None or feed.task is None or feed.task.done():
            feed = _Feed(conversation_id)
            feed.task = asyncio.create_task(self._poll(feed), name=f"feed {conversation_id}")
            self._feeds[conversation_id] = feed
        return feed

    async def close(self) -> None:
        tasks = [feed.task for feed in self._feeds.values() if feed.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._feeds.clear()

    # ---- the poller ------------------------------------------------------------------------
    async def _poll(self, feed: _Feed) -> None:
        while True:
            try:
                await self._follow(feed)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("conversation feed poll failed", conversation_id=feed.conversation_id)
                feed.loaded.set()
                await asyncio.sleep(POLL_IDLE)

    async def _follow(self, feed: _Feed) -> None:
        """Read both sources into the feed until nobody has followed it for a while."""
        loop = asyncio.get_running_loop()
        idle_since = loop.time()
        next_events = 0.0
        # The events query runs beside the token reads: the server holds it while a model step
        # runs in the workflow task, and the step's tokens must flow meanwhile.
        reading: asyncio.Task[list[_Entry]] | None = None
        try:
            while True:
                now = loop.time()
                fast = feed.urgent > 0 or now < feed.active_until
                if reading is None and now >= next_events:
                    reading = asyncio.create_task(self._read_events(feed))
                    if feed.first_events_next < 0:
                        # The first read: wait for it briefly (it is held while a step runs,
                        # and the step's tokens must flow meanwhile).
                        await asyncio.wait({reading}, timeout=FIRST_READ_WAIT)
                entries: list[_Entry] = []
                if reading is not None and reading.done():
                    entries += reading.result()
                    reading = None
                    if feed.first_events_next < 0:
                        feed.first_events_next = feed.events_next
                    next_events = now + (EVENT_POLL_ACTIVE if fast else POLL_IDLE)
                # Tokens after events: a step whose end the events show has all its tokens
                # stored already.
                entries += await self._read_tokens(feed)
                if entries:
                    feed.active_until = loop.time() + ACTIVE_AFTER_TURN
                feed.append(entries)
                feed.loaded.set()
                if feed.readers > 0:
                    idle_since = loop.time()
                elif loop.time() - idle_since > FEED_IDLE_SECONDS:
                    self._feeds.pop(feed.conversation_id, None)
                    return
                fast = feed.urgent > 0 or loop.time() < feed.active_until
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        feed.wake.wait(), TOKEN_POLL_ACTIVE if fast else POLL_IDLE / 4
                    )
                if feed.wake.is_set():  # a reader waits for an answer: read events now too
                    feed.wake.clear()
                    next_events = 0.0
        finally:
            if reading is not None:
                reading.cancel()

    async def _read_events(self, feed: _Feed) -> list[_Entry]:
        entries: list[_Entry] = []
        while True:
            try:
                page = await self._conversations.events(feed.conversation_id, feed.events_next)
            except (RPCError, WorkflowQueryFailedError, WorkflowQueryRejectedError) as err:
                # Not started yet, between runs, or its worker is away: try again next poll.
                log.debug("events query failed", error=str(err))
                return entries
            for event in page.events:
                rank = _RANK.get(event.kind, _LATER_RANK)
                entries.append(_Entry(turn=event.turn, step=event.step, rank=rank, event=event))
            advanced = page.next_offset > feed.events_next
            feed.events_next = page.next_offset
            if not page.events or not advanced:
                return entries

    async def _read_tokens(self, feed: _Feed) -> list[_Entry]:
        entries: list[_Entry] = []
        while True:
            try:
                chunks = await self._store.tokens_after(feed.conversation_id, feed.tokens_last)
            except Exception as err:  # a store hiccup: tokens are a courtesy, events still flow
                log.warning("cannot read streamed tokens", error=str(err))
                return entries
            for chunk in chunks:
                entries.append(
                    _Entry(turn=chunk.turn, step=chunk.step, rank=_TOKEN_RANK, chunk=chunk)
                )
                feed.tokens_last = (chunk.reply_seq, chunk.attempt, chunk.index)
            if len(chunks) < 500:
                return entries
