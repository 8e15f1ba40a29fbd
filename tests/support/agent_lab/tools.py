"""The agent lab's tools: one that records each run, one that waits for a file, one gated."""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from pathlib import Path

from shared.approval import ApprovalPolicy
from shared.tools import ToolContext, ToolRegistry

registry = ToolRegistry("agentlab")


def _gate_dir() -> Path:
    return Path(os.environ.get("AGENT_LAB_GATE_DIR", "/nonexistent"))


@registry.tool
async def lookup(topic: str, context: ToolContext) -> dict[str, str]:
    """Look a topic up in the lab's notes."""
    gate = _gate_dir()
    if gate.is_dir():  # every run leaves a line: the tests count effects
        with (gate / "lookups").open("a") as runs:
            runs.write(f"{context.conversation_id} {topic}\n")
    return {"topic": topic, "note": f"{topic} is fine"}


@registry.tool(timeout=timedelta(seconds=120), max_attempts=5)
async def hold(token: str) -> dict[str, str]:
    """Wait until the test releases this token (AGENT_LAB_GATE_DIR/release-<token>)."""
    gate = _gate_dir()
    (gate / f"entered-{token}").write_text(str(os.getpid()))
    while not (gate / f"release-{token}").exists():  # noqa: ASYNC110 (another process writes it)
        await asyncio.sleep(0.05)
    return {"token": token, "released": "yes"}


@registry.tool(approval=ApprovalPolicy.always())
async def file_report(title: str) -> dict[str, str]:
    """File a report. Every call needs a person's approval."""
    return {"filed": title}
