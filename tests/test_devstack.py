"""`make up` / `make down` as a user runs them, on spare ports and a throw-away run directory."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from infrastructure.devstack import temporal_binary


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _devstack(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infrastructure.devstack", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


def test_up_is_idempotent_and_down_leaves_nothing(tmp_path: Path) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "DEVSTACK_RUN_DIR": str(tmp_path / "run"),
        "DEVSTACK_PORT": str(port),
        "DEVSTACK_HTTP_PORT": str(_free_port()),
        "DEVSTACK_UI_PORT": str(_free_port()),
        "LOG_LEVEL": "WARNING",
    }
    pids: list[int] = []
    try:
        first = _devstack("up", env)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "Temporal UI: http://127.0.0.1:" in first.stdout
        records = sorted((tmp_path / "run" / "pids").glob("*.json"))
        assert {r.stem for r in records} >= {"temporal", "it", "finance"}
        pids = [json.loads(r.read_text())["pid"] for r in records]
        assert all(_alive(pid) for pid in pids)
        assert (tmp_path / "run" / "temporal.db").exists()
        assert (tmp_path / "run" / "logs" / "it.log").exists()

        second = _devstack("up", env)
        assert second.returncode == 0
        assert "already up" in second.stdout

        endpoints = subprocess.run(
            [temporal_binary(), "operator", "nexus", "endpoint", "list"],
            env={**os.environ, "TEMPORAL_ADDRESS": f"127.0.0.1:{port}"},
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert "it-tools" in endpoints.stdout and "finance-tools" in endpoints.stdout
    finally:
        down = _devstack("down", env)
    assert down.returncode == 0 and "Stopped:" in down.stdout
    assert pids and not any(_alive(pid) for pid in pids)
    assert not list((tmp_path / "run" / "pids").glob("*.json"))
