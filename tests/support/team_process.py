"""A test team's worker as a subprocess (`python -m shared.worker <package>`), to SIGKILL it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import Stack

ROOT = Path(__file__).resolve().parents[2]
SUPPORT = ROOT / "tests" / "support"


def start_team_worker(
    package: str, address: str, namespace: str, task_queue: str, log_dir: Path, **env: str
) -> subprocess.Popen[bytes]:
    """The worker of the team package `package` (found under tests/support), in its own process
    group, with `env` added to this process's environment; its log goes to log_dir/worker.log."""
    return subprocess.Popen(
        [sys.executable, "-m", "shared.worker", package],
        cwd=ROOT,
        env={
            **os.environ,
            "TEMPORAL_ADDRESS": address,
            "TEMPORAL_NAMESPACE": namespace,
            "TEMPORAL_TASK_QUEUE": task_queue,
            "PYTHONPATH": f"{SUPPORT}{os.pathsep}{ROOT}",
            "METRICS_BIND_ADDRESS": "",
            **env,
        },
        stdout=subprocess.DEVNULL,
        stderr=(log_dir / "worker.log").open("ab"),
        start_new_session=True,
    )


def stop_team_worker(worker: subprocess.Popen[bytes]) -> None:
    """SIGTERM a worker still running (it finishes its tasks), and wait for it."""
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)


async def serving(stack: Stack, endpoint: str) -> None:
    """Until a worker (which may list MCP servers at start) answers on its endpoint."""
    for _ in range(60):
        try:
            await asyncio.wait_for(stack.list_tools([endpoint]), 5)
            return
        except Exception:  # not polling yet: the probe's Nexus call times out
            await asyncio.sleep(0.5)
    raise AssertionError(f"no worker serves {endpoint}")


async def wait_for_file(path: Path, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not path.exists():
        assert asyncio.get_running_loop().time() < deadline, f"{path.name} never appeared"
        await asyncio.sleep(0.05)
