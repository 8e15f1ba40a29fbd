"""One turn is one trace, from the client's update to the team's outgoing HTTP call, across the
orchestrator, IT and finance namespaces; a worker restart and a replay add no span.

The spans are collected by an in-memory exporter on a replay-safe provider (the one the workers
install when tracing is on). Traced clients and workers run beside the session's untraced ones,
on their own task queues and Nexus endpoints.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.client import Client
from temporalio.contrib.opentelemetry import OpenTelemetryPlugin, create_tracer_provider
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer, Worker

from infrastructure.setup import EndpointDefinition, ensure_endpoint
from orchestrator.client import ConversationClient
from orchestrator.read_workflow import ReadConversation
from orchestrator.worker import build_orchestrator_worker
from orchestrator.workflows import ConversationWorkflow
from shared import telemetry
from shared.manifest import discover_teams
from shared.worker import build_manifest_worker
from tests.conftest import (
    FAST_PATH_BUDGET,
    Stack,
    fake_llm_settings,
    orchestrator_settings,
)
from tests.support.fake_http import FakeHttpServer, Reply, serve
from tests.support.fake_llm import FakeModelServer, completion

QUOTE_KEY = "quote-key-for-traces"
# The client's span: the first message starts the conversation with it.
CLIENT_SPANS = {
    "StartUpdateWithStartWorkflow:ConversationWorkflow",
    "StartWorkflowUpdate:send_message",
}


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for this module's clients and workers; off again for the rest of the session
    (OpenTelemetry keeps one global provider: it stays, with its processor shut down)."""
    provider = create_tracer_provider(resource=Resource.create({SERVICE_NAME: "pytest"}))
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(telemetry, "_tracing_installed", False)
        telemetry.use_tracer_provider(provider)
        HTTPXClientInstrumentor().instrument()
        try:
            yield exporter
        finally:
            HTTPXClientInstrumentor().uninstrument()
            provider.shutdown()


@dataclass
class TracedStack:
    clients: dict[str, Client]
    conversations: ConversationClient
    task_queue: str
    tool_endpoints: list[str]
    model: FakeModelServer


@pytest.fixture
async def traced(
    stack: Stack, fake_model: FakeModelServer, spans: InMemorySpanExporter
) -> AsyncIterator[TracedStack]:
    suffix = uuid.uuid4().hex[:6]
    clients = {
        namespace: Client(
            stack.env.client.service_client,
            namespace=namespace,
            data_converter=pydantic_data_converter,
            plugins=list(telemetry.plugins()),
        )
        for namespace in ("orchestrator", "it", "finance")
    }
    teams = [team for team in discover_teams() if team.service in ("it", "finance")]
    endpoints = []
    workers = []
    for team in teams:
        task_queue = f"{team.task_queue}-traced-{suffix}"
        endpoint = f"{team.endpoint}-traced-{suffix}"
        await ensure_endpoint(
            stack.client("orchestrator"),
            EndpointDefinition(name=endpoint, namespace=team.namespace, task_queue=task_queue),
        )
        endpoints.append(endpoint)
        workers.append(
            build_manifest_worker(
                clients[team.namespace],
                team,
                fast_path_budget=FAST_PATH_BUDGET,
                task_queue=task_queue,
            )
        )
    task_queue = f"orchestrator-traced-{suffix}"
    for worker in workers:
        await worker.__aenter__()
    try:
        yield TracedStack(
            clients=clients,
            conversations=ConversationClient(clients["orchestrator"], task_queue),
            task_queue=task_queue,
            tool_endpoints=endpoints,
            model=fake_model,
        )
    finally:
        for worker in workers:
            await worker.__aexit__(None, None, None)


def orchestrator_worker(traced: TracedStack) -> Worker:
    return build_orchestrator_worker(
        traced.clients["orchestrator"],
        task_queue=traced.task_queue,
        settings=orchestrator_settings(tool_endpoints=traced.tool_endpoints),
        llm_settings=fake_llm_settings(traced.model),
    )


@pytest.fixture
def quote_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHttpServer]:
    for server in serve():
        monkeypatch.setenv("QUOTE_API_URL", server.url + "/v1/quote/{ticker}")
        monkeypatch.setenv("QUOTE_API_KEY", QUOTE_KEY)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        yield server


def quote(price: float) -> Reply:
    return Reply(200, {"symbol": "AAPL", "price": price, "currency": "USD"})


def trace_of(exporter: InMemorySpanExporter, conversation_id: str) -> list[ReadableSpan]:
    """Every span of the traces that touch this conversation's workflow."""
    finished = exporter.get_finished_spans()
    ids = {
        span.context.trace_id
        for span in finished
        if span.context is not None
        and (span.attributes or {}).get("temporalWorkflowID") == conversation_id
    }
    return [s for s in finished if s.context is not None and s.context.trace_id in ids]


def chain_to_root(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[str]:
    names = [span.name]
    while span.parent is not None:
        parent = by_id.get(span.parent.span_id)
        if parent is None:
            names.append(f"<missing {span.parent.span_id:016x}>")
            break
        names.append(parent.name)
        span = parent
    return names


def service_of(span: ReadableSpan) -> Any:
    return span.resource.attributes.get(SERVICE_NAME)


async def test_one_turn_is_one_trace_across_namespaces_without_duplicates_after_replay(
    traced: TracedStack, spans: InMemorySpanExporter, quote_api: FakeHttpServer
) -> None:
    quote_api.script(quote(187.5))
    traced.model.script(
        completion(tool_calls=[("stock_price", {"ticker": "AAPL"}), ("get_ip", {})]),
        completion("AAPL is at 187.5."),
        completion("Second answer."),
    )
    cid = f"traced-{uuid.uuid4().hex[:8]}"
    async with orchestrator_worker(traced):
        result = await traced.conversations.send(cid, "Price of AAPL and my IP?")
    assert result.ok, result.error
    assert [(c.name, c.ok) for c in result.tool_calls] == [("stock_price", True), ("get_ip", True)]

    first = trace_of(spans, cid)
    trace_ids = {s.context.trace_id for s in first if s.context is not None}
    assert len(trace_ids) == 1, f"one turn, one trace: {sorted(s.name for s in first)}"
    by_id = {s.context.span_id: s for s in first if s.context is not None}
    [root] = [s for s in first if s.parent is None]
    assert root.name in CLIENT_SPANS

    # The tool's outgoing HTTP call, in the finance namespace's worker, hangs under the update
    # through the turn, the tool call over Nexus, the team's handler, workflow and activity.
    [http] = [
        s
        for s in first
        if (s.attributes or {}).get("http.request.method") == "GET"
        or (s.attributes or {}).get("http.method") == "GET"
    ]
    chain = chain_to_root(http, by_id)
    assert chain[-1] == root.name, chain
    for expected in (
        "RunActivity:run_tool",
        "RunWorkflow:ToolWorkflow",
        "RunStartNexusOperationHandler:ToolService/execute_tool",
        "StartNexusOperation:ToolService/execute_tool",
        "tool finance.stock_price",
        "agent turn",
        "HandleUpdate:send_message",
    ):
        assert any(name.startswith(expected) for name in chain), (expected, chain)
    # Both teams' tool activities (IT's and Finance's namespaces) are in the same trace, each
    # under its own tool call.
    tool_spans = [s for s in first if s.name == "RunActivity:run_tool"]
    owners = {next(n for n in chain_to_root(s, by_id) if n.startswith("tool ")) for s in tool_spans}
    assert owners == {"tool finance.stock_price", "tool it.get_ip"}
    # The model step ran in the orchestrator's activity, with GenAI attributes and no prompt text.
    model_spans = [s for s in first if s.name == "chat openai/fake-model"]
    assert len(model_spans) == 2, [s.name for s in first]
    for model_span in model_spans:
        assert chain_to_root(model_span, by_id)[1] == "RunActivity:llm_step"
        attributes = dict(model_span.attributes or {})
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.provider.name"] == "openai"
        assert attributes["gen_ai.request.model"] == "openai/fake-model"
        assert attributes["gen_ai.response.model"] == "fake-model"
        assert (
            attributes["gen_ai.usage.input_tokens"],
            attributes["gen_ai.usage.output_tokens"],
        ) == (20, 5)
        # The fake model has no price in LiteLLM's map: unpriced, never $0.
        assert attributes["agent.cost.priced"] is False and "agent.cost.usd" not in attributes
        # No prompt or reply text unless TELEMETRY_CAPTURE_CONTENT allows it.
        assert not any("AAPL" in str(value) for value in attributes.values()), attributes
    assert {tuple(s.attributes["gen_ai.response.finish_reasons"]) for s in model_spans} == {
        ("tool_calls",),
        ("stop",),
    }

    before = Counter((s.context.span_id, s.name) for s in first if s.context is not None)
    assert max(before.values()) == 1

    # A new worker (empty cache) replays the first turn's history to answer the second.
    async with orchestrator_worker(traced):
        second = await traced.conversations.send(cid, "And again?")
    assert second.ok, second.error
    after = trace_of(spans, cid)
    first_trace = trace_ids.pop()
    again = [s for s in after if s.context is not None and s.context.trace_id == first_trace]
    assert Counter((s.context.span_id, s.name) for s in again) == before

    # Replaying the whole history with tracing on exports nothing either.
    history = await traced.clients["orchestrator"].get_workflow_handle(cid).fetch_history()
    exported = len(spans.get_finished_spans())
    await Replayer(
        workflows=[ConversationWorkflow, ReadConversation],
        data_converter=pydantic_data_converter,
        plugins=[OpenTelemetryPlugin(add_temporal_spans=True)],
    ).replay_workflow(history)
    assert len(spans.get_finished_spans()) == exported
