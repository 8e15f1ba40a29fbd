"""Offline checks of docker-compose.yml's self-hosted observability: the OpenTelemetry Collector,
Jaeger, Prometheus and Grafana services, their configs in deploy/, and the telemetry variables of
the worker env files.

No Docker engine here: the configs are read as data and checked against each other and against
the workers' contract (shared.telemetry: METRICS_BIND_ADDRESS, the standard OTEL_* variables, and
the metric names below). Where a real tool is installed (promtool from Debian's `prometheus`
package), it checks the config too.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from ruamel.yaml import YAML

from infrastructure.compose_file import compose_env, depends_on, load_compose
from infrastructure.compose_local import OtlpSink, Overrides
from infrastructure.compose_rehearsal import OTEL_COLLECTOR_IMAGES, SKIPPED_IMAGES
from shared.telemetry import TelemetrySettings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "agent-platform.json"

# Compose service -> the service name it reports (OTEL_SERVICE_NAME) and its Prometheus job.
WORKERS = {"orchestrator-worker": "orchestrator", "it-worker": "it", "finance-worker": "finance"}

# ---- the metric contract ----------------------------------------------------------------------
# As the Temporal runtime's Prometheus exporter serves them: counters end in _total, histograms
# are served as _bucket/_sum/_count. Each name maps to the labels it carries besides the ones every
# series has (COMMON_LABELS). Kept here, on purpose, rather than imported from the workers: the
# dashboard is checked against the contract, not against whatever the code happens to emit.
AGENT_COUNTERS: dict[str, set[str]] = {
    "agent_turns_total": {"outcome"},
    "agent_model_steps_total": {"model", "outcome"},
    "agent_tokens_total": {"model", "kind"},
    "agent_unpriced_model_steps_total": {"model"},
    "agent_tool_calls_total": {"service", "tool", "outcome"},
    "agent_tool_executions_total": {"service", "tool", "outcome"},
    "agent_breaker_transitions_total": {"endpoint", "state"},
    "agent_compactions_total": set(),
    "agent_continue_as_new_total": set(),
    "agent_budget_stops_total": {"scope"},
}
AGENT_HISTOGRAMS: dict[str, set[str]] = {
    "agent_turn_duration_seconds": {"outcome"},
    "agent_model_step_duration_seconds": {"model"},
    "agent_model_step_cost_usd": {"model"},
    "agent_tool_execution_duration_seconds": {"service", "tool"},
    "agent_approval_wait_seconds": {"service", "tool", "verdict"},
}
TEMPORAL_SDK_COUNTERS: dict[str, set[str]] = {
    "temporal_activity_execution_failed_total": {"activity_type", "workflow_type"},
    "temporal_request_total": {"operation"},
}
# The SDK's histograms are in seconds here (the runtime's Prometheus exporter, as configured by
# shared.telemetry), e.g. temporal_workflow_task_execution_latency_bucket{le="0.001"}.
TEMPORAL_SDK_HISTOGRAMS: dict[str, set[str]] = {
    "temporal_workflow_task_execution_latency": {"workflow_type"},
    "temporal_nexus_task_execution_latency": set(),
}
# On every series: the runtime's service_name, the SDK's namespace and task queue, and the job and
# instance labels Prometheus adds to whatever it scrapes.
COMMON_LABELS = {"service_name", "namespace", "task_queue", "job", "instance"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def exported_metrics() -> dict[str, set[str]]:
    """Every series name a worker serves -> the labels it may be grouped or filtered by."""
    exported = {**AGENT_COUNTERS, **TEMPORAL_SDK_COUNTERS}
    for name, labels in {**AGENT_HISTOGRAMS, **TEMPORAL_SDK_HISTOGRAMS}.items():
        for suffix in HISTOGRAM_SUFFIXES:
            exported[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return {name: labels | COMMON_LABELS for name, labels in exported.items()}


# ---- reading the files ------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    return load_compose()


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def service_with_image(prefix: str) -> tuple[str, dict[str, Any]]:
    matches = [(n, s) for n, s in services().items() if str(s.get("image", "")).startswith(prefix)]
    assert len(matches) == 1, f"exactly one service runs {prefix}*"
    return matches[0]


def bind_mounts(service: dict[str, Any]) -> dict[PurePosixPath, Path]:
    """Container path -> repository path, for the service's bind mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, _, rest = str(volume).partition(":")
        if source.startswith((".", "/")):
            mounts[PurePosixPath(rest.split(":")[0])] = (ROOT / source).resolve()
    return mounts


def mounted_file(service: dict[str, Any], container_path: str) -> Path:
    """The repository file the service sees at `container_path`, directly or in a mounted folder."""
    wanted = PurePosixPath(container_path)
    for target, source in bind_mounts(service).items():
        if wanted == target or wanted.is_relative_to(target):
            path = source / wanted.relative_to(target)
            assert path.is_file(), f"{container_path} is mounted from {path}, which is missing"
            return path
    raise AssertionError(f"nothing is mounted at {container_path}")


def load_yaml(path: Path) -> dict[str, Any]:
    data = YAML(typ="safe").load(path.read_text())
    assert isinstance(data, dict), f"{path} is not a mapping"
    return data


def prometheus_config() -> dict[str, Any]:
    _, prometheus = service_with_image("prom/prometheus:")
    return load_yaml(mounted_file(prometheus, "/etc/prometheus/prometheus.yml"))


def collector_config() -> tuple[str, dict[str, Any]]:
    name, collector = service_with_image("otel/opentelemetry-collector")
    flags = [str(arg) for arg in collector.get("command", [])]
    configs = [flag.removeprefix("--config=") for flag in flags if flag.startswith("--config=")]
    assert len(configs) == 1, "the collector is started with the mounted config file"
    return name, load_yaml(mounted_file(collector, configs[0]))


def grafana_provisioning(kind: str) -> list[dict[str, Any]]:
    """Every provisioning file of one kind (datasources, dashboards) Grafana reads."""
    _, grafana = service_with_image("grafana/grafana:")
    folder = PurePosixPath("/etc/grafana/provisioning") / kind
    sources = [source for target, source in bind_mounts(grafana).items() if target == folder]
    assert sources, f"deploy/grafana provisioning for {kind} is not mounted at {folder}"
    files = sorted(p for p in sources[0].iterdir() if p.suffix in (".yaml", ".yml"))
    assert files, f"{sources[0]} holds no provisioning file"
    return [load_yaml(path) for path in files]


def observability_services() -> set[str]:
    prefixes = ("otel/", "jaegertracing/", "prom/", "grafana/")
    return {n for n, s in services().items() if str(s.get("image", "")).startswith(prefixes)}


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))  # panels inside collapsed rows


def scrape_targets() -> dict[str, list[str]]:
    """Prometheus job -> its static targets."""
    jobs: dict[str, list[str]] = {}
    for job in prometheus_config()["scrape_configs"]:
        targets = [t for static in job.get("static_configs", []) for t in static["targets"]]
        jobs[job["job_name"]] = targets
    return jobs


# ---- PromQL: the series names and grouping labels a query uses ---------------------------------
# The dashboard's queries are plain PromQL; these are the parts that can name a series or a label.
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
PROMQL_AND_OR = {"and", "or", "unless", "offset"}
IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def promql_series(expr: str) -> set[str]:
    """Series names an expression selects: identifiers that are neither a function call, a
    keyword, a label inside {...} or by/without (...), nor a range or a string."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values and strings
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors: [5m], [$__rate_interval]
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\w+", "", text)  # Grafana variables
    names = set()
    for match in IDENTIFIER.finditer(text):
        name = match.group(0)
        following = text[match.end() :].lstrip()
        if following.startswith("(") or name in PROMQL_KEYWORDS | PROMQL_AND_OR:
            continue  # a function or aggregation, not a series
        names.add(name)
    return names


def promql_grouping_labels(expr: str) -> set[str]:
    """Labels an expression groups or matches by: by/without/on/ignoring lists and {...} keys."""
    labels: set[str] = set()
    for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        labels |= {label.strip() for label in group.split(",") if label.strip()}
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))
    return labels


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every Prometheus query of the dashboard."""
    return [
        (panel.get("title", ""), target["expr"])
        for panel in all_panels(dashboard()["panels"])
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def query_problems(expr: str) -> list[str]:
    """What is wrong with a query against the metric contract (empty: nothing)."""
    exported = exported_metrics()
    series = promql_series(expr)
    problems = [f"{name} is not a metric the workers export" for name in series - set(exported)]
    if not series:
        problems.append("selects no series")
    known = [exported[name] for name in series if name in exported]
    for label in promql_grouping_labels(expr):
        if known and not all(label in labels for labels in known):
            problems.append(f"label {label} is not on every series it uses ({sorted(series)})")
    return problems


# ---- tests: the dashboard ----------------------------------------------------------------------


def test_dashboard_queries_use_only_the_metric_contract() -> None:
    queries = dashboard_queries()
    assert queries, "the dashboard queries Prometheus"
    problems = [
        f"{title}: {problem}: {expr}" for title, expr in queries for problem in query_problems(expr)
    ]
    assert problems == []


def test_dashboard_covers_the_agent_metrics() -> None:
    """Every agent_* metric of the contract is on a panel: a metric nobody looks at is a gap."""
    used = {
        re.sub(r"_(bucket|sum|count)$", "", name)
        for _, expr in dashboard_queries()
        for name in promql_series(expr)
    }
    missing = (set(AGENT_COUNTERS) | set(AGENT_HISTOGRAMS)) - used
    assert missing == set()
    assert any(name.startswith("temporal_") for name in used), "a Temporal SDK panel or two"


def test_query_check_bites() -> None:
    """The checks above must be able to fail: a misspelt metric, a label the metric does not
    carry, and a query that selects nothing are caught; functions and keywords are not series."""
    assert query_problems("sum by (outcome) (rate(agent_turns_total[5m]))") == []
    assert (
        query_problems(
            "histogram_quantile(0.95, sum by (le, model) "
            "(rate(agent_model_step_duration_seconds_bucket[$__rate_interval])))"
        )
        == []
    )
    assert query_problems('sum(increase(agent_model_step_cost_usd_sum{model="x"}[1h]))') == []
    assert query_problems("sum(rate(agent_turn_total[5m]))") == [
        "agent_turn_total is not a metric the workers export"
    ]
    assert query_problems("sum by (model) (rate(agent_turns_total[5m]))") != []
    assert query_problems('sum(rate(agent_turns_total{modle="x"}[5m]))') != []
    assert query_problems("vector(1)") == ["selects no series"]
    assert promql_series("sum without (job) (agent_tokens_total) or on (model) vector(0)") == {
        "agent_tokens_total"
    }


def test_dashboard_is_provisioned_with_a_stable_identity() -> None:
    data = dashboard()
    assert data["uid"] == "agent-platform"
    assert data["schemaVersion"] >= 36
    panels = list(all_panels(data["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    # No two panels share a cell of the 24-column grid (Grafana would move one silently).
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, f"{panel['title']} leaves the grid"
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_dashboard_data_sources_are_provisioned() -> None:
    provisioned = {
        source["uid"]: source["type"]
        for config in grafana_provisioning("datasources")
        for source in config["datasources"]
    }
    assert set(provisioned.values()) >= {"prometheus", "jaeger"}
    used = 0
    for panel in all_panels(dashboard()["panels"]):
        for holder in [panel, *panel.get("targets", [])]:
            source = holder.get("datasource")
            if source is None:
                continue
            assert isinstance(source, dict), f"{panel['title']}: refer to a data source by uid"
            assert provisioned.get(source["uid"]) == source["type"], (
                f"{panel['title']}: data source {source} is not provisioned"
            )
            used += 1
    assert used


def test_grafana_data_sources_point_at_the_compose_services() -> None:
    for config in grafana_provisioning("datasources"):
        for source in config["datasources"]:
            host = re.match(r"https?://([^:/]+)", source["url"])
            assert host and host.group(1) in services(), f"{source['name']}: {source['url']}"
            assert "secureJsonData" not in source and "basicAuthPassword" not in source


def test_dashboard_provider_loads_the_mounted_dashboard() -> None:
    _, grafana = service_with_image("grafana/grafana:")
    providers = [p for config in grafana_provisioning("dashboards") for p in config["providers"]]
    assert providers
    for provider in providers:
        folder = provider["options"]["path"]
        assert mounted_file(grafana, f"{folder}/{DASHBOARD.name}") == DASHBOARD.resolve()
    home = grafana["environment"].get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert mounted_file(grafana, home) == DASHBOARD.resolve()


def test_grafana_lets_anonymous_users_view_only_and_holds_no_secret() -> None:
    _, grafana = service_with_image("grafana/grafana:")
    environment = {str(k): str(v) for k, v in grafana["environment"].items()}
    if environment.get("GF_AUTH_ANONYMOUS_ENABLED") == "true":
        assert environment.get("GF_AUTH_ANONYMOUS_ORG_ROLE") == "Viewer"
    assert not [key for key in environment if re.search(r"PASSWORD|SECRET|TOKEN|KEY$", key)]


# ---- tests: Prometheus -------------------------------------------------------------------------


def test_prometheus_scrapes_every_worker_on_its_metrics_port() -> None:
    jobs = scrape_targets()
    for name, service in services().items():
        if "build" not in service:
            continue
        bind = compose_env(service, ROOT).get("METRICS_BIND_ADDRESS")
        if name in WORKERS:
            assert bind, f"{name} serves no metrics (METRICS_BIND_ADDRESS unset)"
        if not bind:
            continue
        settings = TelemetrySettings.model_validate({"metrics_bind_address": bind})
        port = settings.metrics_bind_address.rpartition(":")[2]
        job = WORKERS.get(name, name)
        assert jobs.get(job) == [f"{name}:{port}"], (
            f"Prometheus job {job} should scrape {name}:{port} (its METRICS_BIND_ADDRESS)"
        )


def test_prometheus_targets_are_compose_services_that_listen_there() -> None:
    """Every target is a compose service (or Prometheus itself) on a port it serves metrics on."""
    temporal_name, temporal = service_with_image("temporalio/server:")
    server_endpoint = str(temporal.get("environment", {}).get("PROMETHEUS_ENDPOINT", ""))
    for job, targets in scrape_targets().items():
        for target in targets:
            host, _, port = target.rpartition(":")
            if host == "localhost":
                assert job == "prometheus"
                continue
            assert host in services(), f"job {job}: {host} is not a compose service"
            if host == temporal_name:
                assert server_endpoint.rpartition(":")[2] == port, (
                    f"the server serves metrics on {server_endpoint or 'no port'}, not {port}"
                )
            elif host in WORKERS:
                bind = compose_env(services()[host], ROOT)["METRICS_BIND_ADDRESS"]
                assert bind.rpartition(":")[2] == port


def test_promtool_accepts_the_prometheus_config() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    result = subprocess.run(
        [promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def grafana_to_promql(expr: str) -> str:
    """A dashboard query as Prometheus receives it: Grafana's interval variables filled in."""
    return re.sub(r"\$__(rate_interval|interval|range)\b", "5m", expr)


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each query, as a recording rule, through Prometheus's own PromQL parser."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    rules = [
        {"record": f"dashboard:query_{index}", "expr": grafana_to_promql(expr)}
        for index, (_, expr) in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))  # JSON is YAML
    result = subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "broken-rules.yml"
    broken.write_text(
        json.dumps({"groups": [{"name": "b", "rules": [{"record": "b:x", "expr": "sum by (("}]}]})
    )
    assert subprocess.run([promtool, "check", "rules", str(broken)], capture_output=True).returncode


# ---- tests: the collector and the worker env files ----------------------------------------------


def test_collector_pipelines_use_defined_components() -> None:
    _, config = collector_config()
    service = config["service"]
    for extension in service.get("extensions", []):
        assert extension in (config.get("extensions") or {}), f"extension {extension} undefined"
    assert "traces" in {name.split("/")[0] for name in service["pipelines"]}
    for name, pipeline in service["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in (config.get(kind) or {}), (
                    f"pipeline {name}: {kind[:-1]} {component} is not defined"
                )
        assert pipeline["receivers"] and pipeline["exporters"], f"pipeline {name} is incomplete"
        processors = pipeline.get("processors", [])
        if "memory_limiter" in processors:
            assert processors[0] == "memory_limiter", "the memory limiter must come first"


def test_collector_listens_for_other_containers_and_exports_to_jaeger() -> None:
    """From collector 0.104 a receiver without an endpoint listens on localhost only, which no
    worker container reaches: the endpoints must be explicit and bind every interface."""
    name, config = collector_config()
    protocols = config["receivers"]["otlp"]["protocols"]
    for protocol in ("http", "grpc"):
        assert protocols[protocol]["endpoint"].startswith("0.0.0.0:"), protocol
    jaeger_name, _ = service_with_image("jaegertracing/")
    for exporter, settings in config["exporters"].items():
        if exporter.split("/")[0] == "otlp":
            assert settings["endpoint"] == f"{jaeger_name}:4317", "Jaeger takes OTLP/gRPC on 4317"
    assert depends_on(services()[name]).get(jaeger_name) is not None


def test_worker_env_files_send_traces_to_the_collector() -> None:
    name, config = collector_config()
    http_port = config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].rpartition(":")[2]
    for compose_name, service_name in WORKERS.items():
        env = compose_env(services()[compose_name], ROOT)
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://{name}:{http_port}", compose_name
        assert env["OTEL_SERVICE_NAME"] == service_name
        settings = TelemetrySettings.model_validate(
            {
                key.lower(): value
                for key, value in env.items()
                if key.lower() in TelemetrySettings.model_fields
            }
        )
        assert settings.tracing_enabled and settings.metrics_bind_address
        assert settings.telemetry_capture_content is False, "prompt text stays out of spans"
        assert not depends_on(services()[compose_name]).keys() & observability_services(), (
            "telemetry never gates a worker's start"
        )


def test_observability_images_are_known_to_the_compose_rehearsal() -> None:
    """The rehearsal refuses an image it has no stand-in for: every image here is handled."""
    handled = (
        "postgres:",
        "temporalio/server:",
        "temporalio/admin-tools:",
        *SKIPPED_IMAGES,
        *OTEL_COLLECTOR_IMAGES,
    )
    for name, service in services().items():
        if "image" in service:
            assert str(service["image"]).startswith(handled), f"{name}: {service['image']}"


# ---- the rehearsal's stand-ins -------------------------------------------------------------------


def test_overrides_give_each_service_its_own_listen_port() -> None:
    overrides = Overrides()
    it = overrides.listen("it-worker", 9464, 40101)
    finance = overrides.listen("finance-worker", 9464, 40102)
    assert overrides.apply("it-worker", "0.0.0.0:9464") == it == "127.0.0.1:40101"
    assert overrides.apply("finance-worker", "0.0.0.0:9464") == finance
    # Another service reaches it by its compose name, as Prometheus does.
    assert overrides.apply("prometheus", "it-worker:9464") == it
    # Only the exact bind address of that service is rewritten.
    assert overrides.apply("orchestrator-worker", "0.0.0.0:9464") == "0.0.0.0:9464"
    assert overrides.apply("it-worker", "0.0.0.0:94640") == "0.0.0.0:94640"
    assert overrides.apply("it-worker", "http://0.0.0.0:9464/x") == "http://0.0.0.0:9464/x"
    # In its own container, its loopback is itself (a health check's URL); not in another's.
    assert overrides.apply("it-worker", "http://127.0.0.1:9464/metrics") == f"http://{it}/metrics"
    assert overrides.apply("it-worker", "localhost:9464") == it
    assert overrides.apply("finance-worker", "localhost:9464") == finance
    assert overrides.apply("orchestrator-worker", "localhost:9464") == "localhost:9464"
    assert overrides.apply("it-worker", "127.0.0.1:94640") == "127.0.0.1:94640"


def test_collector_stand_in_counts_spans_from_a_real_otlp_exporter() -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    sink = OtlpSink()
    sink.start()
    try:
        for service in ("orchestrator", "it"):
            provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
            exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{sink.port}/v1/traces")
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            tracer = provider.get_tracer(__name__)
            for _ in range(2 if service == "orchestrator" else 1):
                with tracer.start_as_current_span("turn"):
                    pass
            provider.shutdown()
        deadline = time.monotonic() + 5
        while sum(sink.spans.values()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert dict(sink.spans) == {"orchestrator": 2, "it": 1}
        assert sink.rejected == 0
    finally:
        sink.stop()
