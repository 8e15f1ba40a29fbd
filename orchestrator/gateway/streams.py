"""Server-sent events: a conversation's StreamEvents as `id:`/`event:`/`data:` frames.

Each frame's `id:` is the stream cursor after its event, so a client that reconnects with
`Last-Event-ID` (or `?after=`) resumes exactly there. A comment (`: keep-alive`) goes out after
`keepalive` seconds of silence, so proxies do not close an idle stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from temporalio.client import WorkflowUpdateHandle

from orchestrator.events import TURN_END_KINDS, StreamCursor, StreamEvent
from orchestrator.gateway.services import Services
from orchestrator.gateway.turns import answer, send_error
from orchestrator.models import TurnResult
from shared.log import get_logger

log = get_logger("gateway")

KEEPALIVE = ": keep-alive\n\n"
SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: pass events on as they come
}


def frame(event: StreamEvent) -> str:
    data = event.model_dump_json(exclude_none=True)
    return f"id: {event.id}\nevent: {event.kind}\ndata: {data}\n\n"


@dataclass
class _Item:
    """One thing the stream's sources hand the writer."""

    event: StreamEvent | None = None
    result: TurnResult | None = None
    failure: Exception | None = None
    finished: bool = False


async def _pump(
    source: AsyncIterator[StreamEvent],
    queue: asyncio.Queue[_Item],
    first: asyncio.Task[StreamEvent] | None = None,
) -> None:
    """Hand `source`'s events to `queue`; `first`, when given, is its first event, being read
    already."""
    try:
        if first is not None:
            try:
                await queue.put(_Item(event=await first))
            except StopAsyncIteration:
                await queue.put(_Item(finished=True))
                return
        async for event in source:
            await queue.put(_Item(event=event))
    except Exception as error:
        log.warning("stream source failed", error=f"{type(error).__name__}: {error}")
        await queue.put(_Item(failure=error))
        return
    finally:
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
    await queue.put(_Item(finished=True))


async def live(source: AsyncIterator[StreamEvent], keepalive: float) -> AsyncIterator[str]:
    """Every event of `source` as a frame, with keep-alive comments, until the client leaves."""
    queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=1000)
    pump = asyncio.create_task(_pump(source, queue))
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), keepalive)
            except TimeoutError:
                yield KEEPALIVE
                continue
            if item.event is not None:
                yield frame(item.event)
            elif item.failure is not None or item.finished:
                return
    finally:
        await _stop(pump)


async def turn(
    services: Services,
    source: AsyncIterator[StreamEvent],
    accepting: asyncio.Task[WorkflowUpdateHandle[TurnResult]],
    first: asyncio.Task[StreamEvent],
    *,
    conversation_id: str,
    text: str,
    message_id: str,
    user: str,
    after: StreamCursor,
    keepalive: float,
) -> AsyncIterator[str]:
    """One message's turn: the feed's events up to and including the message's answer or error.

    The stream starts as soon as the message is accepted or its turn's first event arrives,
    whichever comes first: the server reports a message accepted only when the workflow task
    that took it completes, and that task runs the turn's first model step, whose tokens are
    already on their way. `first` is the feed's first event, being read. A message refused after
    the stream began ends it with an `error` event saying why. The update's result is awaited
    beside the feed (it also follows the conversation across continue-as-new). A message answered without an answer event in the kept events (a queued
    message answered as the conversation ended, or one answered long before this retry) ends
    the stream with an event made from its result, so the stream never waits for nothing.
    """
    queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=1000)
    pump = asyncio.create_task(_pump(source, queue, first))

    async def result() -> None:
        try:
            handle = await accepting
            outcome = await answer(services, handle, conversation_id, text, message_id, user)
        except Exception as error:
            await queue.put(_Item(failure=error))
            return
        await queue.put(_Item(result=outcome))

    waiter = asyncio.create_task(result())
    position = str(after)
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), keepalive)
            except TimeoutError:
                yield KEEPALIVE
                continue
            if item.event is not None:
                event = item.event
                position = event.id
                yield frame(event)
                if (
                    event.kind in TURN_END_KINDS
                    and event.event is not None
                    and event.event.message_id == message_id
                ):
                    return
            elif item.result is not None:
                if not await _answer_event_coming(services, conversation_id, message_id, after):
                    yield frame(_from_result(item.result, position))
                    return
            elif item.failure is not None:
                yield frame(_from_failure(item.failure, position))
                return
            elif item.finished:
                return
    finally:
        await _stop(pump)
        await _stop(waiter)


async def _answer_event_coming(
    services: Services, conversation_id: str, message_id: str, after: StreamCursor
) -> bool:
    """Whether the conversation's kept turn events hold the message's answer or error at or
    after `after` (then the feed delivers it)."""
    try:
        page = await services.conversations.events(conversation_id, after.events)
    except Exception:
        return False
    return any(
        event.kind in TURN_END_KINDS and event.message_id == message_id for event in page.events
    )


def _from_result(result: TurnResult, position: str) -> StreamEvent:
    if result.ok:
        return StreamEvent(id=position, kind="answer", turn=0, text=result.answer)
    return StreamEvent(id=position, kind="error", turn=0, text=result.error or "the turn failed")


def _from_failure(failure: Exception, position: str) -> StreamEvent:
    """The last event of a stream whose message failed after it was accepted."""
    try:
        message = send_error(failure).message
    except Exception:  # not one the API names: the log has it
        log.warning("message failed", error=f"{type(failure).__name__}: {failure}")
        message = "the message could not be answered; the gateway's log has the details"
    return StreamEvent(id=position, kind="error", turn=0, text=message)


async def _stop(task: asyncio.Task[Any]) -> None:
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
