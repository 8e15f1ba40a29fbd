"""`agent store backup|restore`: SQLite's online backup API on a real store file, written and read
through orchestrator.store while the copies are made."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.models import ChatMessage, StoredMessage, TurnResult, Usage
from orchestrator.store import ConversationStore, Summary, open_store
from orchestrator.store_backup import (
    StoreBackupError,
    StoreCounts,
    backup_store,
    restore_store,
)

AGENT = str(Path(sys.executable).parent / "agent")


def _messages(count: int, start: int = 0) -> list[StoredMessage]:
    return [
        StoredMessage(seq=seq, message=ChatMessage(role="user", content=f"message {seq}"))
        for seq in range(start, start + count)
    ]


def _turn(conversation_id: str, answer: str) -> TurnResult:
    return TurnResult(
        conversation_id=conversation_id,
        answer=answer,
        message="question",
        usage=Usage(prompt_tokens=10, completion_tokens=2),
    )


async def _fill(store: ConversationStore) -> None:
    """Two conversations: 5 + 3 messages, 2 + 1 turns, one summary."""
    await store.append("conv-a", _messages(5))
    await store.append("conv-b", _messages(3))
    await store.put_turn("conv-a", 1, _turn("conv-a", "first"))
    await store.put_turn("conv-a", 2, _turn("conv-a", "second"))
    await store.put_turn("conv-b", 1, _turn("conv-b", "only"))
    await store.put_summary("conv-a", Summary(upto_seq=2, text="they said hello"))


async def test_backup_then_restore_into_the_live_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'live' / 'conversations.db'}"
    backup = tmp_path / "backups" / "conversations.bak"
    backup.parent.mkdir()
    store = open_store(url)  # stands for the running worker: its connection stays open
    try:
        await _fill(store)

        counts = await asyncio.to_thread(backup_store, url, backup)
        assert counts == StoreCounts(conversations=2, messages=8, turns=3)
        assert stat.S_IMODE(backup.stat().st_mode) == 0o600
        assert list(backup.parent.iterdir()) == [backup]  # no temporary file left behind
        with sqlite3.connect(backup) as copy:  # one self-contained file, not a WAL database
            assert copy.execute("PRAGMA journal_mode").fetchone() == ("delete",)

        # Lose data after the backup: a truncated table, a deleted row, a newer conversation.
        live_path = tmp_path / "live" / "conversations.db"
        inode = live_path.stat().st_ino
        with sqlite3.connect(live_path) as vandal:
            vandal.execute("DELETE FROM messages WHERE conversation_id = 'conv-a'")
            vandal.execute("DELETE FROM turns")
        await store.append("conv-c", _messages(2))
        assert await store.messages("conv-a") == []

        restored = await asyncio.to_thread(restore_store, url, backup)
        assert restored == StoreCounts(conversations=2, messages=8, turns=3)

        # Written in place: same file, and the open connection reads the restored content.
        assert live_path.stat().st_ino == inode
        assert [m.seq for m in await store.messages("conv-a")] == [0, 1, 2, 3, 4]
        assert await store.messages("conv-a") == _messages(5)
        assert [t.answer for t in await store.turns("conv-a")] == ["first", "second"]
        assert [t.answer for t in await store.turns("conv-b")] == ["only"]
        assert await store.summary("conv-a") == Summary(upto_seq=2, text="they said hello")
        assert await store.messages("conv-c") == []  # not in the backup
        # ...and can go on writing.
        await store.append("conv-a", _messages(1, start=5))
        assert len(await store.messages("conv-a")) == 6
    finally:
        await store.close()


async def test_backups_are_consistent_while_the_store_is_written(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'conversations.db'}"
    store = open_store(url)
    writing = True

    async def keep_writing() -> int:
        written = 0
        while writing:
            await store.append("conv-busy", _messages(10, start=written))
            written += 10
        return written

    try:
        await store.messages("conv-busy")  # creates the file
        writer = asyncio.create_task(keep_writing())
        snapshots = []
        for index in range(5):
            path = tmp_path / f"backup-{index}.db"
            snapshots.append(await asyncio.to_thread(backup_store, url, path))
            with sqlite3.connect(path) as copy:
                assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
                seqs = [row[0] for row in copy.execute("SELECT seq FROM messages ORDER BY seq")]
            # A snapshot holds whole appends, in order, without holes.
            assert seqs == list(range(len(seqs))) and len(seqs) % 10 == 0
        writing = False
        written = await writer
    finally:
        await store.close()
    counts = [snapshot.messages for snapshot in snapshots]
    assert counts == sorted(counts) and counts[-1] <= written


async def test_restore_refuses_files_that_are_not_a_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'conversations.db'}"
    store = open_store(url)
    try:
        await _fill(store)
    finally:
        await store.close()

    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a database\n" * 100)
    other_db = tmp_path / "other.db"
    with sqlite3.connect(other_db) as other:
        other.execute("CREATE TABLE messages (id INTEGER)")
    cases = {
        text_file: f"{text_file} is not a SQLite conversation store (file is not a database)",
        other_db: f"{other_db} is not a conversation store: table 'messages' is missing or lacks "
        "columns body, conversation_id, seq",
        tmp_path / "missing.db": f"there is no backup file at {tmp_path / 'missing.db'}",
    }
    for path, message in cases.items():
        with pytest.raises(StoreBackupError) as refused:
            restore_store(url, path)
        assert str(refused.value) == message

    store = open_store(url)  # nothing was touched
    try:
        assert len(await store.messages("conv-a")) == 5
    finally:
        await store.close()


def test_backup_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreBackupError, match="pg_dump and restore it with pg_restore"):
        backup_store("postgresql://agent@db:5432/agents", tmp_path / "x.db")
    with pytest.raises(StoreBackupError, match="pg_restore"):
        restore_store("postgres://agent@db/agents", tmp_path / "x.db")
    with pytest.raises(StoreBackupError, match="there is no conversation store at"):
        backup_store(f"sqlite:///{tmp_path / 'absent.db'}", tmp_path / "x.db")

    live = tmp_path / "live.db"
    asyncio.run(_fill_and_close(f"sqlite:///{live}"))
    with pytest.raises(StoreBackupError, match=r"directory .* does not exist"):
        backup_store(f"sqlite:///{live}", tmp_path / "nowhere" / "x.db")
    with pytest.raises(StoreBackupError, match="is the live store itself"):
        backup_store(f"sqlite:///{live}", live)


async def _fill_and_close(url: str) -> None:
    store = open_store(url)
    try:
        await _fill(store)
    finally:
        await store.close()


# ---- the CLI commands, as a user runs them -------------------------------------------------------
def _agent_store(tmp_path: Path, store_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AGENT, "store", *args],
        env={**os.environ, "ORCHESTRATOR_STORE_URL": store_url, "COLUMNS": "80"},
        cwd=tmp_path,  # no .env of the repository
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_store_commands(tmp_path: Path) -> None:
    live = tmp_path / "run" / "conversations.db"
    url = f"sqlite:///{live}"
    await _fill_and_close(url)
    backup = tmp_path / "conversations.bak"

    backed_up = await asyncio.to_thread(_agent_store, tmp_path, url, "backup", str(backup))
    assert backed_up.returncode == 0, backed_up.stderr
    # One line, even with long paths in a narrow terminal.
    assert backed_up.stdout == (
        f"backed up 2 conversations (8 messages, 3 turns) from {live} to {backup}\n"
    )
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600

    with sqlite3.connect(live) as vandal:
        vandal.execute("DELETE FROM messages")
    restored = await asyncio.to_thread(_agent_store, tmp_path, url, "restore", str(backup))
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout == (
        f"restored 2 conversations (8 messages, 3 turns) from {backup} into {live}\n"
    )
    store = open_store(url)
    try:
        assert len(await store.messages("conv-a")) == 5
    finally:
        await store.close()

    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(8192))
    refused = await asyncio.to_thread(_agent_store, tmp_path, url, "restore", str(junk))
    postgres = await asyncio.to_thread(
        _agent_store, tmp_path, "postgresql://agent@db:5432/agents", "backup", str(backup)
    )
    for result, message in [
        (refused, f"error: {junk} is not a SQLite conversation store (file is not a database)"),
        (
            postgres,
            "error: the conversation store is PostgreSQL (ORCHESTRATOR_STORE_URL): back it up "
            "with pg_dump and restore it with pg_restore",
        ),
    ]:
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr == message + "\n"
