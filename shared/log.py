"""structlog set-up shared by every process: console lines in development, JSON in production.

Context (namespace, workflow id, conversation id) is bound with contextvars so every line logged
while handling a Nexus operation, activity or CLI command carries it without being passed around.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

_configured = False


def configure_logging(*, level: str | None = None, fmt: str | None = None) -> None:
    """Configure structlog and the stdlib root logger once per process.

    `LOG_FORMAT=json` switches to one JSON object per line; anything else gives console output.
    """
    global _configured
    if _configured:
        return
    _configured = True
    level_name = (level or os.environ.get("LOG_LEVEL", "INFO")).upper()
    numeric_level = logging.getLevelNamesMapping().get(level_name, logging.INFO)
    json_output = (fmt or os.environ.get("LOG_FORMAT", "console")).lower() == "json"

    shared_processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            *shared_processors,
            structlog.processors.format_exc_info if json_output else _noop,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Route the Temporal SDK's stdlib logging through the same renderer.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ],
            foreign_pre_chain=[*shared_processors, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric_level, logging.INFO) if level is None else numeric_level)
    logging.getLogger("opentelemetry.context").addFilter(_evicted_workflow_detach)


def _evicted_workflow_detach(record: logging.LogRecord) -> bool:
    """Drop OpenTelemetry's "Failed to detach context" from workflows the worker evicts.

    A traced workflow evicted from the worker's cache (shutdown, cache pressure) has its
    coroutines closed from another context while spans are current in them; OpenTelemetry then
    logs a traceback per span although nothing is lost (the spans of an evicted run are made
    again, with the same ids, when it is replayed)."""
    exc = record.exc_info[1] if record.exc_info else None
    evicted = exc is not None and isinstance(exc.__context__, GeneratorExit)
    return not (record.getMessage() == "Failed to detach context" and evicted)


def _noop(_: Any, __: str, event_dict: Any) -> Any:
    return event_dict


def get_logger(name: str | None = None, **initial: Any) -> Any:
    return structlog.get_logger(name, **initial)


bind_context = structlog.contextvars.bind_contextvars
bound_context = structlog.contextvars.bound_contextvars
