"""Traces and metrics for every process, set up once, before the first client or worker.

Traces: OpenTelemetry, through `temporalio.contrib.opentelemetry.OpenTelemetryPlugin` on the
client (workers built from it inherit it), so one turn is one trace from the client's update to
the team's tool activity, across the three namespaces. Spans go to OTLP when the standard
`OTEL_EXPORTER_OTLP_*` variables name an endpoint, and to a JSON-lines file when
`TELEMETRY_TRACES_FILE` is set (`make up` writes `.run/traces.jsonl`, read by `agent trace`).
With neither, no provider is installed and no plugin is added: tracing costs nothing.

Metrics: the Temporal runtime's Prometheus endpoint (`METRICS_BIND_ADDRESS`), which carries the
SDK's own metrics and ours (recorded through `activity.metric_meter()` and the replay-safe
`workflow.metric_meter()`): one scrape target per worker.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_ENV = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")
# Where `make up`'s processes write their spans, relative to the repository (the CLI joins in
# when it finds the file, so `agent trace` sees the client's span too).
LOCAL_TRACES_FILE = Path(".run/traces.jsonl")

# Histogram buckets for our latency and cost metrics, by metric name (the runtime's defaults are
# for milliseconds).
SECONDS_BUCKETS = [
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    3600.0,
]
COST_BUCKETS = [0.0001, 0.001, 0.01, 0.1, 1.0, 10.0]
HISTOGRAM_BUCKETS = {
    "agent_turn_duration_seconds": SECONDS_BUCKETS,
    "agent_model_step_duration_seconds": SECONDS_BUCKETS,
    "agent_tool_execution_duration_seconds": SECONDS_BUCKETS,
    "agent_approval_wait_seconds": SECONDS_BUCKETS,
    "agent_model_step_cost_usd": COST_BUCKETS,
}


class TelemetrySettings(BaseSettings):
    """What a process exports. The OTLP exporter itself reads the standard `OTEL_*` variables
    (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`, ...)."""

    model_config = SettingsConfigDict(**_ENV, env_prefix="")

    metrics_bind_address: str = Field(
        default="",
        description="host:port for the worker's Prometheus /metrics endpoint; empty: off.",
    )
    telemetry_traces_file: Path | None = Field(
        default=None, description="Append finished spans to this JSON-lines file."
    )
    telemetry_capture_content: bool = Field(
        default=False,
        description="Put prompt and reply text in LLM spans. Off: spans carry sizes only.",
    )
    telemetry_temporal_spans: bool = Field(
        default=False,
        description="Also a span for every Temporal operation (StartActivity, RunWorkflow, "
        "HandleUpdate, ...): twice the spans, for debugging the platform itself.",
    )
    otel_exporter_otlp_endpoint: str = ""
    otel_exporter_otlp_traces_endpoint: str = ""
    otel_exporter_otlp_protocol: str = "http/protobuf"
    otel_exporter_otlp_traces_protocol: str = ""
    otel_sdk_disabled: bool = False

    @field_validator("metrics_bind_address")
    @classmethod
    def _check_bind_address(cls, value: str) -> str:
        if value:
            host, sep, port = value.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(
                    f"METRICS_BIND_ADDRESS must be host:port (e.g. 0.0.0.0:9464), not {value!r}"
                )
        return value

    @field_validator("otel_exporter_otlp_protocol", "otel_exporter_otlp_traces_protocol")
    @classmethod
    def _check_protocol(cls, value: str) -> str:
        if value and value != "http/protobuf":
            raise ValueError(
                f"spans are exported over OTLP/HTTP (http/protobuf), not {value!r}: point "
                "OTEL_EXPORTER_OTLP_ENDPOINT at the collector's HTTP port (4318)"
            )
        return value

    @property
    def otlp_enabled(self) -> bool:
        return bool(self.otel_exporter_otlp_endpoint or self.otel_exporter_otlp_traces_endpoint)

    @property
    def tracing_enabled(self) -> bool:
        return not self.otel_sdk_disabled and (
            self.otlp_enabled or self.telemetry_traces_file is not None
        )


_lock = threading.Lock()
_tracing_installed = False
_temporal_spans = False
TRACER_NAME = "durable_agents"


def install_tracing(
    settings: TelemetrySettings, service_name: str, *, http_spans: bool = False
) -> bool:
    """Install the process's replay-safe tracer provider once. Returns whether tracing is on.

    `http_spans` instruments httpx, so a tool's outgoing HTTP calls are in its trace: the team
    workers want it; the orchestrator does not (its model calls have their own `chat` span,
    which is what an HTTP span would repeat, at a cost on every step).

    Called before the first client is made: the plugin that `plugins()` returns reads the global
    provider. A provider already installed (by a test, or an embedding application) is kept.
    """
    global _tracing_installed, _temporal_spans
    if not settings.tracing_enabled:
        return False
    with _lock:
        if _tracing_installed:
            return True
        from opentelemetry import trace
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from temporalio.contrib.opentelemetry import create_tracer_provider

        from shared.trace_file import JsonLinesSpanExporter

        resource = Resource.create(
            {SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", service_name)}
        )
        provider = create_tracer_provider(resource=resource)
        if settings.otlp_enabled:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        if settings.telemetry_traces_file is not None:
            provider.add_span_processor(
                BatchSpanProcessor(JsonLinesSpanExporter(settings.telemetry_traces_file))
            )
        trace.set_tracer_provider(provider)
        _temporal_spans = settings.telemetry_temporal_spans
        if http_spans:
            instrument_http()
        _tracing_installed = True
        return True


def tracing_active() -> bool:
    """Whether this process records spans: checked on every connect, so it imports nothing."""
    return _tracing_installed


def use_tracer_provider(provider: Any, *, temporal_spans: bool = False) -> None:
    """Trace through `provider` (made with `temporalio.contrib.opentelemetry.
    create_tracer_provider`), e.g. one with an in-memory exporter in a test. Once per process,
    as OpenTelemetry allows one global provider."""
    global _tracing_installed, _temporal_spans
    from opentelemetry import trace

    with _lock:
        trace.set_tracer_provider(provider)
        _tracing_installed = True
        _temporal_spans = temporal_spans


def plugins() -> Sequence[Any]:
    """The client plugins for this process: the Temporal tracing plugin when tracing is on.

    It carries the trace context through every update, activity, Nexus operation and workflow
    start (headers), so the spans below join one trace across the namespaces. Its own span per
    Temporal operation doubles a turn's spans and costs ~5% of a one-tool turn (bench.tracing):
    only with TELEMETRY_TEMPORAL_SPANS."""
    if not tracing_active():
        return ()
    from temporalio.contrib.opentelemetry import OpenTelemetryPlugin

    return (OpenTelemetryPlugin(add_temporal_spans=_temporal_spans),)


def traces(client: Any) -> bool:
    """Whether requests through this Temporal client carry a trace (it has the tracing plugin)."""
    if not _tracing_installed:
        return False
    from temporalio.contrib.opentelemetry import OpenTelemetryPlugin

    return any(isinstance(p, OpenTelemetryPlugin) for p in client.config().get("plugins", ()))


class _NoSpan:
    """What the span helpers give outside a trace: attributes go nowhere."""

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def is_recording(self) -> bool:
        return False


@contextmanager
def span_in_trace(
    name: str, attributes: Mapping[str, Any], *, server: bool = False
) -> Iterator[Any]:
    """A span that joins the trace running here (the context the tracing plugin carried in),
    in workflow or ordinary code; nothing outside a trace or without tracing. Yields the span
    (or a stand-in that takes attributes and drops them)."""
    if not _tracing_installed:
        yield _NoSpan()
        return
    from opentelemetry import trace

    if not trace.get_current_span().get_span_context().is_valid:
        yield _NoSpan()
        return
    kind = trace.SpanKind.SERVER if server else trace.SpanKind.INTERNAL
    with _started(name, kind, attributes) as span:
        yield span


@contextmanager
def client_span(name: str, attributes: Mapping[str, Any], *, traced: bool) -> Iterator[Any]:
    """The span of a client's request: a new trace (or a child of the caller's span), when
    `traced` (the client carries trace context: see `traces`)."""
    if not traced:
        yield _NoSpan()
        return
    from opentelemetry import trace

    with _started(name, trace.SpanKind.CLIENT, attributes) as span:
        yield span


@contextmanager
def new_span(name: str, attributes: Mapping[str, Any]) -> Iterator[Any]:
    """A span under the current context, or the root of a new trace outside one."""
    if not _tracing_installed:
        yield _NoSpan()
        return
    from opentelemetry import trace

    with _started(name, trace.SpanKind.INTERNAL, attributes) as span:
        yield span


@contextmanager
def _started(name: str, kind: Any, attributes: Mapping[str, Any]) -> Iterator[Any]:
    from opentelemetry import trace
    from temporalio import workflow

    tracer = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(
        name,
        kind=kind,
        attributes=dict(attributes),
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except BaseException as err:
            if workflow.in_workflow() and not (
                workflow.is_failure_exception(err) or isinstance(err, asyncio.CancelledError)
            ):
                # The workflow was evicted (GeneratorExit) or its task failed: this run of the
                # code is not the one history keeps, so the span must not end here (it is made
                # again, same id, when the workflow replays). The replay-safe span skips ending
                # once it has seen such an exception; it is never exported with it.
                span.record_exception(err)
            else:
                failed(span, err)
            raise


def failed(span: Any, error: BaseException) -> None:
    """Mark a span failed with the error's type only: messages and stack traces may hold a
    tool's or a provider's data, which spans must not carry."""
    from opentelemetry.trace import StatusCode

    span.set_attribute("error.type", type(error).__name__)
    span.set_status(StatusCode.ERROR)


def redact_query(url: str) -> str:
    """A URL with its query values replaced: API keys travel there more often than not."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    if not parts.query:
        return url
    query = urlencode([(key, "REDACTED") for key, _ in parse_qsl(parts.query, True)])
    return urlunsplit(parts._replace(query=query))


def instrument_http() -> None:
    """A span for every httpx request (a tool's outgoing calls), its URL's query redacted."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    HTTPXClientInstrumentor().instrument(
        request_hook=_redact_http_span, async_request_hook=_async_redact_http_span
    )


def _redact_http_span(span: Any, request: Any) -> None:
    if not span.is_recording():
        return
    recorded = getattr(span, "attributes", None) or {}
    # The URL attribute of the HTTP semantic conventions in use: the stable one, the old one.
    for key in ("url.full", "http.url"):
        if key in recorded:
            span.set_attribute(key, redact_query(str(request.url)))


def flush_spans() -> None:
    """Export the spans still batched: processes leave with os._exit, which skips atexit."""
    if not tracing_active():
        return
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    flush = getattr(provider, "force_flush", None)
    if flush is not None:
        flush(2_000)  # a collector that does not answer must not hold a CLI command long


async def _async_redact_http_span(span: Any, request: Any) -> None:
    _redact_http_span(span, request)
