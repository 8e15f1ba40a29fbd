"""Container health check for the service workers: `python healthcheck.py <module>`.

Healthy when a process running `python -m <module>` is alive and the Temporal frontend named by
TEMPORAL_ADDRESS accepts a TCP connection. Standard library only, so it runs in every image.
Exit 0 when healthy, 1 otherwise (the Docker HEALTHCHECK contract).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path


def worker_running(module: str) -> bool:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:  # the process exited while we looked
            continue
        if b"-m" in args and module.encode() in args:
            return True
    return False


def frontend_reachable(address: str, timeout: float = 3.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: healthcheck.py <module>", file=sys.stderr)
        return 1
    module = argv[1]
    if not worker_running(module):
        print(f"unhealthy: no process runs python -m {module}", file=sys.stderr)
        return 1
    address = os.environ.get("TEMPORAL_ADDRESS", "localhost:7233")
    if not frontend_reachable(address):
        print(f"unhealthy: Temporal frontend {address} is unreachable", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
