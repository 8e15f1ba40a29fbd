"""What one turn costs in history: the tool list travels once, not in every model step."""

from __future__ import annotations

import json
import sqlite3
import tempfile
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from orchestrator.activities import parse_response
from orchestrator.client import ConversationClient
from orchestrator.dispatch import tool_message
from orchestrator.models import LLM_STEP_ACTIVITY, LlmRequest, LlmToolCall
from orchestrator.worker import build_orchestrator_worker
from tests.conftest import Orchestrator, Stack, fake_llm_settings, orchestrator_settings
from tests.support.fake_llm import FakeModelServer, completion


async def _model_steps(client: Client, conversation_id: str) -> list[LlmRequest]:
    history = await client.get_workflow_handle(conversation_id).fetch_history()
    steps = []
    for event in history.events:
        if event.event_type != EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            continue
        attributes = event.activity_task_scheduled_event_attributes
        if attributes.activity_type.name == LLM_STEP_ACTIVITY:
            [request] = await client.data_converter.decode(attributes.input.payloads, [LlmRequest])
            steps.append(request)
    return steps


def _one_tool_turn(fake_model: FakeModelServer, n: int) -> None:
    fake_model.script(
        completion(tool_calls=[("calculator", {"expression": f"{n} + {n}"})]),
        completion(f"{2 * n}"),
    )


@pytest.mark.parametrize("model_step", ["activity", "local"])
async def test_the_tool_list_travels_once_and_again_only_when_the_store_lacks_it(
    stack: Stack, fake_model: FakeModelServer, model_step: str
) -> None:
    client = stack.client("orchestrator")
    task_queue = f"orchestrator-catalog-{uuid.uuid4().hex[:8]}"
    store = Path(tempfile.mkdtemp(prefix="catalog-store-")) / "conversations.db"
    conversations = ConversationClient(client, task_queue)
    cid = f"catalog-{uuid.uuid4().hex[:8]}"

    def worker():  # type: ignore[no-untyped-def]
        return build_orchestrator_worker(
            client,
            task_queue=task_queue,
            settings=orchestrator_settings(store_url=f"sqlite:///{store}", model_step=model_step),
            llm_settings=fake_llm_settings(fake_model),
        )

    async with worker():
        for n in (1, 2, 3):
            _one_tool_turn(fake_model, n)
            assert (await conversations.send(cid, f"{n} + {n}?")).answer == f"{2 * n}"
    # The model got the whole list every time.
    requests = fake_model.chat_requests()
    assert len(requests) == 6
    assert all(request["tools"] == requests[0]["tools"] for request in requests)
    assert {t["function"]["name"] for t in requests[0]["tools"]} >= {"calculator"}
    if model_step == "activity":  # a regular activity's input is in history; a local one's is not
        steps = await _model_steps(client, cid)
        assert len(steps) == 6
        assert steps[0].tools, "the first step carries the tool list"
        assert all(step.tools is None for step in steps[1:]), "later steps name it by digest"
        assert len({step.tools_digest for step in steps}) == 1 and steps[0].tools_digest

    # A store that lost its tool lists (restored from an old backup, say), and a new worker
    # without a cache: the step is refused, sent again with the list, and the turn goes on.
    with sqlite3.connect(store) as connection:
        assert connection.execute("DELETE FROM tool_catalogs").rowcount == 1
    async with worker():
        _one_tool_turn(fake_model, 4)
        assert (await conversations.send(cid, "4 + 4?")).answer == "8"
    assert fake_model.chat_requests()[-1]["tools"] == requests[0]["tools"]
    with sqlite3.connect(store) as connection:
        assert connection.execute("SELECT COUNT(*) FROM tool_catalogs").fetchone() == (1,)
    if model_step == "activity":
        steps = await _model_steps(client, cid)
        assert [step.tools is not None for step in steps[6:]] == [False, True, False]


async def test_model_calls_go_through_litellms_own_http_handler(
    orchestrator: Orchestrator, fake_model: FakeModelServer
) -> None:
    """Not the openai SDK, whose per-call re-walk of every message and tool schema was most of a
    model step's CPU: a LiteLLM upgrade that drops the switch shows here, not as a slow bench."""
    fake_model.script(completion("hello"))
    assert (await orchestrator.conversations.send(f"ua-{uuid.uuid4().hex[:8]}", "hi")).ok
    [request] = [r for r in fake_model.requests if r.path.endswith("/chat/completions")]
    assert (request.header("User-Agent") or "").startswith("litellm/"), request.header("User-Agent")


def test_a_step_s_tool_messages_are_bounded_in_bytes_not_only_characters() -> None:
    """4-byte characters: 16,000 of them are 64 KB, so a character limit alone would let a
    step's messages grow to four times their budget."""
    call = LlmToolCall(id="c1", name="echo", arguments="{}")
    message = tool_message(call, {"text": "😀" * 20_000}, limit=16_000, max_bytes=10_000)
    assert message.content is not None
    assert len(message.content.encode()) <= 10_000
    assert "truncated" in message.content


def test_a_reply_s_tool_arguments_are_bounded_in_bytes() -> None:
    arguments = json.dumps({"text": "😀" * 100_000}, ensure_ascii=False)  # 100,000 chars, 400 KB
    reply = SimpleNamespace(
        choices=[
            SimpleNamespace(
                message=SimpleNamespace(
                    content=None,
                    tool_calls=[
                        SimpleNamespace(
                            id=f"call_{i}",
                            function=SimpleNamespace(name="echo", arguments=arguments),
                        )
                        for i in range(2)
                    ],
                )
            )
        ],
        usage=None,
        model="fake",
    )
    result = parse_response(reply)
    # 800 KB asked for, 512 KB allowed: the second call's arguments are replaced by a note.
    assert result.tool_calls[0].arguments == arguments
    assert result.tool_calls[1].arguments.startswith("<")
