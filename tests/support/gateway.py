"""The real gateway for tests: `python -m orchestrator.gateway` (uvicorn) in its own process,
serving real HTTP on a free 127.0.0.1 port, against the session's dev server, orchestrator worker
and conversation store.

A process of its own, not a thread of the test process: it opens the SQLite store with its own
connection and locks, as the gateway does when deployed, and a test may stop and restart it
mid-turn (`restart()`). Both async tests (httpx.AsyncClient) and blocking ones (selenium,
httpx.Client) can use it.

Usage, with the session fixture `gateway` (import it into the test module so pytest finds it):

    from tests.support.gateway import GatewayServer, gateway_fixture  # noqa: F401

    async def test_something(gateway: GatewayServer) -> None:
        key = gateway.create_key("alice")            # a new API key for user alice
        async with gateway.client(key) as http:       # httpx.AsyncClient, base_url + Bearer key
            created = await http.post("/v1/conversations", json={"title": "hi"})
        # gateway.url is e.g. "http://127.0.0.1:40123" (the web chat is gateway.url + "/"),
        # gateway.port its port.

The fixture serves the session's `orchestrator` worker (task queue ORCHESTRATOR_TASK_QUEUE, whose
model is the `fake_model` server: script it as tests/test_conversation.py does) and the session
store (STORE_URL). Keys: `create_key(user, label="") -> str`, `revoke_key(key or key id)`,
`key_id(key)`. For another worker or store, start your own:

    with GatewayServer(temporal_address=..., task_queue=..., store_url=...).started() as server:
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from infrastructure.dev_server import free_ports
from orchestrator.gateway.auth import make_key, now_iso, parse_key
from orchestrator.store import SCHEMA, open_store
from orchestrator.store_accounts import Accounts
from tests.conftest import ORCHESTRATOR_TASK_QUEUE, STORE_URL, Orchestrator, Stack

START_TIMEOUT = 60.0
# Settings the gateway process gets from the test, never from the environment pytest runs in.
_OWN_PREFIXES = ("TEMPORAL_", "ORCHESTRATOR_", "GATEWAY_", "SECRETS_DIR")


class GatewayServer:
    """One gateway process: `start()`/`stop()`/`restart()`, or `with server.started():`."""

    def __init__(
        self,
        *,
        temporal_address: str,
        task_queue: str,
        store_url: str,
        namespace: str = "orchestrator",
        max_body_bytes: int | None = None,
        keepalive_seconds: float | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.store_url = store_url
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        own = {
            "TEMPORAL_ADDRESS": temporal_address,
            "TEMPORAL_NAMESPACE": namespace,
            "TEMPORAL_TASK_QUEUE": task_queue,
            "ORCHESTRATOR_STORE_URL": store_url,
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(self.port),
            "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING"),
        }
        if max_body_bytes is not None:
            own["GATEWAY_MAX_BODY_BYTES"] = str(max_body_bytes)
        if keepalive_seconds is not None:
            own["GATEWAY_KEEPALIVE_SECONDS"] = str(keepalive_seconds)
        inherited = {k: v for k, v in os.environ.items() if not k.upper().startswith(_OWN_PREFIXES)}
        self.env = {**inherited, **own, **(env or {})}
        self.log_path = Path(tempfile.mkdtemp(prefix="gateway-")) / "gateway.log"
        self._process: subprocess.Popen[bytes] | None = None

    # ---- life cycle ---------------------------------------------------------------------------
    def start(self) -> GatewayServer:
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.gateway"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"the gateway exited at start:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1, trust_env=False).is_success:
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the gateway did not answer in time:\n{self.log()}")
            time.sleep(0.1)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def restart(self) -> None:
        """Stop the gateway and start it again on the same port (streams are cut meanwhile)."""
        self.stop()
        self.start()

    @contextmanager
    def started(self) -> Iterator[GatewayServer]:
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def log(self) -> str:
        """What the gateway process wrote (its log lines), for a failing test's message."""
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    # ---- users and keys -------------------------------------------------------------------------
    def create_key(self, user: str, label: str = "") -> str:
        """A new API key for `user` (the user needs no other setup)."""
        new = make_key(user, label)
        _run(self._accounts(), lambda accounts: accounts.put_api_key(new.record))
        return new.key

    def revoke_key(self, key: str) -> None:
        """Revoke a key, given whole or by its key id."""
        key_id = self.key_id(key)
        _run(self._accounts(), lambda accounts: accounts.revoke_api_key(key_id, now_iso()))

    @staticmethod
    def key_id(key: str) -> str:
        parsed = parse_key(key)
        return parsed[0] if parsed else key

    def _accounts(self) -> Accounts:
        if self.store_url.startswith("sqlite:///"):
            return _SqliteAccounts(Path(self.store_url.removeprefix("sqlite:///")))
        return open_store(self.store_url)

    # ---- HTTP ---------------------------------------------------------------------------------
    def headers(self, key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"} if key else {}

    def client(self, key: str | None = None, **options: Any) -> httpx.AsyncClient:
        """An httpx.AsyncClient on the gateway, sending `key` (if given) as the bearer token."""
        options.setdefault("timeout", 60.0)
        options.setdefault("trust_env", False)
        return httpx.AsyncClient(base_url=self.url, headers=self.headers(key), **options)

    def sync_client(self, key: str | None = None, **options: Any) -> httpx.Client:
        options.setdefault("timeout", 60.0)
        options.setdefault("trust_env", False)
        return httpx.Client(base_url=self.url, headers=self.headers(key), **options)


class _SqliteAccounts(Accounts):
    """The accounts tables through a plain sqlite3 connection, opened and closed per statement.

    Not the SqliteStore: the test process already holds the orchestrator worker's store, and a
    second SqliteStore in one process opens and closes the database file beside it (dropping the
    process's POSIX locks on it, after which another process may take itself for the last one
    and remove the WAL under it)."""

    def __init__(self, path: Path) -> None:
        self._path = path

    async def _sql(self, sql: str, rows: list[tuple[Any, ...]] | tuple[Any, ...] = ()) -> list[Any]:
        with contextlib.closing(sqlite3.connect(self._path, timeout=30)) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            for statement in SCHEMA:  # the store may not have been opened yet
                connection.execute(statement)
            if isinstance(rows, list):
                connection.executemany(sql, rows)
                connection.commit()
                return []
            result = connection.execute(sql, rows).fetchall()
            connection.commit()
            return result


def _run(accounts: Accounts, work: Any) -> Any:
    """Run `work(accounts)` to completion from sync or async test code alike."""

    async def run() -> Any:
        try:
            return await work(accounts)
        finally:
            close = getattr(accounts, "close", None)
            if close is not None:
                await close()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run())
    # Called from a coroutine on the running loop: run on a thread with its own loop.
    result: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(run()))
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def dev_server_address(stack: Stack) -> str:
    """host:port of the session's Temporal dev server."""
    return str(stack.env.client.service_client.config.target_host)


@pytest.fixture(scope="session", name="gateway")
def gateway_fixture(stack: Stack, orchestrator: Orchestrator) -> Iterator[GatewayServer]:
    """The gateway on the session's stack, worker (ORCHESTRATOR_TASK_QUEUE) and store."""
    server = GatewayServer(
        temporal_address=dev_server_address(stack),
        task_queue=ORCHESTRATOR_TASK_QUEUE,
        store_url=STORE_URL,
    )
    with server.started():
        yield server
