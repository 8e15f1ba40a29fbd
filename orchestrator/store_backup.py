"""Online backup and restore of the SQLite conversation store (`agent store backup|restore`).

Both directions use SQLite's online backup API (`sqlite3.Connection.backup`), which copies the
database page by page under SQLite's own locking, so they are safe while an orchestrator worker is
writing: a backup is a consistent snapshot, and a restore is one write transaction that the
worker's open connection sees on its next statement (the file is written in place, never swapped,
so no connection is left on an unlinked file).

Only the standard library is used at import: the CLI imports this module on its start-up path.

A backup copies every table (the page-level copy knows no table names), `usage_steps` included.
`STORE_TABLES` lists only what a file needs to count as a conversation store, so backups taken
before a table was added (`tool_catalogs`, `approvals`, `usage_steps`) still restore; a restore
then creates the tables such a backup lacks, empty, so the running worker can write to them.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SQLITE_PREFIX = "sqlite:///"
POSTGRES_PREFIXES = ("postgresql://", "postgres://")
# The tables (and the columns of each) that make a file a conversation store: see orchestrator.store.
STORE_TABLES = {
    "messages": {"conversation_id", "seq", "body"},
    "summaries": {"conversation_id", "upto_seq", "body"},
    "turns": {"conversation_id", "turn", "body"},
}
# Writers wait this long for the worker's transaction to finish instead of failing as "locked".
BUSY_TIMEOUT_SECONDS = 30.0


class StoreBackupError(Exception):
    """A backup or restore that cannot be done, explained in one line."""


@dataclass(frozen=True)
class StoreCounts:
    """What a store holds: conversations (with a message or a turn), messages and turns."""

    conversations: int
    messages: int
    turns: int

    def describe(self) -> str:
        return (
            f"{self.conversations} conversation{'s' if self.conversations != 1 else ''} "
            f"({self.messages} message{'s' if self.messages != 1 else ''}, "
            f"{self.turns} turn{'s' if self.turns != 1 else ''})"
        )


def sqlite_store_path(store_url: str) -> Path:
    """The database file of a `sqlite:///` store URL (relative paths stay relative to the current
    directory, like orchestrator.store.open_store)."""
    if store_url.startswith(POSTGRES_PREFIXES):
        raise StoreBackupError(
            "the conversation store is PostgreSQL (ORCHESTRATOR_STORE_URL): back it up with "
            "pg_dump and restore it with pg_restore"
        )
    if not store_url.startswith(SQLITE_PREFIX):
        raise StoreBackupError(
            "ORCHESTRATOR_STORE_URL must be sqlite:///path/to/file.db for `agent store`"
        )
    return Path(store_url.removeprefix(SQLITE_PREFIX))


def backup_store(store_url: str, destination: Path) -> StoreCounts:
    """Copy the live store into a new file at `destination` (mode 0600) and count what it holds.

    The copy is written to a temporary file next to `destination` and renamed over it only when
    complete, so an interrupted backup never leaves a half-written file where the last good
    backup was. The copy uses the rollback journal, not WAL: it is one self-contained file.
    """
    live = sqlite_store_path(store_url)
    if not live.is_file():
        raise StoreBackupError(f"there is no conversation store at {live}")
    destination = destination.expanduser()
    if destination.exists() and destination.resolve() == live.resolve():
        raise StoreBackupError(f"{destination} is the live store itself; choose another path")
    if not destination.parent.is_dir():
        raise StoreBackupError(f"directory {destination.parent} does not exist")
    if destination.is_dir():
        raise StoreBackupError(f"{destination} is a directory; give a file name")

    # mkstemp creates the file with mode 0600: transcripts are never readable by others.
    descriptor, temporary_name = tempfile.mkstemp(
        dir=destination.parent, prefix=f".{destination.name}.", suffix=".partial"
    )
    os.close(descriptor)
    temporary = Path(temporary_name)
    try:
        with _open(_read_write_uri(live), uri=True) as source:
            _require_store_tables(source, live)
            with _open(temporary) as copy:
                source.backup(copy)
                copy.execute("PRAGMA journal_mode=DELETE")
                counts = _count(copy)
        os.chmod(temporary, 0o600)
        _fsync(temporary)
        os.replace(temporary, destination)
        _fsync(destination.parent)
    except sqlite3.Error as error:
        raise StoreBackupError(f"backup of {live} failed: {_one_line(error)}") from None
    except OSError as error:
        raise StoreBackupError(f"cannot write {destination}: {_one_line(error)}") from None
    finally:
        temporary.unlink(missing_ok=True)
    return counts


def restore_store(store_url: str, source_path: Path) -> StoreCounts:
    """Replace the live store's content with a backup's and count what it now holds.

    The backup is checked first (a SQLite file with the store's tables that passes SQLite's
    quick check); anything else is refused before the live store is touched. The live database
    is written through the backup API, in place: a running worker keeps its connection and reads
    the restored content. A store that does not exist yet is created (mode 0600).
    """
    live = sqlite_store_path(store_url)
    source_path = source_path.expanduser()
    if not source_path.is_file():
        raise StoreBackupError(f"there is no backup file at {source_path}")
    if live.exists() and live.resolve() == source_path.resolve():
        raise StoreBackupError(f"{source_path} is the live store itself; nothing to restore")
    try:
        with _open(_read_only_uri(source_path), uri=True) as source:
            _require_valid_backup(source, source_path)
            _create_private(live)
            with _open(live) as target:
                source.backup(target)
                _create_missing_tables(target)
                counts = _count(target)
    except sqlite3.Error as error:
        raise StoreBackupError(f"restore into {live} failed: {_one_line(error)}") from None
    except OSError as error:
        raise StoreBackupError(f"cannot restore into {live}: {_one_line(error)}") from None
    return counts


# ---- helpers -------------------------------------------------------------------------------------
@contextlib.contextmanager
def _open(database: str | Path, *, uri: bool = False) -> Iterator[sqlite3.Connection]:
    """A connection that is closed on leaving (sqlite3's own context manager only commits)."""
    connection = sqlite3.connect(database, uri=uri, timeout=BUSY_TIMEOUT_SECONDS)
    try:
        yield connection
    finally:
        connection.close()


def _read_write_uri(path: Path) -> str:
    # mode=rw: never create an empty database where the live store was expected.
    return f"{path.resolve().as_uri()}?mode=rw"


def _read_only_uri(path: Path) -> str:
    return f"{path.resolve().as_uri()}?mode=ro"


def _require_store_tables(connection: sqlite3.Connection, path: Path) -> None:
    try:
        for table, columns in STORE_TABLES.items():
            found = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
            if not columns <= found:
                raise StoreBackupError(
                    f"{path} is not a conversation store: table '{table}' is missing or lacks "
                    f"columns {', '.join(sorted(columns - found))}"
                )
    except sqlite3.DatabaseError as error:
        raise StoreBackupError(
            f"{path} is not a SQLite conversation store ({_one_line(error)})"
        ) from None


def _require_valid_backup(connection: sqlite3.Connection, path: Path) -> None:
    _require_store_tables(connection, path)
    try:
        verdict = connection.execute("PRAGMA quick_check").fetchone()
    except sqlite3.DatabaseError as error:
        raise StoreBackupError(f"{path} is damaged: {_one_line(error)}") from None
    if not verdict or verdict[0] != "ok":
        raise StoreBackupError(f"{path} is damaged: {verdict[0] if verdict else 'no answer'}")


def _create_missing_tables(connection: sqlite3.Connection) -> None:
    """Add the tables (and indexes) the store has now and an older backup lacks, empty. The
    live worker's connection created them once, at start: it does not look again."""
    from orchestrator.store import SCHEMA  # not at import: keeps the CLI's start-up light

    for statement in SCHEMA:
        connection.execute(statement)
    connection.commit()


def _create_private(path: Path) -> None:
    """Create the live store's directory and file owner-only, as orchestrator.store does."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))


def _count(connection: sqlite3.Connection) -> StoreCounts:
    conversations, messages, turns = connection.execute(
        "SELECT"
        " (SELECT COUNT(*) FROM (SELECT conversation_id FROM messages"
        "  UNION SELECT conversation_id FROM turns)),"
        " (SELECT COUNT(*) FROM messages),"
        " (SELECT COUNT(*) FROM turns)"
    ).fetchone()
    return StoreCounts(conversations=conversations, messages=messages, turns=turns)


def _fsync(path: Path) -> None:
    """Flush a file or directory to disk, so a backup survives a power cut once reported."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
