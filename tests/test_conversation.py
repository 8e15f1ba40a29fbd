"""The agent loop end to end: real dev server, real Nexus services, LiteLLM over HTTP to a fake model."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
from temporalio.client import WorkflowUpdateFailedError, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.service import RPCError

from orchestrator.client import ConversationClient, InvalidMessageError
from orchestrator.models import SEND_MESSAGE_UPDATE, TurnResult
from orchestrator.worker import build_orchestrator_worker
from tests.conftest import (
    Orchestrator,
    Stack,
    custom_orchestrator,
    fake_llm_settings,
    orchestrator_settings,
)
from tests.support.fake_http import Reply
from tests.support.fake_llm import FakeModelServer, completion, error, last_tool_messages


def _conversation() -> str:
    return f"test-{uuid.uuid4()}"


async def test_multi_turn_conversation_keeps_context(
    orchestrator: Orchestrator, fake_model: FakeModelServer
) -> None:
    cid = _conversation()
    fake_model.script(
        completion(tool_calls=[("calculator", {"expression": "6 * 7"})]),
        completion("6 * 7 is 42."),
        completion("You asked about 6 * 7; the answer was 42."),
    )
    first = await orchestrator.conversations.send(cid, "What is 6 * 7?")
    assert first.ok and first.answer == "6 * 7 is 42."
    assert [(c.name, c.service, c.ok) for c in first.tool_calls] == [("calculator", "local", True)]
    assert first.tool_calls[0].result == {"expression": "6 * 7", "result": "42"}

    second = await orchestrator.conversations.send(cid, "What did I ask before?")
    assert second.ok and "42" in second.answer
    sent = fake_model.chat_requests()
    assert len(sent) == 3
    # Turn two carries turn one: system, user, assistant(tool call), tool, assistant, user.
    roles = [m["role"] for m in sent[2]["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "user"]
    offered = {t["function"]["name"] for t in sent[0]["tools"]}
    assert {
        "calculator",
        "weather",
        "get_ip",
        "track_ip",
        "stock_price",
        "calculate_roi",
    } <= offered

    status = await orchestrator.conversations.status(cid)
    assert status.state == "idle" and status.turns == 2
    assert status.unavailable_endpoints == []
    usage = await orchestrator.conversations.end(cid)
    assert usage.prompt_tokens == 60 and usage.completion_tokens == 15


async def test_parallel_tool_calls_across_services(
    orchestrator: Orchestrator, fake_model: FakeModelServer
) -> None:
    cid = _conversation()
    fake_model.script(
        completion(
            tool_calls=[
                ("stock_price", {"ticker": "AAPL"}),
                ("get_ip", {}),
                ("weather", {"city": "Paris"}),
            ]
        ),
        completion("Done."),
    )
    result = await orchestrator.conversations.send(cid, "Stock, IP and weather please")
    assert result.ok, result.error
    assert [(c.name, c.service, c.ok) for c in result.tool_calls] == [
        ("stock_price", "finance", True),
        ("get_ip", "it", True),
        ("weather", "local", True),
    ]
    tool_messages = last_tool_messages(fake_model.requests[-1])
    assert len(tool_messages) == 3
    assert json.loads(tool_messages[0]["content"])["ticker"] == "AAPL"

    # All three were scheduled by one workflow task, before any of them completed.
    history = await orchestrator.conversations.handle(cid).fetch_history()
    kinds = [e.WhichOneof("attributes").removesuffix("_event_attributes") for e in history.events]
    windows = [sorted(kinds[i : i + 3]) for i in range(len(kinds) - 2)]
    expected = ["activity_task_scheduled", "nexus_operation_scheduled", "nexus_operation_scheduled"]
    assert expected in windows, kinds


async def test_model_corrects_itself_after_bad_request(
    orchestrator: Orchestrator, fake_model: FakeModelServer
) -> None:
    cid = _conversation()
    fake_model.script(
        completion(tool_calls=[("calculate_roi", {"principal": 1000, "rate": 7, "years": 500})]),
        completion(tool_calls=[("calculate_roi", {"principal": 1000, "rate": 7, "years": 50})]),
        completion("After 50 years you would have 29457.03."),
    )
    result = await orchestrator.conversations.send(cid, "ROI on 1000 at 7% for 500 years?")
    assert result.ok
    assert [c.ok for c in result.tool_calls] == [False, True]
    rejected = json.loads(last_tool_messages(fake_model.requests[1])[0]["content"])
    assert rejected["error"] == "bad_request" and "'years'" in rejected["message"]
    assert result.tool_calls[1].result["final_value"] == "29457.03"


async def test_unknown_tool_and_broken_json_go_back_to_the_model(
    orchestrator: Orchestrator, fake_model: FakeModelServer
) -> None:
    cid = _conversation()
    fake_model.script(
        completion(tool_calls=[("format_disk", {}), ("calculator", '{"expression": ')]),
        completion("Sorry about that."),
    )
    result = await orchestrator.conversations.send(cid, "Do something odd")
    assert result.ok and result.answer == "Sorry about that."
    errors = [json.loads(m["content"]) for m in last_tool_messages(fake_model.requests[1])]
    assert [e["error"] for e in errors] == ["not_found", "bad_request"]
    assert "not valid JSON" in errors[1]["message"]


async def test_repeated_identical_call_is_stopped(
    orchestrator: Orchestrator, fake_model: FakeModelServer
) -> None:
    cid = _conversation()
    same = ("calculator", {"expression": "1 + 1"})
    fake_model.script(completion(tool_calls=[same]), completion(tool_calls=[same]))
    result = await orchestrator.conversations.send(cid, "Loop please")
    assert result.ok
    assert result.answer.startswith("stopped: the model repeated the identical call calculator")
    assert len(result.tool_calls) == 1


async def test_rate_limit_honours_retry_after_then_succeeds(
    orchestrator: Orchestrator, fake_model: FakeModelServer
) -> None:
    cid = _conversation()
    fake_model.script(
        error(429, "slow down", headers={"Retry-After": "2"}),
        completion("Recovered."),
    )
    started = time.monotonic()
    result = await orchestrator.conversations.send(cid, "Hello")
    elapsed = time.monotonic() - started
    assert result.ok and result.answer == "Recovered."
    assert len(fake_model.chat_requests()) == 2
    # The activity's default first retry is 1 s; only Retry-After makes it wait 2 s.
    assert elapsed >= 2.0


async def test_auth_error_is_clear_and_not_retried(
    orchestrator: Orchestrator, fake_model: FakeModelServer
) -> None:
    cid = _conversation()
    fake_model.script(error(401, "invalid api key"))
    result = await orchestrator.conversations.send(cid, "Hello")
    assert not result.ok
    assert "rejected the credentials" in (result.error or "")
    assert len(fake_model.chat_requests()) == 1

    # The fault is gone: the same conversation answers the next message.
    fake_model.script(completion("Working again."))
    again = await orchestrator.conversations.send(cid, "Hello again")
    assert again.ok and again.answer == "Working again."


async def test_update_validator_rejections(
    orchestrator: Orchestrator, fake_model: FakeModelServer
) -> None:
    cid = _conversation()
    fake_model.script(completion("Hi."))
    assert (await orchestrator.conversations.send(cid, "Hi")).ok

    # The client refuses an empty message before sending; the workflow's validator refuses it
    # too, for callers that use the update directly.
    with pytest.raises(InvalidMessageError, match="empty"):
        await orchestrator.conversations.send(cid, "   ")
    handle = orchestrator.conversations.handle(cid)
    for text, reason in [("   ", "empty"), ("x" * 2001, "limit is 2000")]:
        with pytest.raises(WorkflowUpdateFailedError) as rejected:
            await handle.execute_update(SEND_MESSAGE_UPDATE, text, result_type=TurnResult)
        assert reason in str(rejected.value.cause)

    fake_model.script(completion("Slow answer."))
    assert (await orchestrator.conversations.send(cid, "Take your time")).ok

    await orchestrator.conversations.end(cid)
    with pytest.raises(
        (WorkflowUpdateFailedError, RPCError, WorkflowUpdateRPCTimeoutOrCancelledError)
    ):
        await orchestrator.conversations.send_existing(cid, "Anyone?")
    # Nothing rejected was recorded: the store holds exactly the two answered messages.
    turns = await orchestrator.conversations.turns(cid)
    assert [t.message for t in turns] == ["Hi", "Take your time"]


async def test_double_texting_reject_refuses_a_message_during_a_turn(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    """With regular-activity model steps the workflow is idle while the model thinks, so a second
    message is validated at once, and with the `reject` policy refused."""
    cid = _conversation()
    async with custom_orchestrator(
        stack, fake_model, model_step="activity", double_texting="reject"
    ) as conversations:
        fake_model.script(Reply(200, completion("Slow answer.").body, delay=1.5))
        first = asyncio.create_task(conversations.send(cid, "Take your time"))
        await asyncio.sleep(0.5)
        with pytest.raises(WorkflowUpdateFailedError) as busy:
            await conversations.send(cid, "Are you there?")
        assert "still being answered" in str(busy.value.cause)
        assert (await first).answer == "Slow answer."


async def test_a_message_during_a_local_model_step_is_answered_next(
    orchestrator: Orchestrator, fake_model: FakeModelServer
) -> None:
    """With local-activity model steps (the default) the step runs inside a workflow task, and
    the server holds a second message until that task completes: it is answered after the first,
    not refused, and nothing is lost or answered twice."""
    cid = _conversation()
    fake_model.script(
        Reply(200, completion("Slow answer.").body, delay=1.5), completion("Still here.")
    )
    first = asyncio.create_task(orchestrator.conversations.send(cid, "Take your time"))
    await asyncio.sleep(0.5)
    second = await orchestrator.conversations.send(cid, "Are you there?")
    assert (await first).answer == "Slow answer."
    assert second.answer == "Still here."
    turns = await orchestrator.conversations.turns(cid)
    assert [t.message for t in turns] == ["Take your time", "Are you there?"]


async def test_worker_restart_between_turns_keeps_memory(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    client = stack.client("orchestrator")
    task_queue = f"orchestrator-restart-{uuid.uuid4()}"
    conversations = ConversationClient(client, task_queue)
    cid = _conversation()

    def worker():  # type: ignore[no-untyped-def]
        return build_orchestrator_worker(
            client,
            task_queue=task_queue,
            settings=orchestrator_settings(),
            llm_settings=fake_llm_settings(fake_model),
        )

    fake_model.script(completion("Noted: your name is Ada."))
    async with worker():
        assert (await conversations.send(cid, "My name is Ada")).ok
    # A brand-new worker: no cached workflow state, it must replay from history.
    fake_model.script(completion("Your name is Ada."))
    async with worker():
        result = await conversations.send(cid, "What is my name?")
        assert result.ok
        status = await conversations.status(cid)
    assert status.turns == 2
    user_messages = [
        m["content"] for m in fake_model.chat_requests()[-1]["messages"] if m["role"] == "user"
    ]
    assert user_messages == ["My name is Ada", "What is my name?"]
