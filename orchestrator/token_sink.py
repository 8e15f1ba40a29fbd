"""A model step's streamed reply (`stream_completion`): asked with `stream=True`, its text
deltas go to the conversation store, in order, as they arrive (`TokenSink`), and the reply the
workflow acts on is assembled from the same chunks.

One write is in flight at a time; deltas that arrive meanwhile wait and go in the next write, so
a fast stream costs few writes and a slow one (a token every 20 ms) is written token by token.
Readers (orchestrator.feed) tail the store; nothing of this reaches workflow history.
"""

from __future__ import annotations

import asyncio
from typing import Any

from orchestrator.events import TokenChunk
from orchestrator.models import LlmRequest
from orchestrator.store import ConversationStore
from shared.llm import litellm
from shared.log import get_logger

log = get_logger(__name__)

# Older steps' chunks are pruned now and then, when a step starts (see StreamTokens).
PRUNE_EVERY_SEQ = 16


class TokenSink:
    def __init__(self, store: ConversationStore, request: LlmRequest) -> None:
        self._store = store
        self._request = request
        self._attempt = 0  # claimed with the first chunk (StreamTokens.claim_stream)
        self._waiting: list[str] = []
        self._index = 0
        self._writer: asyncio.Task[None] | None = None
        self._failed = False

    @property
    def started(self) -> bool:
        """Whether any text was handed to readers' way: a stream never mixes two replies."""
        return self._index > 0 or bool(self._waiting)

    def add(self, text: str) -> None:
        # PostgreSQL text cannot hold NUL; a reader is shown the replacement character.
        self._waiting.append(text.replace("\x00", "\ufffd"))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())

    async def flush(self) -> None:
        """Wait until every delta added so far is written (or given up on)."""
        while self._writer is not None and not self._writer.done():
            await self._writer
        if self._waiting:
            await self._write()

    async def _write(self) -> None:
        while self._waiting and not self._failed:
            text, self._waiting = "".join(self._waiting), []
            request = self._request
            chunk = TokenChunk(
                reply_seq=request.reply_seq,
                attempt=self._attempt,
                index=self._index,
                turn=request.turn,
                step=request.step,
                text=text,
            )
            try:
                if self._index == 0:
                    if request.reply_seq % PRUNE_EVERY_SEQ == 0:
                        await self._store.prune_tokens(request.conversation_id, request.reply_seq)
                    self._attempt = await self._store.claim_stream(request.conversation_id, chunk)
                else:
                    await self._store.put_tokens(request.conversation_id, [chunk])
                self._index += 1
            except Exception as err:  # live text is a courtesy: the step's reply is what counts
                self._failed = True
                log.warning(
                    "cannot store streamed tokens; readers get the answer whole", error=str(err)
                )


async def stream_completion(kwargs: dict[str, Any], sink: TokenSink) -> Any:
    """Ask with `stream=True`, hand each text delta to `sink`, and build the whole reply."""
    stream = await litellm.acompletion(
        **kwargs, stream=True, stream_options={"include_usage": True}
    )
    chunks: list[Any] = []
    said_something = False  # text, a tool call, or the provider's token count
    try:
        async for chunk in stream:
            chunks.append(chunk)
            said_something = said_something or bool(getattr(chunk, "usage", None))
            choices = getattr(chunk, "choices", None)
            delta = getattr(choices[0], "delta", None) if choices else None
            said_something = said_something or bool(getattr(delta, "tool_calls", None))
            text = getattr(delta, "content", None)
            if text:
                said_something = True
                sink.add(text)
    finally:
        await sink.flush()
    if not said_something:
        # LiteLLM ends any stream with a finish reason, even a body that was no stream at all:
        # a reply with no text, no call and no token count is malformed. Retryable.
        raise ValueError("the model's streamed reply carried nothing")
    if getattr(stream, "received_finish_reason", "") is None:
        # ...and makes up the finish reason (and the token count) of a stream cut short: only
        # the provider's own says the reply is whole. Retryable: readers are told to start over.
        raise ValueError("the model's streamed reply was cut off before it finished")
    return litellm.stream_chunk_builder(chunks, messages=kwargs["messages"])
