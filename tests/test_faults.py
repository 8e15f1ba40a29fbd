"""Faults at every boundary: the model provider, a team's service, and retried messages."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.worker import Worker

from finance_service.tools import registry as finance_registry
from infrastructure.setup import EndpointDefinition, ensure_endpoint
from orchestrator.client import ConversationClient
from shared.worker import build_team_worker
from tests.conftest import IT_ENDPOINT, Orchestrator, Stack, custom_orchestrator
from tests.support.fake_http import Reply
from tests.support.fake_llm import FakeModelServer, completion, error
from tests.support.histories import record_if_requested

FLAKY_ENDPOINT = "finance-tools-flaky"


def _cid() -> str:
    return f"fault-{uuid.uuid4()}"


@pytest.mark.parametrize(
    ("fault", "replies"),
    [
        ("server error", [error(500, "internal error")]),
        ("bad gateway", [error(502, "bad gateway")]),
        ("hung request", [Reply(200, completion("late").body, delay=5.0)]),
        ("malformed body", [Reply(200, "this is not json")]),
        ("rate limit", [error(429, "slow down", headers={"Retry-After": "1"})]),
    ],
)
async def test_transient_provider_faults_complete(
    orchestrator: Orchestrator, fake_model: FakeModelServer, fault: str, replies: list[Reply]
) -> None:
    fake_model.script(*replies, completion(f"recovered from {fault}"))
    result = await orchestrator.conversations.send(_cid(), "hello")
    assert result.ok, result.error
    assert result.answer == f"recovered from {fault}"
    assert len(fake_model.chat_requests()) == 2


@pytest.mark.parametrize(
    ("status", "expected"), [(401, "rejected the credentials"), (400, "refused the request")]
)
async def test_terminal_provider_faults_fail_once_and_the_conversation_recovers(
    orchestrator: Orchestrator, fake_model: FakeModelServer, status: int, expected: str
) -> None:
    cid = _cid()
    fake_model.script(error(status, "nope"))
    failed = await orchestrator.conversations.send(cid, "hello")
    assert not failed.ok and expected in (failed.error or "")
    assert len(fake_model.chat_requests()) == 1  # not retried
    fake_model.script(completion("fine now"))
    assert (await orchestrator.conversations.send(cid, "again")).answer == "fine now"


async def test_invalid_json_tool_arguments_complete(
    orchestrator: Orchestrator, fake_model: FakeModelServer
) -> None:
    fake_model.script(
        completion(tool_calls=[("calculator", "{not json")]),
        completion(tool_calls=[("calculator", {"expression": "1+1"})]),
        completion("2"),
    )
    result = await orchestrator.conversations.send(_cid(), "1+1?")
    assert result.ok and result.answer == "2"
    assert [c.ok for c in result.tool_calls] == [False, True]


async def test_a_retried_message_is_answered_once(
    orchestrator: Orchestrator, fake_model: FakeModelServer
) -> None:
    cid = _cid()
    fake_model.script(completion("only once"))
    first = await orchestrator.conversations.send(cid, "hi", message_id="msg-1")
    again = await orchestrator.conversations.send(cid, "hi", message_id="msg-1")
    assert first == again
    assert len(fake_model.chat_requests()) == 1
    assert len(await orchestrator.conversations.turns(cid)) == 1


async def test_a_retried_message_is_answered_once_across_continue_as_new(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    cid = _cid()
    async with custom_orchestrator(stack, fake_model, max_turns_per_run=1) as conversations:
        fake_model.script(completion("answer one"), completion("answer two"))
        first = await conversations.send(cid, "one", message_id="m-1")
        await conversations.send(cid, "two", message_id="m-2")  # a new run by now
        retried = await conversations.send(cid, "one", message_id="m-1")
        turns = await conversations.turns(cid)
    assert retried.answer == first.answer == "answer one"
    assert [t.message for t in turns] == ["one", "two"]
    assert len(fake_model.chat_requests()) == 2


@pytest.fixture
async def flaky_finance(stack: Stack) -> AsyncIterator[FlakyService]:
    await ensure_endpoint(
        stack.client("finance"),
        EndpointDefinition(name=FLAKY_ENDPOINT, namespace="finance", task_queue=FLAKY_ENDPOINT),
    )
    service = FlakyService(stack)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


class FlakyService:
    """The Finance worker behind its own endpoint, which a test can stop and start."""

    def __init__(self, stack: Stack) -> None:
        self._stack = stack
        self._worker: Worker | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._worker = build_team_worker(
            self._stack.client("finance"),
            finance_registry,
            task_queue=FLAKY_ENDPOINT,
            fast_path_budget=timedelta(milliseconds=500),
        )
        self._task = asyncio.create_task(self._worker.run())
        await self._until_polling()

    async def _until_polling(self) -> None:
        request = DescribeTaskQueueRequest(
            namespace="finance",
            task_queue=TaskQueue(name=FLAKY_ENDPOINT),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_NEXUS,
        )
        for _ in range(100):
            response = await self._stack.client("finance").workflow_service.describe_task_queue(
                request
            )
            # Pollers linger in the server's list for a while after a worker stops: only a
            # recent poll counts.
            if any(time.time() - p.last_access_time.seconds < 2 for p in response.pollers):
                return
            await asyncio.sleep(0.1)
        raise AssertionError("the flaky Finance worker never polled its task queue")

    async def stop(self) -> None:
        if self._worker is not None and self._task is not None:
            await self._worker.shutdown()
            await self._task
            self._worker = None


async def _ask_price(
    conversations: ConversationClient, fake_model: FakeModelServer, cid: str
) -> tuple[float, bool, str]:
    fake_model.script(
        completion(tool_calls=[("stock_price", {"ticker": "AAPL"})]), completion("ok")
    )
    started = asyncio.get_running_loop().time()
    result = await conversations.send(cid, "price of AAPL?")
    elapsed = asyncio.get_running_loop().time() - started
    call = result.tool_calls[0]
    assert result.ok, "the conversation continues whatever the tool did"
    return elapsed, call.ok, str(call.result)


async def test_tool_service_down_breaker_and_recovery(
    stack: Stack, fake_model: FakeModelServer, flaky_finance: FlakyService
) -> None:
    cid = _cid()
    async with custom_orchestrator(
        stack,
        fake_model,
        tool_endpoints=[IT_ENDPOINT, FLAKY_ENDPOINT],
        tool_timeout_seconds=5,
        breaker_failures=2,
        breaker_cooldown_seconds=4,
    ) as conversations:
        _, ok, message = await _ask_price(conversations, fake_model, cid)
        assert ok, message
        await record_if_requested(conversations.handle(cid), "conversation_breaker")

        await flaky_finance.stop()
        for _ in range(2):  # two timeouts open the breaker
            elapsed, ok, message = await _ask_price(conversations, fake_model, cid)
            assert not ok and "service unavailable" in message, message
            # Bounded by the 5 s schedule-to-close timeout (plus the turn), not by retries.
            assert elapsed < 20, (elapsed, message)
        # The breaker is open: the call is answered without a Nexus operation being scheduled.
        history_before = len((await conversations.handle(cid).fetch_history()).events)
        _, ok, message = await _ask_price(conversations, fake_model, cid)
        assert not ok and "not calling it for another" in message, message
        events = (await conversations.handle(cid).fetch_history()).events[history_before:]
        kinds = {e.WhichOneof("attributes") for e in events}
        assert "nexus_operation_scheduled_event_attributes" not in kinds

        await flaky_finance.start()
        await asyncio.sleep(4.5)  # the cool-down passes; nothing else is restarted
        _, ok, message = await _ask_price(conversations, fake_model, cid)
        assert ok, message
        await record_if_requested(conversations.handle(cid), "conversation_breaker")
