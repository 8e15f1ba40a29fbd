"""The SQLite conversation store: one file, one connection, for one orchestrator worker."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from orchestrator.models import ChatMessage, StoredMessage
from orchestrator.store import (
    SCHEMA,
    ContextRows,
    ConversationStore,
    StepStart,
    Summary,
    message_from_row,
)

T = TypeVar("T")


class SqliteStore(ConversationStore):
    """One file, one connection, calls serialised on a worker thread.

    The file holds transcripts, so it is created readable by its owner only (SQLite gives its
    -wal and -shm files the database file's mode). A file deleted or replaced under a running
    worker is noticed on the next call and reopened, so the store check in the model step sees
    what is really on disk instead of writing on into an unlinked file.
    """

    _no_limit = -1  # SQLite's LIMIT takes no NULL

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
            if not self._path.exists():
                # Only when missing: closing any descriptor of a file drops every POSIX lock this
                # process holds on it, including SQLite's own of another store on the same file
                # (another process could then delete the -wal under live connections).
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
                system=[message_from_row(seq, body) for seq, body in system],
                summary=summary,
                recent=[message_from_row(seq, body) for seq, body in recent],
            )

        return await self._transaction(work)
