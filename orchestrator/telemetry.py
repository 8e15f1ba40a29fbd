"""The conversation's metrics and spans, recorded from workflow code.

Metrics go through `workflow.metric_meter()`, which records nothing while a workflow replays, so
a worker restart does not count a turn twice; they reach the worker's Prometheus endpoint (see
shared.telemetry). Labels are bounded: outcome, model, team service, tool name as the team
publishes it (never the model's guess), endpoint. Never a conversation id.

Spans use OpenTelemetry directly: with `OpenTelemetryPlugin` on the worker's client, spans made
in workflow code get deterministic ids and are not exported again when the workflow replays.
Spans are made only inside a trace (a worker whose client has the tracing plugin); without
tracing in this process, none at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from opentelemetry import context as otel_context
    from opentelemetry import trace

    from orchestrator.models import BUDGET_EXCEEDED_ERROR, Usage
    from shared.telemetry import new_span, span_in_trace, tracing_active

T = TypeVar("T")
TraceContext = otel_context.Context

# Metric names as Prometheus shows them (the runtime adds `_total` to counters).
TURNS = "agent_turns"
TURN_DURATION = "agent_turn_duration_seconds"
MODEL_STEPS = "agent_model_steps"
MODEL_STEP_DURATION = "agent_model_step_duration_seconds"
TOKENS = "agent_tokens"
MODEL_STEP_COST = "agent_model_step_cost_usd"
UNPRICED_STEPS = "agent_unpriced_model_steps"
TOOL_CALLS = "agent_tool_calls"
BREAKER_TRANSITIONS = "agent_breaker_transitions"
APPROVAL_WAIT = "agent_approval_wait_seconds"
COMPACTIONS = "agent_compactions"
CONTINUE_AS_NEW = "agent_continue_as_new"
BUDGET_STOPS = "agent_budget_stops"


def _count(name: str, description: str, attributes: Mapping[str, str], value: int = 1) -> None:
    workflow.metric_meter().create_counter(name, description).add(value, dict(attributes))


def _observe(name: str, description: str, unit: str, value: float, **attributes: str) -> None:
    histogram = workflow.metric_meter().create_histogram_float(name, description, unit)
    histogram.record(value, attributes)


def turn_finished(outcome: str, seconds: float) -> None:
    _count(TURNS, "Turns answered, by outcome (ok, error, cancelled)", {"outcome": outcome})
    _observe(
        TURN_DURATION, "Turn latency, message accepted to answer", "s", seconds, outcome=outcome
    )


def model_step(model: str, outcome: str, seconds: float, usage: Usage | None = None) -> None:
    _count(MODEL_STEPS, "Model steps, by model and outcome", {"model": model, "outcome": outcome})
    _observe(MODEL_STEP_DURATION, "Model step latency", "s", seconds, model=model)
    if usage is None:
        return
    for kind, tokens in (("prompt", usage.prompt_tokens), ("completion", usage.completion_tokens)):
        if tokens:
            _count(TOKENS, "Tokens, by model and kind", {"model": model, "kind": kind}, tokens)
    if usage.unpriced_steps:
        _count(UNPRICED_STEPS, "Model steps with no price in LiteLLM's map", {"model": model})
    else:
        _observe(
            MODEL_STEP_COST,
            "Cost of a model step (sum: dollars)",
            "USD",
            usage.cost_usd,
            model=model,
        )


def model_step_failed(model: str, error: BaseException, seconds: float) -> None:
    """A step that ended the turn with an error; a budget's refusal is counted as such."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, ApplicationError) and cause.type == BUDGET_EXCEEDED_ERROR:
        scope = cause.details[0] if cause.details else "conversation"
        budget_stop(str(scope) if scope in ("user", "conversation") else "conversation")
        return
    model_step(model, "error", seconds)


def compaction() -> None:
    _count(COMPACTIONS, "Older turns summarised to fit the context window", {})


def tool_call(service: str, tool: str, outcome: str) -> None:
    _count(
        TOOL_CALLS,
        "Tool calls as the conversation saw them, by team service, tool and outcome",
        {"service": service, "tool": tool, "outcome": outcome},
    )


def breaker_transition(endpoint: str, state: str) -> None:
    _count(
        BREAKER_TRANSITIONS,
        "Circuit breaker opened or closed",
        {"endpoint": endpoint, "state": state},
    )


def approval_decided(service: str, tool: str, verdict: str, seconds: float) -> None:
    _observe(
        APPROVAL_WAIT,
        "Time a gated call waited for its decision",
        "s",
        seconds,
        service=service,
        tool=tool,
        verdict=verdict,
    )


def continued_as_new() -> None:
    _count(CONTINUE_AS_NEW, "Conversation runs continued as new", {})


def budget_stop(scope: str) -> None:
    _count(BUDGET_STOPS, "Turns stopped by a budget before the model call", {"scope": scope})


# ---- spans -------------------------------------------------------------------------------------
def current_context() -> otel_context.Context:
    """The trace context of the code running now (an update handler's, for a message)."""
    return otel_context.get_current()


def start_in_context(
    parent: otel_context.Context | None,
    name: str,
    attributes: Mapping[str, Any],
    work: Coroutine[Any, Any, T],
    *,
    root: bool = False,
) -> asyncio.Task[T]:
    """Start `work` as a task whose spans are children of a span `name` under `parent` (the
    message's update context), or of a new trace's root span `name` when the message came
    without one (an untraced client, a turn carried across continue-as-new) and `root` says
    this worker traces.

    The conversation's main loop answers messages queued by update handlers: without this, a
    turn's spans would hang off the run's span instead of the message's update.
    """
    if parent is None or not _in_a_trace(parent):
        if not (root and tracing_active()):
            return asyncio.create_task(work)
        parent = otel_context.Context()

    async def traced() -> T:
        with new_span(name, attributes):
            return await work

    token = otel_context.attach(parent) if parent is not None else None
    try:
        return asyncio.create_task(traced())  # the task copies the context attached now
    finally:
        if token is not None:
            otel_context.detach(token)


@contextmanager
def detached() -> Iterator[None]:
    """Run the block outside any trace (an empty context), when this process traces."""
    if not tracing_active():
        yield
        return
    token = otel_context.attach(otel_context.Context())
    try:
        yield
    finally:
        otel_context.detach(token)


@contextmanager
def attached(context: otel_context.Context | None) -> Iterator[None]:
    """Run the block in `context` (a message's trace), or in the current one if None."""
    if context is None or not _in_a_trace(context):
        yield
        return
    token = otel_context.attach(context)
    try:
        yield
    finally:
        otel_context.detach(token)


def span(name: str, **attributes: Any) -> AbstractContextManager[Any]:
    """A span in workflow code, inside the trace the workflow runs in (none outside one)."""
    return span_in_trace(name, attributes)


def _in_a_trace(context: otel_context.Context | None) -> bool:
    """Whether `context` (or the current one) is inside a trace: our spans join a turn's trace,
    made by the tracing plugin on the worker's client; a worker without it makes none."""
    if not tracing_active():
        return False
    return trace.get_current_span(context).get_span_context().is_valid
