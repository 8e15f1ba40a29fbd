"""Record scenario histories for the replay suite (`RECORD_HISTORIES=1 uv run pytest ...`)."""

from __future__ import annotations

import os
from pathlib import Path

from temporalio.client import WorkflowHandle

HISTORIES = Path(__file__).parent.parent / "histories"


async def record_if_requested(handle: WorkflowHandle[object, object], name: str) -> None:
    if os.environ.get("RECORD_HISTORIES") != "1":
        return
    history = await handle.fetch_history()
    HISTORIES.mkdir(exist_ok=True)
    (HISTORIES / f"{name}.json").write_text(history.to_json())
