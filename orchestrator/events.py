"""What a conversation tells the people watching it, as it happens: an ordered event stream.

Two sources make one stream, and each is ordered and offset-addressed on its own:

- **Turn events** (turn started, model step started, tool started and finished, approvals,
  compaction, the answer, an error) are published by workflow code into the conversation's
  memory. They cost no history: workflow state is rebuilt by replay, so a worker crash loses
  none, and continue-as-new carries the newest of them. Readers page through them with the
  `events` query, from an offset.
- **Token deltas** are written by the model step, as the provider streams them, to the
  conversation store (`stream_tokens`), never to history: a turn of 50 tokens costs the same
  history bytes as before. Each chunk is addressed by (reply seq, attempt, index): a step
  retried after a crash streams again under its next attempt, and readers are told to drop
  the partial text they had (`model_step_retry`).

A reader's position is one `StreamCursor` over both; the gateway's SSE event ids are cursors,
so a client that reconnects with `Last-Event-ID` misses nothing.

Imported by workflow code: no I/O here.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, Field

EVENTS_QUERY = "events"

TurnEventKind = Literal[
    "turn_started",
    "model_step_started",
    "tool_started",
    "tool_finished",
    "approval_requested",
    "approval_decided",
    "compaction",
    "answer",
    "error",
]
StreamEventKind = Literal[TurnEventKind, "token", "model_step_retry"]
TURN_END_KINDS = frozenset({"answer", "error"})

# Turn events a conversation keeps in its memory (a busy turn makes a few dozen); readers further
# behind read the turns themselves from the store.
EVENTS_KEPT = 400
# What continue-as-new carries of them, in bytes of JSON.
EVENTS_CARRIED_BYTES = 128 * 1024
# An event's text (an answer, an error, a message) in full up to this many characters: above the
# longest reply a model step keeps (64,000 characters and a truncation note).
EVENT_TEXT_CHARS = 66_000
EVENTS_PAGE = 200
# One page of events, in characters of text: a query's answer stays far below gRPC's 4 MB.
EVENTS_PAGE_CHARS = 1_000_000


class TurnEvent(BaseModel):
    """One thing that happened in a turn. Fields beyond `kind` are filled as the kind needs."""

    offset: int = Field(description="Position in the conversation's turn events, from 0.")
    kind: TurnEventKind
    turn: int
    at: str = Field(description="When, ISO 8601 UTC (workflow time).")
    message_id: str = ""
    step: int = 0
    reply_seq: int | None = Field(
        default=None, description="model_step_started: where the step's token deltas are kept."
    )
    text: str | None = Field(
        default=None, description="The user's message, the answer, or the error."
    )
    call_id: str | None = None
    tool: str | None = None
    service: str | None = None
    ok: bool | None = Field(default=None, description="tool_finished: whether the call worked.")
    detail: str | None = Field(
        default=None, description="A failed call's error, an approval's reason, a verdict's why."
    )
    verdict: str | None = None
    approver: str | None = None
    args: str | None = Field(default=None, description="approval_requested: the call's arguments.")


class EventsPage(BaseModel):
    events: list[TurnEvent] = Field(default_factory=list)
    next_offset: int = Field(description="The offset to ask for next.")
    oldest_offset: int = Field(description="The oldest event still kept (older ones were dropped).")


class TokenChunk(BaseModel):
    """Token deltas of one model step, as the provider streamed them."""

    reply_seq: int
    attempt: int
    index: int
    turn: int
    step: int
    text: str


TOKEN_CURSOR_START = (-1, 0, 0)
# The turn-event position may be -1: "the events that exist when the feed first reads them"
# (orchestrator.feed.LATEST_EVENTS), in ids sent before that read came back.
_CURSOR = re.compile(r"^(-1|\d+)(?:\.(-?\d+)\.(\d+)\.(\d+))?$")


class StreamCursor(BaseModel):
    """A reader's position: the next turn event it has not seen, and the last token chunk seen."""

    events: int = 0
    tokens: tuple[int, int, int] = TOKEN_CURSOR_START

    def __str__(self) -> str:
        reply_seq, attempt, index = self.tokens
        return f"{self.events}.{reply_seq}.{attempt}.{index}"

    @classmethod
    def parse(cls, text: str) -> StreamCursor:
        """Read a cursor (`Last-Event-ID`); raises ValueError naming what is wrong."""
        match = _CURSOR.match(text.strip())
        if not match or (match.group(2) is None and match.group(1) == "-1"):
            raise ValueError(
                f"not a stream position: {text[:40]!r} (expected an event id such as 12.4.1.30)"
            )
        events, reply_seq, attempt, index = match.groups()
        if reply_seq is None:
            return cls(events=int(events))
        return cls(events=int(events), tokens=(int(reply_seq), int(attempt), int(index)))


class StreamEvent(BaseModel):
    """One event as a reader receives it: a turn event, or a token chunk, at a cursor."""

    id: str = Field(description="The cursor after this event (SSE id, Last-Event-ID).")
    kind: StreamEventKind
    turn: int
    step: int = 0
    text: str | None = None
    event: TurnEvent | None = Field(default=None, description="The turn event, when it is one.")


def publish(events: list[TurnEvent], next_offset: int, event: TurnEvent) -> int:
    """Append `event` (its offset already `next_offset`), drop the oldest beyond EVENTS_KEPT,
    and return the next offset."""
    if event.text is not None and len(event.text) > EVENT_TEXT_CHARS:
        event.text = event.text[:EVENT_TEXT_CHARS] + "…"
    events.append(event)
    if len(events) > EVENTS_KEPT:
        del events[: len(events) - EVENTS_KEPT]
    return next_offset + 1


def page(events: list[TurnEvent], next_offset: int, after: int) -> EventsPage:
    """The kept events from offset `after` on, at most EVENTS_PAGE of them."""
    oldest = events[0].offset if events else next_offset
    position = min(max(after, oldest), next_offset)
    chosen: list[TurnEvent] = []
    size = 0
    for event in events[position - oldest : position - oldest + EVENTS_PAGE]:
        size += len(event.text or "") + len(event.args or "") + 200
        if chosen and size > EVENTS_PAGE_CHARS:
            break
        chosen.append(event)
    return EventsPage(
        events=chosen,
        next_offset=chosen[-1].offset + 1 if chosen else position,
        oldest_offset=oldest,
    )


def carried(events: list[TurnEvent]) -> list[TurnEvent]:
    """The newest events whose JSON fits EVENTS_CARRIED_BYTES, for the next run."""
    kept: list[TurnEvent] = []
    used = 0
    for event in reversed(events):
        used += len(event.model_dump_json().encode())
        if used > EVENTS_CARRIED_BYTES:
            break
        kept.append(event)
    return kept[::-1]
