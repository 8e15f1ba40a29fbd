"""A ledger of side effects keyed by call id, written the way a real effect must be: idempotently.

Temporal runs a tool at least once: a worker killed after the effect but before the result was
recorded runs it again. Effects therefore carry the call id as an idempotency key (the IT session
update id is derived from it). The ledger does the same: one row per call id, and an `attempts`
count of how often the tool got that far, so a chaos run can show re-executions being absorbed
(infrastructure/chaos.py reads this table). Enabled by `TOOL_LEDGER_PATH` (a SQLite file,
ToolServiceSettings.ledger_path; the compose stack keeps it on a named volume).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from shared.config import ToolServiceSettings, integration_settings


def _write(path: Path, call_id: str, tool: str, conversation_id: str) -> None:
    with sqlite3.connect(path, timeout=30) as connection:
        connection.execute(
            "CREATE TABLE IF NOT EXISTS effects (call_id TEXT PRIMARY KEY, tool TEXT, "
            "conversation_id TEXT, attempts INTEGER NOT NULL, first_at REAL)"
        )
        connection.execute(
            "INSERT INTO effects VALUES (?, ?, ?, 1, ?) "
            "ON CONFLICT(call_id) DO UPDATE SET attempts = attempts + 1",
            (call_id, tool, conversation_id, time.time()),
        )


async def record_effect(call_id: str, tool: str, conversation_id: str) -> None:
    path = integration_settings(ToolServiceSettings).ledger_path
    if path is not None:
        await asyncio.to_thread(_write, path, call_id, tool, conversation_id)
