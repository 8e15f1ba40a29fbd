"""Container health check for the services: `python healthcheck.py <module> [--get <url>]`.

Healthy when a process running `python -m <module>` is alive, the Temporal frontend named by
TEMPORAL_ADDRESS accepts a TCP connection and, with `--get <url>` (an HTTP service such as the
gateway: its own health route, e.g. http://127.0.0.1:8088/healthz), that URL answers 200 with the
JSON object {"ok": true}. Standard library only, so it runs in every image.
Exit 0 when healthy, 1 otherwise (the Docker HEALTHCHECK contract).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import urllib.error
import urllib.request
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


def http_healthy(url: str, timeout: float = 3.0) -> str | None:
    """None when `url` answers 200 with {"ok": true}; otherwise what it did instead."""
    # No proxy: the URL is the service's own address inside its container.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url), timeout=timeout) as response:
            status, body = response.status, response.read(4096)
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}"
    except (OSError, ValueError) as error:
        return f"unreachable ({error})"
    if status != 200:
        return f"HTTP {status}"
    try:
        answer = json.loads(body)
    except ValueError:
        return "not a JSON answer"
    if not isinstance(answer, dict) or answer.get("ok") is not True:
        return f"answered {body[:200]!r}"
    return None


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 4) or (len(argv) == 4 and argv[2] != "--get"):
        print("usage: healthcheck.py <module> [--get <url>]", file=sys.stderr)
        return 1
    module = argv[1]
    if not worker_running(module):
        print(f"unhealthy: no process runs python -m {module}", file=sys.stderr)
        return 1
    address = os.environ.get("TEMPORAL_ADDRESS", "localhost:7233")
    if not frontend_reachable(address):
        print(f"unhealthy: Temporal frontend {address} is unreachable", file=sys.stderr)
        return 1
    if len(argv) == 4:
        problem = http_healthy(argv[3])
        if problem is not None:
            print(f"unhealthy: {argv[3]}: {problem}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
