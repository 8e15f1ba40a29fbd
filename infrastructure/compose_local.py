"""docker-compose.yml without Docker: each service's real command, with its real env files, as a
local process. PostgreSQL comes from Debian's packages and the embedded dev server stands in for
the Temporal server; service hostnames and mounts map to local addresses and folders through one
override (`Overrides`), applied to the values of each environment, never to the files.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

from infrastructure.compose_file import (
    COMPOSE_FILE,
    ROOT,
    ComposeError,
    compose_env,
    dockerfile_of,
    image_command,
    image_copies,
    load_compose,
    seconds,
)
from infrastructure.dev_server import temporal_binary
from infrastructure.postgres import PostgresServer, free_port, postgres_server
from infrastructure.stack_processes import child_environment
from shared.config import TemporalSettings
from shared.temporal import connect

LOCAL_HOST = "127.0.0.1"


class RehearsalError(ComposeError):
    pass


# ---- the one override ---------------------------------------------------------------------------


@dataclass
class Overrides:
    """How compose names map onto this machine, applied to every environment value a service gets.

    `addresses`: "<service>:<port>" -> "127.0.0.1:<local port>" for each port a stand-in listens
    on (a value naming it anywhere, as an address or inside a URL, is rewritten).
    `mounts`: per service, a container path -> the local directory or file that stands for it
    (a value that is that path, starts with it, or is a sqlite:/// URL into it is rewritten).
    """

    addresses: dict[str, str] = field(default_factory=dict)
    mounts: dict[str, dict[str, Path]] = field(default_factory=dict)

    def apply(self, service: str, value: str) -> str:
        for compose_address, address in self.addresses.items():
            value = re.sub(rf"(?<![\w.-]){re.escape(compose_address)}(?!\d)", address, value)
        targets = sorted(self.mounts.get(service, {}).items(), key=lambda item: -len(item[0]))
        for scheme in ("sqlite:///", ""):
            if not value.startswith(scheme):
                continue
            path = value.removeprefix(scheme)
            for target, local in targets:
                if path == target or path.startswith(target.rstrip("/") + "/"):
                    return scheme + str(local) + path[len(target) :]
        return value

    def environment(self, service: str, env: Mapping[str, str]) -> dict[str, str]:
        return {key: self.apply(service, value) for key, value in env.items()}


# ---- processes ----------------------------------------------------------------------------------


@dataclass
class ServiceProcess:
    """One built service as a local process; its working directory is its writable layer."""

    name: str
    argv: list[str]
    env: dict[str, str]
    layer: Path
    log: Path
    grace: float
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        shutil.rmtree(self.layer, ignore_errors=True)  # a new container: an empty writable layer
        self.layer.mkdir(parents=True)
        with self.log.open("ab") as log:
            log.write(f"--- start {self.starts + 1}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.argv,
                cwd=self.layer,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.starts += 1

    def stop(self) -> tuple[float, int | None]:
        """SIGTERM, then SIGKILL after the grace period, as `docker stop` does.
        Returns (seconds it took, exit code), or (0, None) when it was not running."""
        began = time.monotonic()
        process = self.process
        if process is None or process.poll() is not None:
            return 0.0, None
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(self.grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        return time.monotonic() - began, process.returncode

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def say(self, line: str) -> None:
        elapsed = time.monotonic() - self.started
        text = f"[{elapsed:5.1f}s] {line}"
        self.lines.append(text)
        print(text, flush=True)


@dataclass
class LocalCompose:
    """The services of a compose file as local processes: stand-ins for the server and the
    database, the setup job and the workers, with their real commands and env files."""

    run_dir: Path
    compose_file: Path = COMPOSE_FILE
    base: Path = ROOT
    report: Report = field(default_factory=Report)
    overrides: Overrides = field(default_factory=Overrides)
    postgres: PostgresServer | None = None
    workers: dict[str, ServiceProcess] = field(default_factory=dict)
    server: subprocess.Popen[bytes] | None = None
    temporal_address: str = ""

    def __post_init__(self) -> None:
        self.compose = load_compose(self.compose_file)
        self.services: dict[str, dict[str, Any]] = self.compose["services"]
        self.volumes = set(self.compose.get("volumes") or {})

    # ---- stand-ins ------------------------------------------------------------------------
    def _ports(self, service: Mapping[str, Any], defaults: tuple[int, ...]) -> list[int]:
        """The container ports a service listens on: its `ports`, plus known defaults."""
        found = [int(str(p).split(":")[-1].split("/")[0]) for p in service.get("ports", [])]
        return list(dict.fromkeys([*found, *defaults]))

    def start_postgres(self, name: str, stack: ExitStack) -> None:
        env = compose_env(self.services[name], self.base)
        user = env.get("POSTGRES_USER", "postgres")
        self.postgres = stack.enter_context(
            postgres_server(superuser=user, password=env.get("POSTGRES_PASSWORD"))
        )
        self.overrides.addresses[f"{name}:5432"] = f"{LOCAL_HOST}:{self.postgres.port}"
        self.report.say(
            f"{name}: PostgreSQL (Debian package) for {self.services[name]['image']} on "
            f"{LOCAL_HOST}:{self.postgres.port}, superuser {user}, password auth on TCP"
        )

    def start_temporal(self, name: str, stack: ExitStack) -> None:
        service = self.services[name]
        port, http_port = free_port(), free_port()
        for container_port in self._ports(service, (7233,)):
            self.overrides.addresses[f"{name}:{container_port}"] = f"{LOCAL_HOST}:{port}"
        self.overrides.addresses[f"{name}:7243"] = f"{LOCAL_HOST}:{http_port}"
        argv = [
            temporal_binary(),
            "server",
            "start-dev",
            "--ip",
            LOCAL_HOST,
            "--port",
            str(port),
            "--http-port",
            str(http_port),
            "--headless",
            "--db-filename",
            str(self.run_dir / "temporal.db"),
            "--log-level",
            "warn",
            *self._dynamic_config(name),
        ]
        log = (self.run_dir / "logs" / f"{name}.log").open("ab")
        stack.callback(log.close)
        self.server = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_environment(os.environ, (), {}),
            start_new_session=True,
        )
        stack.callback(self._stop_server)
        self.temporal_address = f"{LOCAL_HOST}:{port}"
        asyncio.run(self._wait_for_server())
        self.report.say(
            f"{name}: embedded dev server for {service['image']} on {self.temporal_address}"
        )

    def _dynamic_config(self, name: str) -> list[str]:
        """The dynamic config file the compose file mounts into the server, as CLI flags."""
        env = compose_env(self.services[name], self.base)
        container_path = env.get("DYNAMIC_CONFIG_FILE_PATH")
        local = self._mounts(name).get(container_path or "")
        if local is None or not local.is_file():
            return []
        config = YAML(typ="safe").load(local.read_text()) or {}
        flags: list[str] = []
        for key, entries in config.items():
            value = json.dumps(entries[0]["value"])
            flags += ["--dynamic-config-value", f"{key}={self.overrides.apply(name, value)}"]
        return flags

    def _stop_server(self) -> None:
        if self.server is not None and self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGTERM)
            try:
                self.server.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.server.pid, signal.SIGKILL)
                self.server.wait(10)

    async def _wait_for_server(self, timeout: float = 60.0) -> None:
        settings = TemporalSettings(address=self.temporal_address, namespace="default")
        deadline = time.monotonic() + timeout
        while True:
            if self.server is not None and self.server.poll() is not None:
                raise RehearsalError("the dev server exited; see logs/temporal.log")
            try:
                await connect(settings)
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise RehearsalError("the dev server did not start in time") from None
            await asyncio.sleep(0.3)

    # ---- built services ------------------------------------------------------------------
    def _mounts(self, name: str) -> dict[str, Path]:
        """Container path -> local path for every volume of a service."""
        mounts: dict[str, Path] = {}
        for volume in self.services[name].get("volumes", []):
            if isinstance(volume, dict):
                source, target = str(volume.get("source", "")), str(volume["target"])
            else:
                source, _, rest = str(volume).partition(":")
                target = rest.split(":")[0]
            if source in self.volumes:
                local = self.run_dir / "volumes" / source
                local.mkdir(parents=True, exist_ok=True, mode=0o700)
            else:
                local = (self.base / source).resolve()
            mounts[target] = local
        return mounts

    def prepare(self, name: str) -> ServiceProcess:
        service = self.services[name]
        dockerfile = dockerfile_of(service, self.base)
        mounts = self._mounts(name)
        # Files the image copies to an absolute path (the health check script) are where the
        # image put them: here, the repository's file.
        mounts.update({k: v for k, v in image_copies(dockerfile, self.base).items()})
        self.overrides.mounts[name] = mounts
        command = image_command(service, dockerfile)
        if command[:1] != ["python"]:
            raise RehearsalError(f"{name}: runs {command}, not a Python command")
        argv = [sys.executable, *command[1:]]
        own = self.overrides.environment(name, compose_env(service, self.base))
        # The image's WORKDIR holds the sources; here they are found on PYTHONPATH instead, and
        # the working directory is the writable layer.
        own["PYTHONPATH"] = str(self.base)
        env = child_environment(os.environ, (), own)
        return ServiceProcess(
            name=name,
            argv=argv,
            env=env,
            layer=self.run_dir / "containers" / name,
            log=self.run_dir / "logs" / f"{name}.log",
            grace=min(seconds(service.get("stop_grace_period"), 10.0), 30.0),
        )

    def run_job(self, name: str) -> None:
        """A one-shot service: run it to completion, retried as its restart policy allows."""
        job = self.prepare(name)
        policy = str(self.services[name].get("restart", "no"))
        attempts = 1 + (
            int(policy.partition(":")[2] or 3) if policy.startswith("on-failure") else 0
        )
        for attempt in range(1, attempts + 1):
            job.start()
            assert job.process is not None
            try:
                code = job.process.wait(180)
            except subprocess.TimeoutExpired:
                job.stop()
                code = -1
            if code == 0:
                store = self._store_setup_outcome(name)
                said = f"; store database: {store}" if store else ""
                self.report.say(
                    f"{name}: `python {' '.join(job.argv[1:])}` exited 0 (attempt {attempt}){said}"
                )
                return
        raise RehearsalError(f"{name} failed (exit {code}):\n{job.tail()}")

    def start_worker(self, name: str) -> None:
        worker = self.workers.get(name) or self.prepare(name)
        self.workers[name] = worker
        worker.start()

    async def wait_for_workers(self, names: list[str], timeout: float = 60.0) -> None:
        """Until each worker's own process polls its task queue (the SDK's identity is pid@host,
        so a poller left over from the worker's previous process does not count), then run the
        service's compose health check."""
        client = await connect(TemporalSettings(address=self.temporal_address, namespace="default"))
        deadline = time.monotonic() + timeout
        for name in names:
            worker = self.workers[name]
            assert worker.process is not None
            namespace, queue = worker.env["TEMPORAL_NAMESPACE"], worker.env["TEMPORAL_TASK_QUEUE"]
            identity = f"{worker.process.pid}@"
            while True:
                if worker.process.poll() is not None:
                    raise RehearsalError(f"{name} exited:\n{worker.tail()}")
                response = await client.workflow_service.describe_task_queue(
                    DescribeTaskQueueRequest(
                        namespace=namespace,
                        task_queue=TaskQueue(name=queue),
                        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
                    )
                )
                if any(p.identity.startswith(identity) for p in response.pollers):
                    break
                if time.monotonic() > deadline:
                    raise RehearsalError(f"{name} is not polling {namespace}/{queue}")
                await asyncio.sleep(0.2)
            self._healthcheck(name)

    def _healthcheck(self, name: str) -> None:
        test = self.services[name].get("healthcheck", {}).get("test")
        if not test or test[0] != "CMD" or test[1:2] != ["python"]:
            return
        worker = self.workers[name]
        argv = [sys.executable, *(self.overrides.apply(name, arg) for arg in test[2:])]
        result = subprocess.run(
            argv, env=worker.env, capture_output=True, text=True, timeout=30, check=False
        )
        if result.returncode != 0:
            raise RehearsalError(f"{name}: health check failed: {result.stderr.strip()}")

    def stop_workers(self) -> None:
        for worker in reversed(list(self.workers.values())):
            worker.stop()

    def _store_setup_outcome(self, name: str) -> str | None:
        """What the last run of a setup job said about the store database, if it made one."""
        outcome = None
        log = self.run_dir / "logs" / f"{name}.log"
        for line in log.read_text(errors="replace").splitlines():
            if '"store database ready"' in line:
                try:
                    outcome = str(json.loads(line).get("outcome"))
                except ValueError:
                    continue
        return outcome
