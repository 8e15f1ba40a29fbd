"""The PostgreSQL conversation store, shared by several orchestrator workers."""

from __future__ import annotations

import asyncio
import weakref
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

# Connections one process keeps open to the store at most, and how long a call waits for one.
POOL_MAX_CONNECTIONS = 10
POOL_WAIT_SECONDS = 10.0


class PostgresStore(ConversationStore):
    """psycopg 3 with a connection pool per event loop.

    Live readers poll the store every 25 ms while a turn streams, and a streaming step writes
    every few tokens: a new connection per call (a backend fork and an authentication each)
    would cost the server more than the queries. A pool belongs to the event loop it was opened
    in, so a store used from several loops (tests, a worker restarted in-process) keeps one each.
    """

    PLACEHOLDER = "%s"

    def __init__(self, url: str, password: str | None = None) -> None:
        self._url = url
        # Passed beside the URL (libpq merges it), never spliced into it: no quoting to get wrong.
        self._connect_args: dict[str, Any] = {"password": password} if password else {}
        self._schema_ready = False
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )

    async def _pool(self) -> Any:
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is None:
            # Imported here: only orchestrators configured for PostgreSQL need it.
            from psycopg_pool import AsyncConnectionPool

            pool = AsyncConnectionPool(
                self._url,
                kwargs={"autocommit": True, **self._connect_args},
                min_size=1,
                max_size=POOL_MAX_CONNECTIONS,
                timeout=POOL_WAIT_SECONDS,
                open=False,
            )
            await pool.open()
            self._pools[loop] = pool
        return pool

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        pool = await self._pool()
        async with pool.connection() as conn:
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
        pool = self._pools.pop(asyncio.get_running_loop(), None)
        if pool is not None:
            await pool.close()

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
