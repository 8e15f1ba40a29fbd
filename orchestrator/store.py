"""The conversation store: the transcript lives here, not in workflow history.

The workflow passes ids, sequence numbers and small deltas; activities append them idempotently
(keyed by conversation id and sequence number, so a retried activity never duplicates a message)
and load what the model needs. One URL picks the backend:

- `sqlite:///path/to/file.db` — the embedded default, one orchestrator worker;
- `postgresql://user:pass@host:5432/db` — shared by several orchestrator workers.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from orchestrator.models import ChatMessage, StoredMessage, TurnResult

T = TypeVar("T")

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS messages (
        conversation_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (conversation_id, seq))""",
    """CREATE TABLE IF NOT EXISTS summaries (
        conversation_id TEXT NOT NULL,
        upto_seq BIGINT NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (conversation_id, upto_seq))""",
    """CREATE TABLE IF NOT EXISTS turns (
        conversation_id TEXT NOT NULL,
        turn BIGINT NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (conversation_id, turn))""",
    # The tool lists conversations send their model, by content digest: a model step names its
    # list instead of carrying ~6 KB of schemas through history. Not part of what a backup must
    # hold: a step that finds no list by its digest is sent the list again (see llm_step).
    """CREATE TABLE IF NOT EXISTS tool_catalogs (
        digest TEXT PRIMARY KEY,
        body TEXT NOT NULL)""",
]


class Summary(BaseModel):
    upto_seq: int
    text: str


@dataclass
class StepStart:
    """What a model step finds when it starts (see `ConversationStore.start_step`)."""

    held: int  # messages stored below the step's first new one
    reply: ChatMessage | None  # what the store already holds at the step's reply number


@dataclass
class ContextRows:
    """What the model's view is built from: the system prompt, the latest summary, and every
    message after the summary."""

    system: list[StoredMessage]
    summary: Summary | None
    recent: list[StoredMessage]


class ConversationStore(ABC):
    @abstractmethod
    async def append(self, conversation_id: str, messages: list[StoredMessage]) -> None:
        """Insert messages; a (conversation, seq) already present is left as it is."""

    @abstractmethod
    async def messages(
        self, conversation_id: str, *, after_seq: int = -1, limit: int | None = None
    ) -> list[StoredMessage]: ...

    @abstractmethod
    async def put(self, conversation_id: str, messages: list[StoredMessage]) -> None:
        """Write messages at their sequence numbers, replacing what is there: the workflow's
        record of its own messages wins over a reply an abandoned model step left behind."""

    @abstractmethod
    async def count_before(self, conversation_id: str, seq: int) -> int:
        """How many messages of the conversation have a sequence number below `seq`."""

    @abstractmethod
    async def summary(self, conversation_id: str) -> Summary | None:
        """The latest summary, if the conversation was ever compacted."""

    @abstractmethod
    async def put_summary(self, conversation_id: str, summary: Summary) -> None: ...

    @abstractmethod
    async def put_turn(self, conversation_id: str, turn: int, result: TurnResult) -> None: ...

    @abstractmethod
    async def turns(
        self, conversation_id: str, *, offset: int = 0, limit: int = 1000
    ) -> list[TurnResult]: ...

    @abstractmethod
    async def put_catalog(self, digest: str, tools: list[dict[str, Any]]) -> None:
        """Keep a tool list under its digest (a digest already present is left as it is)."""

    @abstractmethod
    async def catalog(self, digest: str) -> list[dict[str, Any]] | None: ...

    @abstractmethod
    async def close(self) -> None: ...

    # ---- what one model step does, as single calls a backend can serve in one round trip ----
    async def start_step(
        self,
        conversation_id: str,
        stored_before: int,
        new_messages: list[StoredMessage],
        reply_seq: int,
    ) -> StepStart:
        """Count the messages below `stored_before`; only if none is missing, write
        `new_messages` and read what is stored at `reply_seq`."""
        held = await self.count_before(conversation_id, stored_before)
        if held != stored_before:
            return StepStart(held=held, reply=None)
        await self.put(conversation_id, new_messages)
        stored = await self.messages(conversation_id, after_seq=reply_seq - 1, limit=1)
        reply = stored[0].message if stored and stored[0].seq == reply_seq else None
        return StepStart(held=held, reply=reply)

    async def put_reply(self, conversation_id: str, seq: int, reply: ChatMessage) -> ChatMessage:
        """Store a model reply at `seq` unless one is there already; return the one kept."""
        await self.append(conversation_id, [StoredMessage(seq=seq, message=reply)])
        stored = await self.messages(conversation_id, after_seq=seq - 1, limit=1)
        return stored[0].message if stored and stored[0].seq == seq else reply

    async def context_rows(self, conversation_id: str) -> ContextRows:
        system = await self.messages(conversation_id, after_seq=-1, limit=1)
        summary = await self.summary(conversation_id)
        start = summary.upto_seq if summary else 0
        recent = await self.messages(conversation_id, after_seq=start)
        return ContextRows(system=system, summary=summary, recent=recent)


def open_store(url: str, password: str | None = None) -> ConversationStore:
    """The store a URL names. `password` (PostgreSQL only) is kept out of the URL, so the URL can
    sit in a committed env file and the password in a secret file."""
    if url.startswith("sqlite:///"):
        return SqliteStore(Path(url.removeprefix("sqlite:///")))
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url, password)
    raise ValueError(
        f"unsupported store URL {url!r}: use sqlite:///path.db or postgresql://user@host/db"
    )


class SqliteStore(ConversationStore):
    """One file, one connection, calls serialised on a worker thread.

    The file holds transcripts, so it is created readable by its owner only (SQLite gives its
    -wal and -shm files the database file's mode). A file deleted or replaced under a running
    worker is noticed on the next call and reopened, so the store check in the model step sees
    what is really on disk instead of writing on into an unlinked file.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = asyncio.Lock()
        self._connection: sqlite3.Connection | None = None
        self._inode: int | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._connection is not None and self._file_identity() != self._inode:
            self._connection.close()
            self._connection = None
        if self._connection is None:
            self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(self._path, os.O_CREAT | os.O_RDWR, 0o600))
            os.chmod(self._path, 0o600)
            self._inode = self._file_identity()
            connection = sqlite3.connect(self._path, check_same_thread=False, timeout=30)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            for statement in SCHEMA:
                connection.execute(statement)
            connection.commit()
            self._connection = connection
        return self._connection

    async def _run(self, sql: str, rows: list[tuple[Any, ...]] | tuple[Any, ...] = ()) -> list[Any]:
        def work() -> list[Any]:
            connection = self._connect()
            if isinstance(rows, list):
                connection.executemany(sql, rows)
                connection.commit()
                return []
            cursor = connection.execute(sql, rows)
            result = cursor.fetchall()
            connection.commit()
            return result

        async with self._lock:
            return await asyncio.to_thread(work)

    def _file_identity(self) -> int | None:
        try:
            return os.stat(self._path).st_ino
        except FileNotFoundError:
            return None

    async def append(self, conversation_id: str, messages: list[StoredMessage]) -> None:
        if messages:
            await self._run(
                "INSERT OR IGNORE INTO messages (conversation_id, seq, body) VALUES (?, ?, ?)",
                [(conversation_id, m.seq, m.message.model_dump_json()) for m in messages],
            )

    async def messages(
        self, conversation_id: str, *, after_seq: int = -1, limit: int | None = None
    ) -> list[StoredMessage]:
        rows = await self._run(
            "SELECT seq, body FROM messages WHERE conversation_id = ? AND seq > ? "
            "ORDER BY seq LIMIT ?",
            (conversation_id, after_seq, limit if limit is not None else -1),
        )
        return [_message(seq, body) for seq, body in rows]

    async def put(self, conversation_id: str, messages: list[StoredMessage]) -> None:
        if messages:
            await self._run(
                "INSERT INTO messages (conversation_id, seq, body) VALUES (?, ?, ?) "
                "ON CONFLICT (conversation_id, seq) DO UPDATE SET body = excluded.body",
                [(conversation_id, m.seq, m.message.model_dump_json()) for m in messages],
            )

    async def count_before(self, conversation_id: str, seq: int) -> int:
        rows = await self._run(
            "SELECT COUNT(*) FROM messages WHERE conversation_id = ? AND seq < ?",
            (conversation_id, seq),
        )
        return int(rows[0][0])

    async def summary(self, conversation_id: str) -> Summary | None:
        rows = await self._run(
            "SELECT upto_seq, body FROM summaries WHERE conversation_id = ? "
            "ORDER BY upto_seq DESC LIMIT 1",
            (conversation_id,),
        )
        return Summary(upto_seq=rows[0][0], text=rows[0][1]) if rows else None

    async def put_summary(self, conversation_id: str, summary: Summary) -> None:
        await self._run(
            "INSERT OR IGNORE INTO summaries (conversation_id, upto_seq, body) VALUES (?, ?, ?)",
            [(conversation_id, summary.upto_seq, summary.text)],
        )

    async def put_turn(self, conversation_id: str, turn: int, result: TurnResult) -> None:
        await self._run(
            "INSERT OR IGNORE INTO turns (conversation_id, turn, body) VALUES (?, ?, ?)",
            [(conversation_id, turn, result.model_dump_json())],
        )

    async def turns(
        self, conversation_id: str, *, offset: int = 0, limit: int = 1000
    ) -> list[TurnResult]:
        rows = await self._run(
            "SELECT body FROM turns WHERE conversation_id = ? ORDER BY turn LIMIT ? OFFSET ?",
            (conversation_id, limit, offset),
        )
        return [TurnResult.model_validate_json(body) for (body,) in rows]

    async def put_catalog(self, digest: str, tools: list[dict[str, Any]]) -> None:
        await self._run(
            "INSERT OR IGNORE INTO tool_catalogs (digest, body) VALUES (?, ?)",
            [(digest, json.dumps(tools))],
        )

    async def catalog(self, digest: str) -> list[dict[str, Any]] | None:
        rows = await self._run("SELECT body FROM tool_catalogs WHERE digest = ?", (digest,))
        return _catalog(rows)

    async def close(self) -> None:
        async with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    async def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work` on the connection in one worker-thread hop, then one commit."""

        def run() -> T:
            connection = self._connect()
            result = work(connection)
            connection.commit()
            return result

        async with self._lock:
            return await asyncio.to_thread(run)

    async def start_step(
        self,
        conversation_id: str,
        stored_before: int,
        new_messages: list[StoredMessage],
        reply_seq: int,
    ) -> StepStart:
        def work(connection: sqlite3.Connection) -> StepStart:
            (held,) = connection.execute(
                "SELECT COUNT(*) FROM messages WHERE conversation_id = ? AND seq < ?",
                (conversation_id, stored_before),
            ).fetchone()
            if held != stored_before:
                return StepStart(held=int(held), reply=None)
            connection.executemany(
                "INSERT INTO messages (conversation_id, seq, body) VALUES (?, ?, ?) "
                "ON CONFLICT (conversation_id, seq) DO UPDATE SET body = excluded.body",
                [(conversation_id, m.seq, m.message.model_dump_json()) for m in new_messages],
            )
            row = connection.execute(
                "SELECT body FROM messages WHERE conversation_id = ? AND seq = ?",
                (conversation_id, reply_seq),
            ).fetchone()
            reply = ChatMessage.model_validate_json(row[0]) if row else None
            return StepStart(held=int(held), reply=reply)

        return await self._transaction(work)

    async def put_reply(self, conversation_id: str, seq: int, reply: ChatMessage) -> ChatMessage:
        def work(connection: sqlite3.Connection) -> ChatMessage:
            connection.execute(
                "INSERT OR IGNORE INTO messages (conversation_id, seq, body) VALUES (?, ?, ?)",
                (conversation_id, seq, reply.model_dump_json()),
            )
            row = connection.execute(
                "SELECT body FROM messages WHERE conversation_id = ? AND seq = ?",
                (conversation_id, seq),
            ).fetchone()
            return ChatMessage.model_validate_json(row[0]) if row else reply

        return await self._transaction(work)

    async def context_rows(self, conversation_id: str) -> ContextRows:
        def work(connection: sqlite3.Connection) -> ContextRows:
            select = (
                "SELECT seq, body FROM messages WHERE conversation_id = ? AND seq > ? ORDER BY seq"
            )
            system = connection.execute(select + " LIMIT 1", (conversation_id, -1)).fetchall()
            found = connection.execute(
                "SELECT upto_seq, body FROM summaries WHERE conversation_id = ? "
                "ORDER BY upto_seq DESC LIMIT 1",
                (conversation_id,),
            ).fetchone()
            summary = Summary(upto_seq=found[0], text=found[1]) if found else None
            start = summary.upto_seq if summary else 0
            recent = connection.execute(select, (conversation_id, start)).fetchall()
            return ContextRows(
                system=[_message(seq, body) for seq, body in system],
                summary=summary,
                recent=[_message(seq, body) for seq, body in recent],
            )

        return await self._transaction(work)


class PostgresStore(ConversationStore):
    """psycopg 3, one connection per call: safe across event loops and worker restarts."""

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

    async def append(self, conversation_id: str, messages: list[StoredMessage]) -> None:
        if messages:
            await self._run(
                "INSERT INTO messages (conversation_id, seq, body) VALUES (%s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                [(conversation_id, m.seq, m.message.model_dump_json()) for m in messages],
            )

    async def messages(
        self, conversation_id: str, *, after_seq: int = -1, limit: int | None = None
    ) -> list[StoredMessage]:
        rows = await self._run(
            "SELECT seq, body FROM messages WHERE conversation_id = %s AND seq > %s "
            "ORDER BY seq LIMIT %s",
            (conversation_id, after_seq, limit),
        )
        return [_message(seq, body) for seq, body in rows]

    async def put(self, conversation_id: str, messages: list[StoredMessage]) -> None:
        if messages:
            await self._run(
                "INSERT INTO messages (conversation_id, seq, body) VALUES (%s, %s, %s) "
                "ON CONFLICT (conversation_id, seq) DO UPDATE SET body = excluded.body",
                [(conversation_id, m.seq, m.message.model_dump_json()) for m in messages],
            )

    async def count_before(self, conversation_id: str, seq: int) -> int:
        rows = await self._run(
            "SELECT COUNT(*) FROM messages WHERE conversation_id = %s AND seq < %s",
            (conversation_id, seq),
        )
        return int(rows[0][0])

    async def summary(self, conversation_id: str) -> Summary | None:
        rows = await self._run(
            "SELECT upto_seq, body FROM summaries WHERE conversation_id = %s "
            "ORDER BY upto_seq DESC LIMIT 1",
            (conversation_id,),
        )
        return Summary(upto_seq=rows[0][0], text=rows[0][1]) if rows else None

    async def put_summary(self, conversation_id: str, summary: Summary) -> None:
        await self._run(
            "INSERT INTO summaries (conversation_id, upto_seq, body) VALUES (%s, %s, %s) "
            "ON CONFLICT DO NOTHING",
            [(conversation_id, summary.upto_seq, summary.text)],
        )

    async def put_turn(self, conversation_id: str, turn: int, result: TurnResult) -> None:
        await self._run(
            "INSERT INTO turns (conversation_id, turn, body) VALUES (%s, %s, %s) "
            "ON CONFLICT DO NOTHING",
            [(conversation_id, turn, result.model_dump_json())],
        )

    async def turns(
        self, conversation_id: str, *, offset: int = 0, limit: int = 1000
    ) -> list[TurnResult]:
        rows = await self._run(
            "SELECT body FROM turns WHERE conversation_id = %s ORDER BY turn LIMIT %s OFFSET %s",
            (conversation_id, limit, offset),
        )
        return [TurnResult.model_validate_json(body) for (body,) in rows]

    async def put_catalog(self, digest: str, tools: list[dict[str, Any]]) -> None:
        await self._run(
            "INSERT INTO tool_catalogs (digest, body) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            [(digest, json.dumps(tools))],
        )

    async def catalog(self, digest: str) -> list[dict[str, Any]] | None:
        rows = await self._run("SELECT body FROM tool_catalogs WHERE digest = %s", (digest,))
        return _catalog(rows)

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
            system=[_message(seq, body) for seq, body in system],
            summary=summary,
            recent=[_message(seq, body) for seq, body in recent],
        )


def _catalog(rows: list[Any]) -> list[dict[str, Any]] | None:
    if not rows:
        return None
    tools = json.loads(rows[0][0])
    return tools if isinstance(tools, list) else None


def _message(seq: int, body: str) -> StoredMessage:
    return StoredMessage(seq=seq, message=ChatMessage.model_validate_json(body))
