"""A throw-away PostgreSQL server from the Debian packages on this machine.

Used by the store tests (tests/support/postgres.py) and by the compose rehearsal
(infrastructure/compose_rehearsal.py), which stands it in for the compose file's `postgresql`
service. `make test` and `make compose-rehearsal` install the packages when missing (the
Makefile's `system-deps`). The server listens on 127.0.0.1 on a free port, runs as the `postgres`
user when we are root (initdb refuses root), and is stopped and deleted on leaving.

Without a password the server trusts every connection (the store tests). With one, TCP connections
need it (scram-sha-256), as the `postgres` image requires of every client that is not on its own
socket, so a client that forgot its password fails here as it would in the container.
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
from dataclasses import dataclass
from pathlib import Path


class PostgresUnavailable(Exception):
    pass


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    superuser: str
    password: str | None
    workdir: Path

    def url(self, database: str = "postgres") -> str:
        """A postgresql:// URL for the superuser (password included, when there is one)."""
        secret = f":{self.password}" if self.password else ""
        return f"postgresql://{self.superuser}{secret}@{self.host}:{self.port}/{database}"


def binaries() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    if not candidates:
        found = shutil.which("pg_ctl")
        if not found:
            raise PostgresUnavailable(
                "no PostgreSQL server binaries (pg_ctl) on this machine; "
                "`make system-deps` installs Debian's postgresql package when it can"
            )
        return Path(found).parent
    return Path(candidates[0]).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def postgres_server(
    superuser: str = "postgres", password: str | None = None
) -> Iterator[PostgresServer]:
    """Start a fresh server; stop and delete it on leaving."""
    bin_dir = binaries()
    as_user: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="pg-"))
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(workdir, ignore_errors=True)
            raise PostgresUnavailable("running as root and there is no 'postgres' user") from None
        os.chown(workdir, account.pw_uid, account.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data = workdir / "data"
    port = free_port()
    auth = ["-A", "trust"]
    if password is not None:
        pwfile = workdir / "pwfile"
        pwfile.write_text(password + "\n")
        if as_user:
            os.chown(pwfile, account.pw_uid, account.pw_gid)
        auth = ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
    try:
        subprocess.run(
            [*as_user, str(bin_dir / "initdb"), "-D", str(data), *auth, "-U", superuser],
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
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as err:
        log = (workdir / "server.log").read_text() if (workdir / "server.log").exists() else ""
        shutil.rmtree(workdir, ignore_errors=True)
        stderr = getattr(err, "stderr", b"") or b""
        raise PostgresUnavailable(
            f"PostgreSQL did not start: {err} {stderr.decode()[-300:]} {log[-300:]}"
        ) from None
    try:
        time.sleep(0.2)
        yield PostgresServer("127.0.0.1", port, superuser, password, workdir)
    finally:
        subprocess.run(
            [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(workdir, ignore_errors=True)
