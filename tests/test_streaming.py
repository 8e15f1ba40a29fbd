"""Live turns: token deltas through the store, turn events through the workflow, one feed.

Real dev server, real workers, real Nexus; the fake model streams over real HTTP (SSE chunks).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from orchestrator.events import StreamCursor, StreamEvent
from orchestrator.feed import ConversationFeeds
from orchestrator.models import TurnResult
from orchestrator.store import open_store
from orchestrator.worker import build_orchestrator_worker
from tests.conftest import (
    STORE_URL,
    Orchestrator,
    Stack,
    fake_llm_settings,
    orchestrator_settings,
)
from tests.support.fake_llm import FakeModelServer, completion, words

_WORKFLOW_TASK_EVENTS = {
    EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
}
ANSWER = "The calculator says six times seven is forty two, which is the answer you wanted."


def _cid() -> str:
    return f"stream-{uuid.uuid4().hex[:8]}"


@asynccontextmanager
async def _feeds(orchestrator: Orchestrator) -> AsyncIterator[ConversationFeeds]:
    store = open_store(STORE_URL)
    feeds = ConversationFeeds(orchestrator.conversations, store)
    try:
        yield feeds
    finally:
        await feeds.close()
        await store.close()


async def _until_answer(
    feeds: ConversationFeeds,
    cid: str,
    after: StreamCursor,
    sending: asyncio.Task[TurnResult] | None = None,
    stop_after_tokens: int | None = None,
) -> tuple[list[StreamEvent], list[bool]]:
    """The events up to the turn's end (or the first `stop_after_tokens` tokens), and for each
    token whether the message's update had already returned when it arrived."""
    seen: list[StreamEvent] = []
    answered_at_token: list[bool] = []
    async for event in feeds.subscribe(cid, after):
        seen.append(event)
        if event.kind == "token":
            answered_at_token.append(sending is not None and sending.done())
            if stop_after_tokens is not None and len(answered_at_token) >= stop_after_tokens:
                break
        if event.kind in ("answer", "error"):
            break
    return seen, answered_at_token


async def test_a_turn_streams_its_tokens_before_the_answer_and_its_events_in_order(
    orchestrator: Orchestrator, fake_model: FakeModelServer
) -> None:
    cid = _cid()
    fake_model.script(
        completion(tool_calls=[("calculator", {"expression": "6 * 7"})]),
        completion(ANSWER, stream_delay=0.05),
    )
    async with _feeds(orchestrator) as feeds:
        start = await feeds.cursor(cid)
        sending = asyncio.create_task(orchestrator.conversations.send(cid, "what is 6 * 7?"))
        events, answered_at_token = await asyncio.wait_for(
            _until_answer(feeds, cid, start, sending), timeout=60
        )
        result = await sending
    assert result.answer == ANSWER
    tokens = [e.text for e in events if e.kind == "token"]
    # Word by word, as the provider sent them, and not one of them after the turn had answered.
    assert "".join(t or "" for t in tokens) == ANSWER
    assert len(tokens) > 1
    assert not any(answered_at_token)
    kinds = [e.kind for e in events if e.kind != "token"]
    assert kinds == [
        "turn_started",
        "model_step_started",
        "tool_started",
        "tool_finished",
        "model_step_started",
        "answer",
    ]
    by_kind = {e.kind: e for e in events if e.event is not None}
    assert by_kind["tool_finished"].event is not None
    assert by_kind["tool_finished"].event.tool == "calculator"
    assert by_kind["tool_finished"].event.ok is True
    assert by_kind["answer"].text == ANSWER
    assert all(e.turn == 1 for e in events)
    assert {e.step for e in events if e.kind == "token"} == {2}
    # Every id is a cursor, and they only move forward.
    cursors = [StreamCursor.parse(e.id) for e in events]
    assert all((b.events, b.tokens) >= (a.events, a.tokens) for a, b in itertools.pairwise(cursors))


async def test_a_reader_that_comes_back_resumes_where_it_left_off(
    orchestrator: Orchestrator, fake_model: FakeModelServer
) -> None:
    cid = _cid()
    fake_model.script(completion(ANSWER, stream_delay=0.05))
    async with _feeds(orchestrator) as feeds:
        start = await feeds.cursor(cid)
        sending = asyncio.create_task(orchestrator.conversations.send(cid, "hello"))
        first, _ = await asyncio.wait_for(
            _until_answer(feeds, cid, start, stop_after_tokens=3), timeout=60
        )
        # The reader is gone for a while; the turn goes on without it.
        await sending
    async with _feeds(orchestrator) as feeds:  # a new process, say: nothing cached
        rest, _ = await asyncio.wait_for(
            _until_answer(feeds, cid, StreamCursor.parse(first[-1].id)), timeout=60
        )
    tokens = [e.text for e in first + rest if e.kind == "token"]
    assert "".join(t or "" for t in tokens) == ANSWER
    assert len(tokens) == len(words(ANSWER))  # none twice, none lost
    assert [e.kind for e in rest][-1] == "answer"
    # Each turn event once, before or after the gap.
    assert sorted(e.kind for e in first + rest if e.kind != "token") == [
        "answer",
        "model_step_started",
        "turn_started",
    ]


async def test_streaming_adds_no_history(stack: Stack, fake_model: FakeModelServer) -> None:
    """The same two-step turn, streamed and not: the workflow histories are the same size."""
    client: Client = stack.client("orchestrator")
    sizes: dict[bool, int] = {}
    for stream in (False, True):
        task_queue = f"orchestrator-stream-{uuid.uuid4().hex[:8]}"
        llm = fake_llm_settings(fake_model).model_copy(update={"stream": stream})
        worker = build_orchestrator_worker(
            client, task_queue=task_queue, settings=orchestrator_settings(), llm_settings=llm
        )
        fake_model.script(
            completion(tool_calls=[("calculator", {"expression": "6 * 7"})]),
            completion(ANSWER, stream_delay=0.01),
        )
        async with worker:
            from orchestrator.client import ConversationClient

            conversations = ConversationClient(client, task_queue)
            cid = f"history-{'on' if stream else 'off'}-{uuid.uuid4().hex[:8]}"
            result = await conversations.send(cid, "what is 6 * 7?", message_id="m-1")
            assert result.answer == ANSWER
            history = await conversations.handle(cid).fetch_history()
            # Workflow tasks come and go with timing (two tool results in one task or two);
            # what a turn records is the rest.
            sizes[stream] = sum(
                event.ByteSize()
                for event in history.events
                if event.event_type not in _WORKFLOW_TASK_EVENTS
            )
    # Ids and timestamps differ by a few bytes between runs; 15 tokens would be hundreds.
    assert abs(sizes[True] - sizes[False]) < 50, sizes


async def test_agent_ask_prints_the_answer_as_it_streams(
    stack: Stack, orchestrator: Orchestrator, fake_model: FakeModelServer
) -> None:
    """`agent ask --stream` as a user runs it: the first words are on screen while the provider
    is still sending the rest, and the answer is printed once."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import ORCHESTRATOR_TASK_QUEUE

    slow = " ".join(f"word{i}" for i in range(30))
    rest_may_go = threading.Event()  # the provider holds word1.. until the CLI shows word0
    fake_model.script(
        completion(tool_calls=[("calculator", {"expression": "6 * 7"})]),
        completion(slow, gate=rest_may_go, gate_after_words=1),
    )
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": stack.env.client.service_client.config.target_host,
        "TEMPORAL_NAMESPACE": "orchestrator",
        "TEMPORAL_TASK_QUEUE": ORCHESTRATOR_TASK_QUEUE,
        "ORCHESTRATOR_STORE_URL": STORE_URL,
        "COLUMNS": "400",
    }
    agent = str(Path(sys.executable).parent / "agent")
    process = await asyncio.create_subprocess_exec(
        agent,
        "ask",
        "--stream",
        "what is 6 * 7?",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    output = b""
    running_when_first_word_shown: bool | None = None
    while True:
        piece = await asyncio.wait_for(process.stdout.read(64), timeout=60)
        if not piece:
            break
        output += piece
        if running_when_first_word_shown is None and b"word0" in output:
            # The provider has sent word0 and nothing after it: the CLI printed it as it came.
            running_when_first_word_shown = b"word1" not in output and process.returncode is None
            rest_may_go.set()
    _, stderr = await process.communicate()
    text = output.decode()
    assert process.returncode == 0, stderr.decode()
    assert running_when_first_word_shown is True
    assert "calculator" in text  # the tool call was shown as it ran
    assert text.count("word29") == 1  # streamed, not printed again at the end
    assert "Traceback" not in stderr.decode()


async def test_turn_events_carry_across_continue_as_new(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    """A run of one turn each: the next run carries the events on, offsets unbroken, and a
    reader that follows across the hand-over sees every turn's events once."""
    from tests.conftest import custom_orchestrator

    fake_model.script(completion("First."), completion("Second."), completion("Third."))
    async with custom_orchestrator(stack, fake_model, max_turns_per_run=1) as conversations:
        cid = _cid()
        runs = []
        for text in ("one", "two", "three"):
            await conversations.send(cid, text)
            runs.append((await conversations.handle(cid).describe()).run_id)
        assert len(set(runs)) > 1  # the conversation did continue as new
        page = await conversations.events(cid, 0)
        beyond = await conversations.events(cid, 10_000)
    offsets = [event.offset for event in page.events]
    assert offsets == list(range(len(offsets)))  # nothing dropped or renumbered across runs
    answers = [event.text for event in page.events if event.kind == "answer"]
    assert answers == ["First.", "Second.", "Third."]
    assert [event.turn for event in page.events if event.kind == "turn_started"] == [1, 2, 3]
    assert page.next_offset == offsets[-1] + 1
    # Asking past the end is clamped to the end, never an error.
    assert beyond.events == [] and beyond.next_offset == page.next_offset


async def test_a_stream_cut_short_is_asked_again_and_readers_start_the_step_over(
    orchestrator: Orchestrator, fake_model: FakeModelServer
) -> None:
    """The provider's connection drops after three words (no finish reason): the step is not
    taken as answered; it is asked again, readers are told to drop the partial text, and the
    answer they end with is the whole one."""
    from tests.support.fake_http import Reply
    from tests.support.fake_llm import as_stream

    whole = as_stream(completion(ANSWER))
    cut = Reply(200, chunks=whole.chunks[:4])  # the role chunk and three words, then nothing
    fake_model.script(cut, completion(ANSWER))
    cid = _cid()
    async with _feeds(orchestrator) as feeds:
        start = await feeds.cursor(cid)
        sending = asyncio.create_task(orchestrator.conversations.send(cid, "hello"))
        events, _ = await asyncio.wait_for(_until_answer(feeds, cid, start), timeout=60)
        result = await sending
    assert result.ok and result.answer == ANSWER
    kinds = [e.kind for e in events]
    assert "model_step_retry" in kinds
    after_retry = kinds.index("model_step_retry")
    cut_text = "".join(e.text or "" for e in events[:after_retry] if e.kind == "token")
    assert cut_text == "The calculator says "
    again = "".join(e.text or "" for e in events[after_retry:] if e.kind == "token")
    assert again == ANSWER
    assert len(fake_model.chat_requests()) == 2
