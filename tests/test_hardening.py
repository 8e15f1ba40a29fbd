"""Holes found by attacking the running stack, each closed and kept closed.

A store that lost messages, a step that asks for more than the server allows, oversized payloads,
a team that was down when a conversation started, and an LLM endpoint nobody answers on.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import stat
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from temporalio.client import WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.worker import Worker

from it_service.workflows import (
    MAX_TRACKED_ADDRESSES,
    ITSessionWorkflow,
    SessionStart,
    SessionState,
    TrackAddressRequest,
)
from orchestrator.client import ConversationClient
from orchestrator.config import LLMSettings
from orchestrator.models import ChatMessage, StoredMessage
from orchestrator.store import open_store
from orchestrator.worker import build_orchestrator_worker
from shared.tool_activity import bounded_result
from tests.conftest import (
    CANARY_ENDPOINT,
    FINANCE_ENDPOINT,
    IT_ENDPOINT,
    Stack,
    custom_orchestrator,
    fake_llm_settings,
    orchestrator_settings,
)
from tests.support.fake_llm import FakeModelServer, completion
from tests.support.histories import record_if_requested
from tests.test_faults import FLAKY_ENDPOINT, FlakyService


def _cid() -> str:
    return f"hard-{uuid.uuid4()}"


# ---- the conversation store is checked --------------------------------------------------------
@asynccontextmanager
async def _orchestrator_on(
    stack: Stack, fake_model: FakeModelServer, store_path: Path, task_queue: str
) -> AsyncIterator[ConversationClient]:
    """An orchestrator worker on a given store file and task queue: leaving and entering again
    is a worker restart that finds the conversation where its predecessor left it."""
    client = stack.client("orchestrator")
    store = open_store(f"sqlite:///{store_path}")
    worker = build_orchestrator_worker(
        client,
        task_queue=task_queue,
        settings=orchestrator_settings(store_url=f"sqlite:///{store_path}"),
        llm_settings=fake_llm_settings(fake_model),
        store=store,
    )
    try:
        async with worker:
            yield ConversationClient(client, task_queue)
    finally:
        await store.close()  # a restarted process holds no connection to the old file


async def _two_turns(conversations: ConversationClient, fake_model: FakeModelServer) -> str:
    cid = _cid()
    fake_model.script(completion("first answer"), completion("second answer"))
    assert (await conversations.send(cid, "one")).ok
    assert (await conversations.send(cid, "two")).ok
    return cid


def _remove_store(path: Path, *, truncate: bool) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    if truncate:
        os.truncate(path, 0)
    else:
        path.unlink()


async def test_a_truncated_or_deleted_store_is_a_loud_error_not_amnesia(
    stack: Stack, fake_model: FakeModelServer, tmp_path: Path
) -> None:
    for damage in ("truncate", "delete"):
        store = tmp_path / f"{damage}.db"
        queue = f"orch-store-{uuid.uuid4().hex[:8]}"
        async with _orchestrator_on(stack, fake_model, store, queue) as conversations:
            cid = await _two_turns(conversations, fake_model)
        _remove_store(store, truncate=damage == "truncate")
        async with _orchestrator_on(stack, fake_model, store, queue) as conversations:
            fake_model.script(completion("I remember nothing"))
            requests_before = len(fake_model.chat_requests())
            result = await conversations.send(cid, "three")
        assert not result.ok, damage
        # system prompt, 2 x (user, assistant): five messages written before the third turn
        assert "store is behind" in (result.error or ""), result.error
        assert cid in (result.error or "") and "5 missing" in (result.error or ""), result.error
        # The model was never called on the half transcript, and the step was not retried.
        assert len(fake_model.chat_requests()) == requests_before


async def test_a_store_deleted_under_a_running_worker_is_noticed(
    stack: Stack, fake_model: FakeModelServer, tmp_path: Path
) -> None:
    store = tmp_path / "live.db"
    queue = f"orch-store-{uuid.uuid4().hex[:8]}"
    async with _orchestrator_on(stack, fake_model, store, queue) as conversations:
        cid = await _two_turns(conversations, fake_model)
        _remove_store(store, truncate=False)
        fake_model.script(completion("I remember nothing"))
        result = await conversations.send(cid, "three")
    assert not result.ok and "store is behind" in (result.error or ""), result.error


async def test_a_restored_backup_lets_the_conversation_continue(
    stack: Stack, fake_model: FakeModelServer, tmp_path: Path
) -> None:
    store, backup = tmp_path / "store.db", tmp_path / "backup.db"
    queue = f"orch-store-{uuid.uuid4().hex[:8]}"
    async with _orchestrator_on(stack, fake_model, store, queue) as conversations:
        cid = await _two_turns(conversations, fake_model)
        _sqlite_copy(store, backup)  # the online backup API, while the worker runs
    _remove_store(store, truncate=False)
    async with _orchestrator_on(stack, fake_model, store, queue) as conversations:
        assert not (await conversations.send(cid, "three")).ok  # the model is not asked
        _sqlite_copy(backup, store)  # restored into the live database, the worker running
        fake_model.script(completion("I remember everything"))
        result = await conversations.send(cid, "three again")
    assert result.ok and result.answer == "I remember everything", result.error
    sent = [m["content"] for m in fake_model.chat_requests()[-1]["messages"]]
    assert ["one", "first answer", "two", "second answer"] == [
        c for c in sent if c in ("one", "first answer", "two", "second answer")
    ]


async def test_a_model_step_retried_after_its_reply_was_stored_returns_that_reply(
    stack: Stack, fake_model: FakeModelServer, tmp_path: Path
) -> None:
    """An attempt that stored the model's reply and then died must not ask the model again: the
    tool calls the workflow runs have to be the ones in the transcript. And a reply an abandoned
    step left where the workflow's next message goes is overwritten, not kept instead of it."""
    store_path = tmp_path / "store.db"
    queue = f"orch-store-{uuid.uuid4().hex[:8]}"
    async with _orchestrator_on(stack, fake_model, store_path, queue) as conversations:
        cid = _cid()
        fake_model.script(completion("first answer"))
        assert (await conversations.send(cid, "one")).ok  # seqs 0 system, 1 user, 2 assistant
        store = open_store(f"sqlite:///{store_path}")
        orphan = ChatMessage(role="assistant", content="left by an abandoned step")
        stored = ChatMessage(role="assistant", content="stored by an earlier attempt")
        await store.append(cid, [StoredMessage(seq=3, message=orphan)])
        await store.append(cid, [StoredMessage(seq=4, message=stored)])
        requests_before = len(fake_model.chat_requests())
        result = await conversations.send(cid, "two")
        transcript = [(m.seq, m.message.role, m.message.content) for m in await store.messages(cid)]
        await store.close()
    assert result.ok and result.answer == "stored by an earlier attempt", result
    assert len(fake_model.chat_requests()) == requests_before
    assert transcript[3:] == [(3, "user", "two"), (4, "assistant", "stored by an earlier attempt")]


async def test_large_tool_results_are_cut_before_they_enter_the_step_payload(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    """32 results of ~60 KB each would make the next model step's input larger than Temporal's
    2 MB payload limit and fail every workflow task; each tool message is cut instead."""
    cid = _cid()
    calls: list[tuple[str, dict[str, Any] | str]] = [
        ("bulk_report", {"rows": 480 + i}) for i in range(32)
    ]
    async with custom_orchestrator(
        stack, fake_model, tool_endpoints=[CANARY_ENDPOINT], max_parallel_tools=10
    ) as conversations:
        fake_model.script(completion(tool_calls=calls), completion("32 reports read"))
        result = await conversations.send(cid, "thirty-two reports")
        assert result.ok and result.answer == "32 reports read", result.error
        assert len(result.tool_calls) == 32 and all(c.ok for c in result.tool_calls)
        fake_model.script(completion("still here"))
        assert (await conversations.send(cid, "and now?")).answer == "still here"
    tool_messages = [m for m in fake_model.chat_requests()[-2]["messages"] if m["role"] == "tool"]
    assert len(tool_messages) == 32
    assert all(len(m["content"]) < 17_000 for m in tool_messages)


def _sqlite_copy(source: Path, destination: Path) -> None:
    with sqlite3.connect(source) as src, sqlite3.connect(destination) as dst:
        src.backup(dst)


async def test_the_store_file_is_private(
    stack: Stack, fake_model: FakeModelServer, tmp_path: Path
) -> None:
    os.umask(0o022)
    store = tmp_path / "private" / "store.db"
    async with _orchestrator_on(stack, fake_model, store, f"orch-{uuid.uuid4().hex[:8]}") as c:
        await _two_turns(c, fake_model)
    for path in [store, *store.parent.glob("store.db-*")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


# ---- no server limit can wedge a conversation -----------------------------------------------
def _most_in_flight(history: Any) -> int:
    in_flight = most = 0
    for event in history.events:
        kind = event.WhichOneof("attributes") or ""
        if kind.startswith("nexus_operation_scheduled"):
            in_flight += 1
        elif kind.startswith("nexus_operation_") and not kind.startswith("nexus_operation_started"):
            in_flight -= 1
        most = max(most, in_flight)
    return most


async def test_forty_tool_calls_in_one_step_run_twenty_at_a_time_and_the_next_message_works(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    """Temporal Cloud allows 30 in-flight Nexus operations per workflow: with the default bound
    (20) a 40-call step runs all 40, never more than 20 at once."""
    cid = _cid()
    calls: list[tuple[str, dict[str, Any] | str]] = [
        ("calculate_roi", {"principal": 100 + i, "rate": 5, "years": 1}) for i in range(40)
    ]
    async with custom_orchestrator(stack, fake_model) as conversations:
        fake_model.script(completion(tool_calls=calls), completion("forty results"))
        result = await conversations.send(cid, "forty ROIs please")
        assert result.ok and result.answer == "forty results", result.error
        assert len(result.tool_calls) == 40 and all(c.ok for c in result.tool_calls)
        history = await conversations.handle(cid).fetch_history()
        # The first twenty are scheduled together, before any can complete.
        assert _most_in_flight(history) == 20
        fake_model.script(completion("still fine"))
        assert (await conversations.send(cid, "and now?")).answer == "still fine"
        await record_if_requested(conversations.handle(cid), "conversation_bounded_fan_out")


async def test_calls_over_the_per_step_limit_are_answered_not_run(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    cid = _cid()
    calls: list[tuple[str, dict[str, Any] | str]] = [
        ("calculator", {"expression": f"{i} + 1"}) for i in range(6)
    ]
    async with custom_orchestrator(stack, fake_model, max_tool_calls_per_step=4) as conversations:
        fake_model.script(completion(tool_calls=calls), completion("four of six"))
        result = await conversations.send(cid, "six sums")
    assert result.ok and len(result.tool_calls) == 4
    assert any("2 tool calls of one step were not run" in n for n in result.notes)
    tool_messages = [m for m in fake_model.chat_requests()[-1]["messages"] if m["role"] == "tool"]
    assert len(tool_messages) == 6  # every call the model made is answered
    assert sum("not_run" in m["content"] for m in tool_messages) == 2


async def test_oversized_tool_arguments_are_refused_before_scheduling(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    cid = _cid()
    huge = {"expression": "1+" * 100_000 + "1"}
    async with custom_orchestrator(stack, fake_model) as conversations:
        fake_model.script(
            completion(tool_calls=[("calculator", huge)]), completion("too big, sorry")
        )
        result = await conversations.send(cid, "a long sum")
        assert result.ok and result.answer == "too big, sorry"
        [call] = result.tool_calls
        assert not call.ok and "the limit is 32000" in str(call.result)
        assert len(json.dumps(call.args)) < 4000  # the record keeps a preview, not the payload
        history = await conversations.handle(cid).fetch_history()
    assert len(fake_model.chat_requests()) == 2  # both model steps ran
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]
    assert "run_local_tool" not in scheduled


async def test_deeply_nested_tool_arguments_are_refused_and_the_turn_completes(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    """Found by the fuzz suite: arguments nested ~200 levels deep could not be decoded in the
    turn's record, so its local activity retried forever and the conversation hung."""
    cid = _cid()
    deep = json.loads("[" * 200 + "1" + "]" * 200)
    async with custom_orchestrator(stack, fake_model) as conversations:
        fake_model.script(
            completion(tool_calls=[("calculator", {"expression": deep})]), completion("no")
        )
        result = await conversations.send(cid, "a very deep sum")
        assert result.ok and result.answer == "no", result.error
        [call] = result.tool_calls
        assert not call.ok and "nested 201 levels deep; the limit is 32" in str(call.result)
        fake_model.script(completion("next"))
        assert (await conversations.send(cid, "next?")).answer == "next"


async def test_a_team_truncates_an_oversized_result_with_a_marker(stack: Stack) -> None:
    small = {"a": 1}
    assert bounded_result(small, 1024) is small
    big = {"rows": ["x" * 100] * 2000}
    cut = bounded_result(big, 64 * 1024)
    assert cut["result_truncated"] is True and cut["original_bytes"] > 64 * 1024
    assert len(json.dumps(cut)) < 64 * 1024
    # Through a real team worker: the canary IT deployment publishes `bulk_report`.
    outcome = await stack.execute_one(CANARY_ENDPOINT, "bulk_report", rows=5000)
    assert outcome.ok, outcome.error
    assert outcome.output["result_truncated"] is True
    assert outcome.output["limit_bytes"] == 64 * 1024


async def test_the_it_session_keeps_a_bounded_history(stack: Stack) -> None:
    client = stack.client("it")
    conversation_id = _cid()
    task_queue = f"it-session-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=task_queue, workflows=[ITSessionWorkflow]):
        state: SessionState | None = None
        for index in range(MAX_TRACKED_ADDRESSES + 5):
            start = WithStartWorkflowOperation(
                ITSessionWorkflow.run,
                SessionStart(state=SessionState(conversation_id=conversation_id)),
                id=f"it-session-bounded-{conversation_id}",
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                task_queue=task_queue,
            )
            state = await client.execute_update_with_start_workflow(
                ITSessionWorkflow.track_address,
                TrackAddressRequest(ip=f"10.0.{index // 250}.{index % 250}", call_id=f"c{index}"),
                start_workflow_operation=start,
            )
        assert state is not None
        assert len(state.ip_history) == MAX_TRACKED_ADDRESSES
        assert state.ip_history[0].call_id == "c5" and state.ip_history[-1].call_id == "c104"
        handle = await start.workflow_handle()
        await handle.terminate()


# ---- teams come back --------------------------------------------------------------------------
async def test_a_team_down_at_the_start_is_used_once_it_returns(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    from infrastructure.setup import EndpointDefinition, ensure_endpoint

    await ensure_endpoint(
        stack.client("finance"),
        EndpointDefinition(name=FLAKY_ENDPOINT, namespace="finance", task_queue=FLAKY_ENDPOINT),
    )
    finance = FlakyService(stack)  # not started: Finance is down
    cid = _cid()
    try:
        async with custom_orchestrator(
            stack,
            fake_model,
            tool_endpoints=[IT_ENDPOINT, FLAKY_ENDPOINT],
            discovery_timeout_seconds=4,
            rediscover_after_seconds=0,
        ) as conversations:
            fake_model.script(completion("no finance today"))
            first = await conversations.send(cid, "hello")
            assert any(FLAKY_ENDPOINT in note for note in first.notes), first.notes
            assert "stock_price" not in (await conversations.status(cid)).tools

            await finance.start()  # nothing else is restarted
            fake_model.script(
                completion(tool_calls=[("stock_price", {"ticker": "NVDA"})]), completion("quoted")
            )
            second = await conversations.send(cid, "stock price of NVDA")
            assert second.ok and second.answer == "quoted", second.error
            assert [(c.name, c.service, c.ok) for c in second.tool_calls] == [
                ("stock_price", "finance", True)
            ]
            assert not any("unavailable" in note for note in second.notes), second.notes
            assert (await conversations.status(cid)).unavailable_endpoints == []
            await record_if_requested(conversations.handle(cid), "conversation_rediscovery")
    finally:
        await finance.stop()


async def test_refresh_tools_finds_an_endpoint_created_after_the_start(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    from infrastructure.setup import EndpointDefinition, ensure_endpoint

    late = f"finance-late-{uuid.uuid4().hex[:6]}"
    cid = _cid()
    async with custom_orchestrator(
        stack, fake_model, tool_endpoints=[IT_ENDPOINT, late]
    ) as conversations:
        fake_model.script(completion("hi"))
        await conversations.send(cid, "hello")
        assert (await conversations.status(cid)).unavailable_endpoints == [late]
        await ensure_endpoint(
            stack.client("finance"),
            EndpointDefinition(name=late, namespace="finance", task_queue="finance-tools"),
        )
        status = await conversations.refresh_tools(cid)
    assert status.unavailable_endpoints == []
    assert "stock_price" in status.tools


# ---- fail fast on an LLM endpoint nobody answers on ----------------------------------------
async def test_an_unreachable_llm_endpoint_fails_fast_with_a_clear_error(stack: Stack) -> None:
    client = stack.client("orchestrator")
    task_queue = f"orch-unreachable-{uuid.uuid4().hex[:8]}"
    worker = build_orchestrator_worker(
        client,
        task_queue=task_queue,
        settings=orchestrator_settings(tool_endpoints=[FINANCE_ENDPOINT]),
        llm_settings=LLMSettings(
            model="openai/fake-model",
            api_base="http://127.0.0.1:9/v1",  # discard port: connection refused
            api_key="sk-fake",  # type: ignore[arg-type]
            timeout_seconds=5,
        ),
    )
    async with worker:
        conversations = ConversationClient(client, task_queue)
        started = asyncio.get_running_loop().time()
        result = await conversations.send(_cid(), "hello?")
        elapsed = asyncio.get_running_loop().time() - started
    assert not result.ok
    assert "cannot reach" in (result.error or "") and "connection refused" in (result.error or "")
    # The long schedule (8 attempts, ~107 s) is for rate limits and 5xx; this gives up in ~10 s.
    assert elapsed < 40, elapsed
