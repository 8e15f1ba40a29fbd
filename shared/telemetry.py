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

import os
import threading
from collections.abc import Sequence
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
    otel_exporter_otlp_endpoint: str = ""
    otel_exporter_otlp_traces_endpoint: str = ""
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


def install_tracing(settings: TelemetrySettings, service_name: str) -> bool:
    """Install the process's replay-safe tracer provider once. Returns whether tracing is on.

    Called before the first client is made: the plugin that `plugins()` returns reads the global
    provider. A provider already installed (by a test, or an embedding application) is kept.
    """
    global _tracing_installed
    if not settings.tracing_enabled:
        return False
    with _lock:
        if _tracing_installed:
            return True
        from opentelemetry import trace
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
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
        HTTPXClientInstrumentor().instrument()
        _tracing_installed = True
        return True


def tracing_active() -> bool:
    """Whether this process records spans: checked on every connect, so it imports nothing."""
    return _tracing_installed


def use_tracer_provider(provider: Any) -> None:
    """Trace through `provider` (made with `temporalio.contrib.opentelemetry.
    create_tracer_provider`), e.g. one with an in-memory exporter in a test. Once per process,
    as OpenTelemetry allows one global provider."""
    global _tracing_installed
    from opentelemetry import trace

    with _lock:
        trace.set_tracer_provider(provider)
        _tracing_installed = True


def plugins() -> Sequence[Any]:
    """The client plugins for this process: the Temporal tracing plugin when tracing is on."""
    if not tracing_active():
        return ()
    from temporalio.contrib.opentelemetry import OpenTelemetryPlugin

    return (OpenTelemetryPlugin(add_temporal_spans=True),)


def flush_spans() -> None:
    """Export the spans still batched: processes leave with os._exit, which skips atexit."""
    if not tracing_active():
        return
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    flush = getattr(provider, "force_flush", None)
    if flush is not None:
        flush(5_000)
