"""docker-compose.yml without Docker: each service's real command, with its real env files, as a
local process. PostgreSQL comes from Debian's packages and the embedded dev server stands in for
the Temporal server; service hostnames and mounts map to local addresses and folders through one
override (`Overrides`), applied to the values of each environment, never to the files.

The observability services stand in too, as far as the rehearsal needs them: the OpenTelemetry
Collector is a local OTLP/HTTP sink that counts the spans each service sends (`OtlpSink`), and
Prometheus's job, scraping every target of its mounted config, is done once at the end
(`LocalCompose.scrape_prometheus_targets`). Jaeger, Prometheus and Grafana themselves are not run.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
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
# A value that is exactly "0.0.0.0:<port>" is an address the service itself listens on (e.g.
# METRICS_BIND_ADDRESS): in its container the port is its own, here every worker shares one host.
WILDCARD_BIND = re.compile(r"0\.0\.0\.0:(\d+)")
# Where the images these stand-ins replace read their configuration (docker-compose.yml mounts it).
OTEL_COLLECTOR_CONFIG = "/etc/otelcol-contrib/config.yaml"
PROMETHEUS_CONFIG = "/etc/prometheus/prometheus.yml"
OTLP_HTTP_PORT = 4318  # the collector's OTLP/HTTP receiver, when its config names no endpoint


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
    # Per service: "0.0.0.0:<container port>" it listens on -> "127.0.0.1:<local port>" (a value
    # that is exactly that bind address is rewritten; see `WILDCARD_BIND`).
    listens: dict[str, dict[str, str]] = field(default_factory=dict)
    # Per service: its own loopback, "localhost:<container port>" or "127.0.0.1:<container port>"
    # (in its container, itself; e.g. a health check's URL) -> its local address.
    loopbacks: dict[str, dict[str, str]] = field(default_factory=dict)

    def apply(self, service: str, value: str) -> str:
        if value in self.listens.get(service, {}):
            return self.listens[service][value]
        for compose_address, address in self.addresses.items():
            value = re.sub(rf"(?<![\w.-]){re.escape(compose_address)}(?!\d)", address, value)
        for own, address in self.loopbacks.get(service, {}).items():
            value = re.sub(rf"(?<![\w.-]){re.escape(own)}(?!\d)", address, value)
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

    def listen(self, service: str, container_port: int, local_port: int) -> str:
        """Give a service's "0.0.0.0:<container_port>" its own local port; other services reach it
        as "<service>:<container_port>", the service itself also on its loopback. Returns the
        local address."""
        address = f"{LOCAL_HOST}:{local_port}"
        self.listens.setdefault(service, {})[f"0.0.0.0:{container_port}"] = address
        self.addresses[f"{service}:{container_port}"] = address
        for loopback in ("localhost", "127.0.0.1"):
            self.loopbacks.setdefault(service, {})[f"{loopback}:{container_port}"] = address
        return address


# ---- the OpenTelemetry Collector's stand-in -------------------------------------------------------


class OtlpSink:
    """Stands in for the OpenTelemetry Collector: accepts OTLP/HTTP (protobuf) exports on a local
    port, answers 200 as the collector does, and counts the spans per `service.name`, so the
    rehearsal can say whose traces would have reached Jaeger."""

    def __init__(self) -> None:
        self.spans: Counter[str] = Counter()
        self.rejected = 0
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding", "").lower() == "gzip":
                    body = gzip.decompress(body)
                if self.path.rstrip("/").endswith("/v1/traces"):
                    sink.record_traces(body)
                # An empty body is the protobuf encoding of an Export*ServiceResponse: all accepted.
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per export would drown the rehearsal's own report

        self._server = ThreadingHTTPServer((LOCAL_HOST, 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def record_traces(self, body: bytes) -> None:
        from google.protobuf.message import DecodeError
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        request = ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
        except DecodeError:
            with self._lock:
                self.rejected += 1
            return
        with self._lock:
            for resource_spans in request.resource_spans:
                service = next(
                    (
                        attribute.value.string_value
                        for attribute in resource_spans.resource.attributes
                        if attribute.key == "service.name"
                    ),
                    "",
                )
                self.spans[service] += sum(len(scope.spans) for scope in resource_spans.scope_spans)


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
    otlp_sinks: dict[str, OtlpSink] = field(default_factory=dict)

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
            *self._server_metrics(name),
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

    def _server_metrics(self, name: str) -> list[str]:
        """The server image's PROMETHEUS_ENDPOINT as the dev server's --metrics-port, on a local
        port that `<name>:<its port>` maps to (so Prometheus's target for it is reachable)."""
        endpoint = compose_env(self.services[name], self.base).get("PROMETHEUS_ENDPOINT", "")
        container_port = endpoint.rpartition(":")[2]
        if not container_port.isdigit():
            return []
        local_port = free_port()
        self.overrides.addresses[f"{name}:{container_port}"] = f"{LOCAL_HOST}:{local_port}"
        return ["--metrics-port", str(local_port)]

    def _stop_server(self) -> None:
        if self.server is not None and self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGTERM)
            try:
                self.server.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.server.pid, signal.SIGKILL)
                self.server.wait(10)

    def start_otel_collector(self, name: str, stack: ExitStack) -> None:
        """The collector's OTLP/HTTP receiver, on the port its mounted config names, as a sink."""
        sink = OtlpSink()
        sink.start()
        stack.callback(sink.stop)
        self.otlp_sinks[name] = sink
        container_port = self._otlp_http_port(name)
        self.overrides.addresses[f"{name}:{container_port}"] = f"{LOCAL_HOST}:{sink.port}"
        self.report.say(
            f"{name}: a local OTLP/HTTP sink for {self.services[name]['image']} on "
            f"{LOCAL_HOST}:{sink.port} (stands for {name}:{container_port}; counts spans)"
        )

    def _otlp_http_port(self, name: str) -> int:
        config = self._mounted_yaml(name, OTEL_COLLECTOR_CONFIG)
        protocols = ((config.get("receivers") or {}).get("otlp") or {}).get("protocols") or {}
        endpoint = str((protocols.get("http") or {}).get("endpoint") or "")
        port = endpoint.rpartition(":")[2]
        return int(port) if port.isdigit() else OTLP_HTTP_PORT

    def _mounted_yaml(self, name: str, container_path: str) -> dict[str, Any]:
        """A config file the compose file bind-mounts into a service, read from the repository."""
        local = None
        for volume in self.services[name].get("volumes", []):
            if isinstance(volume, dict):
                source, target = str(volume.get("source", "")), str(volume.get("target", ""))
            else:
                source, _, rest = str(volume).partition(":")
                target = rest.split(":")[0]
            if target == container_path and source not in self.volumes:
                local = (self.base / source).resolve()
        if local is None or not local.is_file():
            return {}
        data = YAML(typ="safe").load(local.read_text())
        return data if isinstance(data, dict) else {}

    def spans_received(self) -> dict[str, int]:
        """Spans per service.name that reached the collector stand-ins so far."""
        total: Counter[str] = Counter()
        for sink in self.otlp_sinks.values():
            total.update(sink.spans)
        return dict(sorted(total.items()))

    def scrape_prometheus_targets(self, name: str) -> dict[str, dict[str, Any]]:
        """What the Prometheus service would scrape, per job: every static target of its mounted
        config, reached through the overrides, and how many agent_* and temporal_* samples it
        served. A target on a service that is not run here is `not run`; one on a service that
        runs here but listens on no such port is `nothing listens there` (a port mismatch)."""
        config = self._mounted_yaml(name, PROMETHEUS_CONFIG)
        running = set(self.workers) | {
            address.rpartition(":")[0] for address in self.overrides.addresses
        }
        results: dict[str, dict[str, Any]] = {}
        with httpx.Client(timeout=5.0, trust_env=False) as client:  # no proxy for 127.0.0.1
            for job in config.get("scrape_configs") or []:
                path = str(job.get("metrics_path", "/metrics"))
                for static in job.get("static_configs") or []:
                    for target in static.get("targets") or []:
                        key = f"{job['job_name']} {target}"
                        address = self.overrides.apply(name, str(target))
                        if address == str(target):
                            host = str(target).rpartition(":")[0]
                            outcome = "nothing listens there" if host in running else "not run"
                            results[key] = {"outcome": outcome}
                            continue
                        results[key] = self._scrape(client, f"http://{address}{path}")
        return results

    @staticmethod
    def _scrape(client: httpx.Client, url: str) -> dict[str, Any]:
        try:
            response = client.get(url)
        except httpx.HTTPError as err:
            return {"outcome": "unreachable", "error": type(err).__name__}
        if response.status_code != 200:
            return {"outcome": f"HTTP {response.status_code}"}
        samples = [line for line in response.text.splitlines() if line and not line.startswith("#")]
        return {
            "outcome": "ok",
            "agent_samples": sum(line.startswith("agent_") for line in samples),
            "temporal_samples": sum(line.startswith("temporal_") for line in samples),
        }

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
        container_env = compose_env(service, self.base)
        for value in container_env.values():
            bind = WILDCARD_BIND.fullmatch(value)
            if bind and value not in self.overrides.listens.get(name, {}):
                # Kept across restarts: a recreated container listens on the same port.
                self.overrides.listen(name, int(bind.group(1)), free_port())
        own = self.overrides.environment(name, container_env)
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
