"""The PostgreSQL conversation store, shared by several orchestrator workers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from orchestrator.models import ChatMessage, StoredMessage
from orchestrator.store import (
    SCHEMA,
    ContextRows,
    ConversationStore,
    StepStart,
    Summary,
    message_from_row,
)


class PostgresStore(ConversationStore):
    """psycopg 3, one connection per call: safe across event loops and worker restarts."""

    PLACEHOLDER = "%s"

    def __init__(self, url: str, password: str | None = None) -> None:
        self._url = url
        # Passed beside the URL (libpq merges it), never spliced into it: no quoting to get wrong.
        self._connect_args: dict[str, Any] = {"password": password} if password else {}
        self._schema_ready = False

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        import psycopg  # imported here: only orchestrators configured for PostgreSQL need it

        async with await psycopg.AsyncConnection.connect(
            self._url, autocommit=True, **self._connect_args
        ) as conn:
            if not self._schema_ready:
                for statement in SCHEMA:
                    await conn.execute(statement)
                self._schema_ready = True
            yield conn

    async def _run(self, sql: str, rows: list[tuple[Any, ...]] | tuple[Any, ...] = ()) -> list[Any]:
        async with self._connection() as conn:
            async with conn.cursor() as cursor:
                if isinstance(rows, list):
                    await cursor.executemany(sql, rows)
                    return []
                await cursor.execute(sql, rows)
                return await cursor.fetchall() if cursor.description else []

    async def close(self) -> None:
        return None

    # One connection (and for the writes one transaction) per call instead of one per query.
    async def start_step(
        self,
        conversation_id: str,
        stored_before: int,
        new_messages: list[StoredMessage],
        reply_seq: int,
    ) -> StepStart:
        async with self._connection() as conn, conn.transaction():
            cursor = await conn.execute(
                "SELECT COUNT(*) FROM messages WHERE conversation_id = %s AND seq < %s",
                (conversation_id, stored_before),
            )
            (held,) = await cursor.fetchone()
            if held != stored_before:
                return StepStart(held=int(held), reply=None)
            if new_messages:
                async with conn.cursor() as writer:
                    await writer.executemany(
                        "INSERT INTO messages (conversation_id, seq, body) VALUES (%s, %s, %s) "
                        "ON CONFLICT (conversation_id, seq) DO UPDATE SET body = excluded.body",
                        [
                            (conversation_id, m.seq, m.message.model_dump_json())
                            for m in new_messages
                        ],
                    )
            cursor = await conn.execute(
                "SELECT body FROM messages WHERE conversation_id = %s AND seq = %s",
                (conversation_id, reply_seq),
            )
            row = await cursor.fetchone()
            reply = ChatMessage.model_validate_json(row[0]) if row else None
            return StepStart(held=int(held), reply=reply)

    async def put_reply(self, conversation_id: str, seq: int, reply: ChatMessage) -> ChatMessage:
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO messages (conversation_id, seq, body) VALUES (%s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                (conversation_id, seq, reply.model_dump_json()),
            )
            cursor = await conn.execute(
                "SELECT body FROM messages WHERE conversation_id = %s AND seq = %s",
                (conversation_id, seq),
            )
            row = await cursor.fetchone()
            return ChatMessage.model_validate_json(row[0]) if row else reply

    async def context_rows(self, conversation_id: str) -> ContextRows:
        select = (
            "SELECT seq, body FROM messages WHERE conversation_id = %s AND seq > %s ORDER BY seq"
        )
        async with self._connection() as conn:
            cursor = await conn.execute(select + " LIMIT 1", (conversation_id, -1))
            system = await cursor.fetchall()
            cursor = await conn.execute(
                "SELECT upto_seq, body FROM summaries WHERE conversation_id = %s "
                "ORDER BY upto_seq DESC LIMIT 1",
                (conversation_id,),
            )
            found = await cursor.fetchone()
            summary = Summary(upto_seq=found[0], text=found[1]) if found else None
            cursor = await conn.execute(
                select, (conversation_id, summary.upto_seq if summary else 0)
            )
            recent = await cursor.fetchall()
        return ContextRows(
            system=[message_from_row(seq, body) for seq, body in system],
            summary=summary,
            recent=[message_from_row(seq, body) for seq, body in recent],
        )
