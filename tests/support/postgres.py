"""A throw-away PostgreSQL server for the store tests, from the Debian packages on this machine.

`make test` installs them when missing (see the Makefile's `system-deps`). The server listens on
127.0.0.1 on a free port with trust auth, runs as the `postgres` user when we are root (initdb
refuses root), and is stopped and deleted after the session.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class PostgresUnavailable(Exception):
    pass


def _binaries() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    if not candidates:
        found = shutil.which("pg_ctl")
        if not found:
            raise PostgresUnavailable(
                "no PostgreSQL server binaries (pg_ctl) on this machine; "
                "`make test` installs Debian's postgresql package when it can"
            )
        return Path(found).parent
    return Path(candidates[0]).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_postgres() -> Iterator[str]:
    """Yield a postgresql:// URL for a fresh server."""
    bin_dir = _binaries()
    as_user: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="pg-test-"))
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable("running as root and there is no 'postgres' user") from None
        os.chown(workdir, account.pw_uid, account.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data = workdir / "data"
    port = _free_port()
    try:
        subprocess.run(
            [*as_user, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        subprocess.run(
            [
                *as_user,
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(workdir / "server.log"),
                "-o",
                f"-p {port} -c listen_addresses=127.0.0.1 -k {workdir} -c fsync=off",
                "-w",
                "start",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        log = (workdir / "server.log").read_text() if (workdir / "server.log").exists() else ""
        shutil.rmtree(workdir, ignore_errors=True)
        stderr = getattr(err, "stderr", b"") or b""
        raise PostgresUnavailable(
            f"PostgreSQL did not start: {stderr.decode()[-300:]} {log[-300:]}"
        ) from None
    try:
        time.sleep(0.2)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(workdir, ignore_errors=True)
