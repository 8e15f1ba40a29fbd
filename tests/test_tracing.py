"""One turn is one trace, from the client's update to the team's outgoing HTTP call, across the
orchestrator, IT and finance namespaces; a worker restart and a replay add no span.

The spans are collected by an in-memory exporter on a replay-safe provider (the one the workers
install when tracing is on). Traced clients and workers run beside the session's untraced ones,
on their own task queues and Nexus endpoints.
"""

from __future__ import annotations

import asyncio
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
from orchestrator.models import Decision, PendingApproval
from orchestrator.read_workflow import ReadConversation
from orchestrator.worker import build_orchestrator_worker
from orchestrator.workflows import ConversationWorkflow
from shared import telemetry
from shared.manifest import discover_teams
from shared.worker import build_manifest_worker
from tests.conftest import (
    FAST_PATH_BUDGET,
    Stack,
    eventually,
    fake_llm_settings,
    orchestrator_settings,
)
from tests.support.fake_http import FakeHttpServer, Reply, serve
from tests.support.fake_llm import FakeModelServer, completion

QUOTE_KEY = "quote-key-for-traces"
# Between a tool call and its HTTP request, in the team's namespace: the handler, the tool
# workflow and its activity; then up to the turn and the client's message.
PLATFORM_CHAIN = [
    "run finance.stock_price",
    "tool workflow finance.stock_price",
    "handle finance.stock_price",
    "tool finance.stock_price",
    "agent turn",
    "agent message",
]
# With TELEMETRY_TEMPORAL_SPANS, one more span per Temporal operation in between.
TEMPORAL_CHAIN = [
    "RunActivity:run_tool",
    "StartActivity:run_tool",
    "RunWorkflow:ToolWorkflow",
    "StartWorkflow:ToolWorkflow",
    "RunStartNexusOperationHandler:ToolService/execute_tool",
    "StartNexusOperation:ToolService/execute_tool",
    "HandleUpdate:send_message",
    "StartUpdateWithStartWorkflow:ConversationWorkflow",
]


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
        telemetry.instrument_http()
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
    temporal_spans: bool


@pytest.fixture(params=[False, True], ids=["platform-spans", "with-temporal-spans"])
async def traced(
    request: pytest.FixtureRequest,
    stack: Stack,
    fake_model: FakeModelServer,
    spans: InMemorySpanExporter,
) -> AsyncIterator[TracedStack]:
    """Traced workers, with our spans only (the default) or also one per Temporal operation
    (TELEMETRY_TEMPORAL_SPANS)."""
    suffix = uuid.uuid4().hex[:6]
    clients = {
        namespace: Client(
            stack.env.client.service_client,
            namespace=namespace,
            data_converter=pydantic_data_converter,
            plugins=[OpenTelemetryPlugin(add_temporal_spans=request.param)],
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
            await build_manifest_worker(
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
            temporal_spans=request.param,
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
        # A key in the query string, as some quote APIs take it: spans must not show it.
        monkeypatch.setenv("QUOTE_API_URL", server.url + "/v1/quote/{ticker}?apikey=" + QUOTE_KEY)
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
        and (span.attributes or {}).get("conversation.id") == conversation_id
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
    assert root.name == "agent message"
    assert service_of(root) == "pytest"  # this process: the client

    # The tool's outgoing HTTP call, in the finance namespace's worker, hangs under the update
    # through the turn, the tool call over Nexus, the team's handler, workflow and activity.
    [http] = [
        s
        for s in first
        if (s.attributes or {}).get("http.request.method") == "GET"
        or (s.attributes or {}).get("http.method") == "GET"
    ]
    leaks = [
        (s.name, k, v)
        for s in first
        for k, v in (s.attributes or {}).items()
        if QUOTE_KEY in str(v)
    ]
    assert not leaks, leaks
    assert "apikey=REDACTED" in str(dict(http.attributes or {}))
    chain = chain_to_root(http, by_id)
    ours = [name for name in chain[1:] if ":" not in name]
    assert ours == PLATFORM_CHAIN, chain
    temporal = [name for name in chain if ":" in name]
    if traced.temporal_spans:
        assert set(TEMPORAL_CHAIN) <= set(temporal), chain
    else:
        assert temporal == [], chain
    # Both teams' tool activities (IT's and Finance's namespaces) are in the same trace, each
    # under its own tool call.
    tool_spans = [s for s in first if s.name.startswith("run ")]
    owners = {
        next(
            name
            for name in chain_to_root(span, by_id)
            if name.startswith("tool ") and not name.startswith("tool workflow ")
        )
        for span in tool_spans
    }
    assert owners == {"tool finance.stock_price", "tool it.get_ip"}
    # The model step ran in the orchestrator's activity, with GenAI attributes and no prompt text.
    model_spans = [s for s in first if s.name == "chat openai/fake-model"]
    assert len(model_spans) == 2, [s.name for s in first]
    for model_span in model_spans:
        model_chain = [n for n in chain_to_root(model_span, by_id) if ":" not in n]
        assert model_chain[1].startswith("model step ") and model_chain[2] == "agent turn"
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

    # Replaying the whole history with tracing on exports nothing either. (With Temporal's own
    # spans, the plugin ends a still-running workflow's `RunWorkflow` span whenever a worker
    # evicts it, the Replayer's eviction too: upstream behaviour of that opt-in mode, see README.)
    history = await traced.clients["orchestrator"].get_workflow_handle(cid).fetch_history()
    exported = len(spans.get_finished_spans())
    await Replayer(
        workflows=[ConversationWorkflow, ReadConversation],
        data_converter=pydantic_data_converter,
        plugins=[OpenTelemetryPlugin(add_temporal_spans=traced.temporal_spans)],
    ).replay_workflow(history)
    replayed = [
        s
        for s in spans.get_finished_spans()[exported:]
        if s.name != "RunWorkflow:ConversationWorkflow"
    ]
    assert not replayed, [
        (s.name, s.status.status_code, dict(s.attributes or {})) for s in replayed
    ]


async def test_a_message_without_trace_context_starts_its_own_trace(
    traced: TracedStack, spans: InMemorySpanExporter
) -> None:
    """A client without the tracing plugin (another team's app, a script): the traced worker
    starts the turn's trace itself, and never files it under an earlier message's trace."""
    traced.model.script(
        completion(tool_calls=[("get_ip", {})]),
        completion("Your IP."),
        completion(tool_calls=[("get_ip", {})]),
        completion("Still your IP."),
    )
    untraced = ConversationClient(
        Client(
            traced.clients["orchestrator"].service_client,
            namespace="orchestrator",
            data_converter=pydantic_data_converter,
        ),
        traced.task_queue,
    )
    cid = f"traced-{uuid.uuid4().hex[:8]}"
    async with orchestrator_worker(traced):
        first = await traced.conversations.send(cid, "My IP?")
        second = await untraced.send(cid, "My IP again?")
    assert first.ok and second.ok, (first.error, second.error)

    mine = trace_of(spans, cid)
    turns = {
        (s.attributes or {})["agent.turn"]: s
        for s in mine
        if s.name == "agent turn" and s.context is not None
    }
    assert set(turns) == {1, 2}
    one, two = turns[1], turns[2]
    assert one.context is not None and two.context is not None
    assert one.context.trace_id != two.context.trace_id
    by_id = {s.context.span_id: s for s in mine if s.context is not None}
    assert chain_to_root(one, by_id)[-1] == "agent message"  # the traced client's
    # The worker started the second trace: at its turn, or (with Temporal's spans) at the
    # update it handled.
    expected_root = "HandleUpdate:send_message" if traced.temporal_spans else "agent turn"
    assert chain_to_root(two, by_id)[-1] == expected_root
    for turn in (one, two):
        trace_id = turn.context.trace_id
        names = {s.name for s in mine if s.context is not None and s.context.trace_id == trace_id}
        assert {"tool it.get_ip", "handle it.get_ip", "run it.get_ip"} <= names, names


async def test_a_turn_open_across_a_worker_restart_is_exported_once(
    traced: TracedStack, spans: InMemorySpanExporter
) -> None:
    """The turn waits for an approval while its worker stops (its workflow is evicted with the
    turn's spans open); another worker replays it and finishes: each span is exported once."""
    args = {"project": "OPS", "summary": "Printer on fire", "description": "Second floor."}
    traced.model.script(completion(tool_calls=[("create_ticket", args)]), completion("Filed."))
    cid = f"traced-{uuid.uuid4().hex[:8]}"
    async with orchestrator_worker(traced):
        turn = asyncio.create_task(traced.conversations.send(cid, "File a ticket: printer fire"))
        pending = await eventually(lambda: _pending(traced, cid), timeout=20)
        assert pending, "the call never waited for approval"
    async with orchestrator_worker(traced):
        await traced.conversations.decide(
            cid, Decision(call_id=pending[0].call_id, verdict="approve", approver="ada")
        )
        result = await asyncio.wait_for(turn, 30)
    assert result.ok and [c.ok for c in result.tool_calls] == [True], result

    # (The opt-in Temporal spans' `RunWorkflow` is ended at each eviction: see the test above.)
    mine = [s for s in trace_of(spans, cid) if s.name != "RunWorkflow:ConversationWorkflow"]
    assert len({s.context.trace_id for s in mine if s.context is not None}) == 1
    exported = Counter(s.context.span_id for s in mine if s.context is not None)
    assert max(exported.values()) == 1, [s.name for s in mine]
    names = Counter(s.name for s in mine)
    assert names["agent turn"] == 1 and names["tool it.create_ticket"] == 1, names


async def _pending(traced: TracedStack, conversation_id: str) -> list[PendingApproval]:
    try:
        return (await traced.conversations.status(conversation_id)).pending_approvals
    except Exception:  # not started yet
        return []
