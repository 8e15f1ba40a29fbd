"""Spans as JSON lines: what `make up`'s processes write to `.run/traces.jsonl` and `agent trace`
reads. Imported only by processes that trace (the OpenTelemetry SDK costs ~130 ms to import)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult


class JsonLinesSpanExporter(SpanExporter):
    """Appends each finished span as one JSON object per line (see `span_record`).

    Spans may hold tool error messages (and prompts, if content capture is on): the file is
    created readable by its owner only. Several processes share the file (the workers and the CLI): each batch is one `write` to a
    descriptor opened with O_APPEND, which Linux appends whole, so lines never interleave."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_record(span), default=str) + "\n" for span in spans)
        descriptor = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(descriptor, lines.encode("utf-8"))
        finally:
            os.close(descriptor)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """One finished span as `agent trace` reads it: ids in hex, times in epoch nanoseconds."""
    context = span.get_span_context()
    assert context is not None, "a finished span has a context"
    parent = span.parent
    return {
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_id": f"{parent.span_id:016x}" if parent is not None else None,
        "name": span.name,
        "service": span.resource.attributes.get("service.name", ""),
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
    }
