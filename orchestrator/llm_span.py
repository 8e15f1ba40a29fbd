"""The span of one model call, after the OpenTelemetry GenAI semantic conventions.

Attribute names are written out: the conventions are still "development" status and the
semantic-conventions package deprecates its constants between releases. Prompt and reply text
go into the span only when `TELEMETRY_CAPTURE_CONTENT=true`; otherwise it carries sizes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span

from orchestrator.models import Usage
from shared.telemetry import failed, tracing_active

TRACER_NAME = "durable_agents.llm"


@contextmanager
def model_call_span(
    model: str,
    messages: list[dict[str, Any]],
    *,
    temperature: float | None,
    tools: int,
    capture_content: bool,
) -> Iterator[Span]:
    """A client span around one LiteLLM call; an exception marks it failed with its type."""
    provider, _, _ = model.partition("/")
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider if "/" in model else "openai",
        "gen_ai.request.model": model,
        "agent.request.messages": len(messages),
        "agent.request.tools": tools,
    }
    if temperature is not None:
        attributes["gen_ai.request.temperature"] = temperature
    if capture_content:
        attributes["gen_ai.input.messages"] = json.dumps(messages, default=str)
    if not tracing_active() or not trace.get_current_span().get_span_context().is_valid:
        # Outside a trace (an untraced worker's activity): nothing to join.
        yield trace.INVALID_SPAN
        return
    tracer = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(
        f"chat {model}", kind=trace.SpanKind.CLIENT, attributes=attributes, record_exception=False
    ) as span:
        try:
            yield span
        except Exception as err:
            failed(span, err)  # the type only: a provider's error body may quote the prompt
            raise


def record_response(span: Span, response: Any, usage: Usage, *, capture_content: bool) -> None:
    """What the provider answered: model, id, finish reasons, tokens and cost (or unpriced)."""
    if not span.is_recording():
        return
    choices = getattr(response, "choices", None) or []
    reasons = [str(getattr(c, "finish_reason", "") or "") for c in choices]
    span.set_attribute("gen_ai.response.model", str(getattr(response, "model", "") or ""))
    span.set_attribute("gen_ai.response.id", str(getattr(response, "id", "") or ""))
    span.set_attribute("gen_ai.response.finish_reasons", [r for r in reasons if r])
    span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
    priced = not usage.unpriced_steps
    span.set_attribute("agent.cost.priced", priced)
    if priced:
        span.set_attribute("agent.cost.usd", usage.cost_usd)
    if capture_content and choices:
        message = getattr(choices[0], "message", None)
        span.set_attribute(
            "gen_ai.output.messages",
            json.dumps(
                {
                    "content": getattr(message, "content", None),
                    "tool_calls": [
                        {"name": c.function.name, "arguments": c.function.arguments}
                        for c in (getattr(message, "tool_calls", None) or [])
                    ],
                },
                default=str,
            ),
        )
