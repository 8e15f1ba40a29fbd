"""Long conversations at constant cost: transcript in the store, compaction, continue-as-new."""

from __future__ import annotations

import asyncio
import json
import uuid

from orchestrator.context import SUMMARY_PROMPT, ContextWindow
from orchestrator.models import ChatMessage, Usage
from tests.conftest import Stack, custom_orchestrator
from tests.support.fake_http import RecordedRequest, Reply
from tests.support.fake_llm import FakeModelServer, completion, error
from tests.support.histories import record_if_requested


def _is_summary_request(request: RecordedRequest) -> bool:
    return request.json()["messages"][0]["content"] == SUMMARY_PROMPT


def _user_messages(request: RecordedRequest) -> list[str]:
    return [m["content"] for m in request.json()["messages"] if m["role"] == "user"]


async def test_history_carries_ids_and_deltas_not_the_transcript(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    cid = f"long-{uuid.uuid4()}"
    marker = "UNIQUE-MARKER-" + "x" * 300
    async with custom_orchestrator(stack, fake_model) as conversations:
        fake_model.script(completion("first"))
        await conversations.send(cid, f"first message {marker}")
        for i in range(4):
            fake_model.script(completion(f"answer {i}"))
            await conversations.send(cid, f"message {i}")
        events = (await conversations.handle(cid).fetch_history()).events
    raw = b"".join(event.SerializeToString() for event in events)  # payloads unencoded
    # The long first message entered history twice in its own turn (the update, the turn record:
    # the model step is a local activity, whose input history does not record); the four later
    # turns never carry it again.
    assert raw.count(b"UNIQUE-MARKER-") == 2
    # The model still saw the whole conversation, loaded from the store.
    assert _user_messages(fake_model.requests[-1])[0] == f"first message {marker}"


async def test_compaction_summarises_old_turns_and_keeps_the_full_transcript(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    cid = f"compact-{uuid.uuid4()}"
    filler = "lorem ipsum dolor sit amet " * 40  # ~280 tokens per message
    async with custom_orchestrator(
        stack, fake_model, context_tokens=1200, keep_recent_turns=1
    ) as conversations:
        for i in range(6):

            def reply(request: RecordedRequest, i: int = i) -> Reply:
                if _is_summary_request(request):
                    return completion(f"SUMMARY up to turn {i}")
                return completion(f"answer {i}")

            fake_model.script(reply, reply)
            result = await conversations.send(cid, f"turn {i}: {filler}")
            assert result.ok, result.error
        turns = await conversations.turns(cid)
    model_calls = [r for r in fake_model.requests if not _is_summary_request(r)]
    summaries = [r for r in fake_model.requests if _is_summary_request(r)]
    assert summaries, "the budget was exceeded, so older turns must have been summarised"
    last = model_calls[-1].json()["messages"]
    assert any("Summary of the earlier conversation" in (m["content"] or "") for m in last)
    assert len(_user_messages(model_calls[-1])) < 6  # older turns only as the summary
    assert any("older turns were summarised" in note for t in turns for note in t.notes)
    # The store keeps everything: all six turns, in order.
    assert [t.message.split(":")[0] for t in turns] == [f"turn {i}" for i in range(6)]


async def test_context_window_error_compacts_and_runs_the_step_again(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    cid = f"ctxerr-{uuid.uuid4()}"
    async with custom_orchestrator(stack, fake_model, keep_recent_turns=1) as conversations:
        handle = conversations.handle(cid)
        fake_model.script(completion("one"), completion("two"))
        await conversations.send(cid, "first")
        await conversations.send(cid, "second")
        fake_model.script(
            error(
                400,
                "This model's maximum context length is 8192 tokens. However, your messages "
                "resulted in 9000 tokens. Please reduce the length of the messages.",
            ),
            completion("SUMMARY: first and second"),
            completion("three, after compaction"),
        )
        result = await conversations.send(cid, "third")
        await record_if_requested(handle, "conversation_context_window_error")
    assert result.ok and result.answer == "three, after compaction", result.error
    assert _is_summary_request(fake_model.requests[-2])
    retried = fake_model.requests[-1].json()["messages"]
    assert _user_messages(fake_model.requests[-1]) == ["third"]
    assert "SUMMARY: first and second" in retried[1]["content"]


def test_long_tool_output_is_truncated_for_the_model_only() -> None:
    window = ContextWindow(
        model="openai/fake-model",
        context_tokens=None,
        keep_recent_turns=4,
        max_tool_output_chars=200,
        offline=False,
    )
    long_output = json.dumps({"rows": ["x" * 50] * 20})
    viewed = window.view(ChatMessage(role="tool", tool_call_id="c1", name="t", content=long_output))
    assert viewed["content"].startswith(long_output[:200])
    assert viewed["content"].endswith(f"…[truncated {len(long_output) - 200} characters]")
    short = window.view(ChatMessage(role="tool", tool_call_id="c2", name="t", content="{}"))
    assert short["content"] == "{}"


async def test_continue_as_new_carries_everything_over(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    cid = f"can-{uuid.uuid4()}"
    async with custom_orchestrator(stack, fake_model, max_turns_per_run=2) as conversations:
        fake_model.script(
            completion(tool_calls=[("set_jira_project", {"project": "CANX"})]), completion("set")
        )
        await conversations.send(cid, "set project CANX")
        first_run = (await conversations.handle(cid).describe()).run_id
        for i in range(4):
            fake_model.script(completion(f"answer {i}"))
            assert (await conversations.send(cid, f"message {i}")).ok
        fake_model.script(completion(tool_calls=[("jira_metrics", {})]), completion("metrics"))
        metrics = await conversations.send(cid, "metrics for my project")
        description = await conversations.handle(cid).describe()
        status = await conversations.status(cid)
        turns = await conversations.turns(cid)
        usage = await conversations.handle(cid).query("usage", result_type=Usage)
        await record_if_requested(conversations.handle(cid), "conversation_after_continue_as_new")
    assert description.run_id != first_run, "the conversation continued as new"
    assert status.turns == 6 and len(turns) == 6
    assert "calculator" in status.tools and "jira_metrics" in status.tools
    # IT session state (in the IT namespace) survives the orchestrator's continue-as-new.
    assert metrics.tool_calls[0].result["project"] == "CANX"
    # The model saw the first turn's message after several continue-as-new boundaries.
    assert _user_messages(fake_model.requests[-1])[0] == "set project CANX"
    usage_total = sum(t.usage.prompt_tokens for t in turns)
    assert usage_total == 8 * 20  # eight model calls in six turns, 20 prompt tokens each
    assert usage.prompt_tokens == usage_total


async def test_messages_racing_continue_as_new_are_neither_lost_nor_repeated(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    """Every turn ends a run, so each next message races the continue-as-new boundary."""
    cid = f"race-{uuid.uuid4()}"
    count = 12

    def echo(request: RecordedRequest) -> Reply:
        return completion("echo: " + _user_messages(request)[-1])

    async with custom_orchestrator(stack, fake_model, max_turns_per_run=1) as conversations:
        fake_model.script(*[echo] * count)
        answers = []
        for i in range(count):
            result = await conversations.send(cid, f"m{i}")
            answers.append(result.answer)
            await asyncio.sleep(0)  # the next message goes out at once, mid continue-as-new
        turns = await conversations.turns(cid)
    assert answers == [f"echo: m{i}" for i in range(count)]
    assert [t.message for t in turns] == [f"m{i}" for i in range(count)]
    last_users = [_user_messages(r)[-1] for r in fake_model.requests]
    assert last_users == [f"m{i}" for i in range(count)], "each message reached the model once"
