"""The token deltas of model steps, kept in the conversation store for live readers.

Not history, and not the transcript: a step's reply is stored whole in `messages` when it ends.
Chunks are kept only for the last few steps of a conversation, so a reader that reconnects
mid-step can catch up, and are pruned as later steps start.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from orchestrator.events import TokenChunk

STREAM_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS stream_tokens (
        conversation_id TEXT NOT NULL,
        reply_seq BIGINT NOT NULL,
        attempt INTEGER NOT NULL,
        idx INTEGER NOT NULL,
        turn BIGINT NOT NULL,
        step INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (conversation_id, reply_seq, attempt, idx))""",
]
# Token chunks are kept for steps whose reply number is within this many messages of the newest.
TOKEN_STEPS_KEPT_SEQ = 64
# Executions of one step racing for the next attempt number (an abandoned one still running).
CLAIM_TRIES = 5


class StreamTokens:
    """Token-chunk queries, mixed into ConversationStore (which supplies `_sql`)."""

    @abstractmethod
    async def _sql(
        self, sql: str, rows: list[tuple[Any, ...]] | tuple[Any, ...] = ()
    ) -> list[Any]: ...

    async def put_tokens(self, conversation_id: str, chunks: list[TokenChunk]) -> None:
        """Keep streamed chunks; a chunk already kept (same step, attempt and index) stays."""
        if chunks:
            await self._sql(
                "INSERT INTO stream_tokens (conversation_id, reply_seq, attempt, idx, turn, step, "
                "body) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [
                    (conversation_id, c.reply_seq, c.attempt, c.index, c.turn, c.step, c.text)
                    for c in chunks
                ],
            )

    async def claim_stream(self, conversation_id: str, first: TokenChunk) -> int:
        """Write a step execution's first chunk under the next free attempt number for its
        reply, and return that number. Every execution of a step (a retry, or a re-run on
        another worker after a crash, which Temporal may number as attempt 1 again) streams
        under its own attempt, so no two executions' chunks are ever mixed."""
        for _ in range(CLAIM_TRIES):
            rows = await self._sql(
                "SELECT COALESCE(MAX(attempt), 0) FROM stream_tokens "
                "WHERE conversation_id = ? AND reply_seq = ?",
                (conversation_id, first.reply_seq),
            )
            attempt = int(rows[0][0]) + 1
            claimed = await self._sql(
                "INSERT INTO stream_tokens (conversation_id, reply_seq, attempt, idx, turn, step, "
                "body) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING attempt",
                (
                    conversation_id,
                    first.reply_seq,
                    attempt,
                    first.index,
                    first.turn,
                    first.step,
                    first.text,
                ),
            )
            if claimed:
                return attempt
        raise RuntimeError(f"no free stream attempt for reply {first.reply_seq}")

    async def tokens_after(
        self, conversation_id: str, after: tuple[int, int, int], limit: int = 500
    ) -> list[TokenChunk]:
        """The chunks after position `after` (reply seq, attempt, index), in stream order."""
        reply_seq, attempt, index = after
        rows = await self._sql(
            "SELECT reply_seq, attempt, idx, turn, step, body FROM stream_tokens "
            "WHERE conversation_id = ? AND (reply_seq > ? OR (reply_seq = ? AND "
            "(attempt > ? OR (attempt = ? AND idx > ?)))) "
            "ORDER BY reply_seq, attempt, idx LIMIT ?",
            (conversation_id, reply_seq, reply_seq, attempt, attempt, index, limit),
        )
        return [
            TokenChunk(
                reply_seq=int(r[0]),
                attempt=int(r[1]),
                index=int(r[2]),
                turn=int(r[3]),
                step=int(r[4]),
                text=r[5],
            )
            for r in rows
        ]

    async def last_token(self, conversation_id: str) -> tuple[int, int, int] | None:
        """The position of the newest chunk kept, if any."""
        rows = await self._sql(
            "SELECT reply_seq, attempt, idx FROM stream_tokens WHERE conversation_id = ? "
            "ORDER BY reply_seq DESC, attempt DESC, idx DESC LIMIT 1",
            (conversation_id,),
        )
        return (int(rows[0][0]), int(rows[0][1]), int(rows[0][2])) if rows else None

    async def prune_tokens(self, conversation_id: str, below_reply_seq: int) -> None:
        """Forget the chunks of steps older than `below_reply_seq` minus a margin."""
        await self._sql(
            "DELETE FROM stream_tokens WHERE conversation_id = ? AND reply_seq < ?",
            (conversation_id, below_reply_seq - TOKEN_STEPS_KEPT_SEQ),
        )
