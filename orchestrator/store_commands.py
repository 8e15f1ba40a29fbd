"""`agent store backup|restore`: the SQLite conversation store, copied with the online backup API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.markup import escape

from orchestrator.config import OrchestratorSettings
from orchestrator.render import out, print_error, printable
from orchestrator.store_backup import (
    StoreBackupError,
    StoreCounts,
    backup_store,
    restore_store,
    sqlite_store_path,
)
from shared.config import ConfigError, load_settings

store_app = typer.Typer(
    name="store",
    help="Back up and restore the SQLite conversation store (ORCHESTRATOR_STORE_URL).",
    no_args_is_help=True,
)

BackupPath = Annotated[Path, typer.Argument(help="Backup file.", dir_okay=False)]


@store_app.command("backup")
def store_backup(path: BackupPath) -> None:
    """Copy the live store to PATH (mode 0600), safely while the orchestrator worker runs."""
    store_url = _store_url()
    try:
        counts = backup_store(store_url, path)
    except StoreBackupError as error:
        _fail(str(error))
    _report_copy("backed up", counts, sqlite_store_path(store_url), path, "to")


@store_app.command("restore")
def store_restore(path: BackupPath) -> None:
    """Replace the live store's content with the backup at PATH (the worker may keep running)."""
    store_url = _store_url()
    try:
        counts = restore_store(store_url, path)
    except StoreBackupError as error:
        _fail(str(error))
    _report_copy("restored", counts, path, sqlite_store_path(store_url), "into")


def _store_url() -> str:
    try:
        return load_settings(OrchestratorSettings).store_url
    except ConfigError as error:
        _fail(str(error))


def _report_copy(verb: str, counts: StoreCounts, source: Path, target: Path, word: str) -> None:
    out.print(
        escape(printable(f"{verb} {counts.describe()} from {source} {word} {target}")),
        soft_wrap=True,
    )


def _fail(message: str) -> NoReturn:
    print_error(message)
    raise typer.Exit(1)
