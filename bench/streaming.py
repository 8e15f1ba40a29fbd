"""`make bench`: token streaming, from the provider's first token to an SSE client.

The fake model (`bench.fake_model`, its own process, streaming mode) streams BENCH_STREAM_TOKENS=50
tokens, one every BENCH_STREAM_TOKEN_MS=20 ms, as OpenAI-style SSE over real HTTP, and keeps the
wall-clock time it wrote each token (`time.time()`; every process is on this machine). Figures:

1. **platform**: the stack as `make up` runs it (`infrastructure.devstack.DevStack`: dev server,
   team workers, the orchestrator worker and the gateway, each in its own process); the bench
   process is the SSE client. Tokens go through LiteLLM (`stream=True`), the conversation store
   and the gateway's feed; turn events through workflow state. Three ways of reading, in the
   same interleaved rounds:
   - `platform`: `POST /v1/conversations/{id}/messages` with `Accept: text/event-stream`, on a
     conversation the gateway already follows (a live reader is open on it);
   - `platform_follower`: that live reader, `GET /v1/conversations/{id}/events?after=<cursor>`,
     seeing the same turns;
   - `platform_cold`: the streamed POST on a conversation the gateway has no feed for yet (a
     fresh one, started with an untimed plain message), as when a chat page has just been opened
     or nobody followed the conversation for FEED_IDLE_SECONDS.
   First-token latency = the client's receipt of the first token minus the fake's write of it;
   end-to-end = POST sent to answer event received.
2. **workflow_streams**: `temporalio.contrib.workflow_streams` on the same dev server. A bench-only
   workflow (`StreamBenchWorkflow`, below) hosts a `WorkflowStream`; its `turn` update runs one
   activity that streams the same tokens from the same fake (httpx) and publishes each through
   `WorkflowStreamClient.from_within_activity()`; the bench subscribes with
   `WorkflowStreamClient.subscribe`. The worker is its own process (`python -m bench.streaming
   worker ...`, unsandboxed like the orchestrator's). Variants, interleaved turn by turn with (1):
   `batched` (the library's defaults: a flush every 2 s), `interval_100ms` (batch_interval 100 ms)
   and `force_flush` (force_flush=True on every token). History bytes per turn: the growth of the
   sum of `ByteSize()` of every event (`fetch_history`) over the measured turns, for each variant
   and for (1)'s conversation; and for the orchestrator with LLM_STREAM on and off (two in-process
   orchestrator workers on their own task queues, no tool endpoints, the same fake).
3. **many readers**: BENCH_SSE_CONVERSATIONS=20 conversations x (BENCH_SSE_CLIENTS=200 / 20)
   readers each on `GET /v1/conversations/{id}/events?after=<cursor>`, one gateway process; every
   conversation runs BENCH_SSE_TURNS=3 turns (sent with plain JSON POSTs, all conversations at
   once). Checks every reader got every token of every turn, in order; first-token latency across
   readers and turns; the gateway's CPU (/proc/PID/stat) and RSS (VmRSS sampled, VmHWM).
4. **gateway restart** (BENCH_STREAM_RESTART=1): a reader follows a turn of
   BENCH_STREAM_RESTART_TOKENS=250 tokens; after a third of them the gateway is SIGKILLed and
   started again; the reader reconnects with `Last-Event-ID`; tokens lost and duplicated.

    python -m bench.streaming        # BENCH_STREAM_TURNS=20 (+ BENCH_STREAM_WARMUP=2)
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from temporalio import activity, workflow
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.contrib.workflow_streams import WorkflowStream, WorkflowStreamClient
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from bench.common import save, summarise
from bench.costs import cpu_seconds
from bench.fake_model import fake_model_server, plans_for, stream_tag_text, streamed_text

TOKENS = int(os.environ.get("BENCH_STREAM_TOKENS", "50"))
TOKEN_MS = float(os.environ.get("BENCH_STREAM_TOKEN_MS", "20"))
TURNS = int(os.environ.get("BENCH_STREAM_TURNS", "20"))
WARMUP = int(os.environ.get("BENCH_STREAM_WARMUP", "2"))
HISTORY_TURNS = int(os.environ.get("BENCH_STREAM_HISTORY_TURNS", "10"))
SSE_CLIENTS = int(os.environ.get("BENCH_SSE_CLIENTS", "200"))
SSE_CONVERSATIONS = int(os.environ.get("BENCH_SSE_CONVERSATIONS", "20"))
SSE_TURNS = int(os.environ.get("BENCH_SSE_TURNS", "3"))
COLD = os.environ.get("BENCH_STREAM_COLD", "1") not in ("0", "false", "no", "")
FOLLOWER = os.environ.get("BENCH_STREAM_FOLLOWER", "1") not in ("0", "false", "no", "")
RESTART = os.environ.get("BENCH_STREAM_RESTART", "1") not in ("0", "false", "no", "")
RESTART_TOKENS = int(os.environ.get("BENCH_STREAM_RESTART_TOKENS", "250"))
TURN_TIMEOUT = 60.0
PHASE_TIMEOUT = 300.0
GOAL_FIRST_TOKEN_MS = 150.0

STREAMS_TASK_QUEUE = "bench-workflow-streams"
STREAMS_WORKFLOW = "StreamBenchWorkflow"
TOKENS_TOPIC = "tokens"
VARIANTS = ("batched", "interval_100ms", "force_flush")
NAMESPACE = "orchestrator"
_TOKEN = re.compile(r"t(\d{3,})")


class BenchFailure(RuntimeError):
    pass


# ---- the workflow_streams side (its worker runs as `python -m bench.streaming worker`) ---------
@dataclass
class StreamTurn:
    model_url: str
    text: str
    variant: str


@activity.defn(name="bench_stream_reply")
async def stream_reply(turn: StreamTurn) -> int:
    """Stream the fake model's answer and publish every text delta on the workflow's stream."""
    interval = timedelta(milliseconds=100) if turn.variant == "interval_100ms" else None
    streams = (
        WorkflowStreamClient.from_within_activity(batch_interval=interval)
        if interval is not None
        else WorkflowStreamClient.from_within_activity()
    )
    topic = streams.topic(TOKENS_TOPIC, type=str)
    force = turn.variant == "force_flush"
    body = {
        "model": "fake-model",
        "messages": [{"role": "user", "content": turn.text}],
        "stream": True,
    }
    published = 0
    async with (
        streams,
        httpx.AsyncClient(timeout=30.0, trust_env=False) as http,
        http.stream("POST", f"{turn.model_url}/v1/chat/completions", json=body) as response,
    ):
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    topic.publish(text, force_flush=force)
                    published += 1
        # Flush before the context exits. Without this, `__aexit__` sometimes hangs (seen here
        # with force_flush): it cancels the flusher task while the last publish's force_flush
        # has just set the flusher's event, and on Python 3.11 `asyncio.wait_for` swallows a
        # cancellation that arrives as its inner future completes (fixed in 3.12), so the
        # flusher loops on and `await self._flush_task` never returns; the activity then times
        # out and its retry publishes the tokens again.
        await streams.flush()
    return published


@workflow.defn(name=STREAMS_WORKFLOW)
class StreamBenchWorkflow:
    """Hosts a WorkflowStream; each `turn` update streams one model reply onto it."""

    @workflow.init
    def __init__(self, name: str) -> None:
        self.stream = WorkflowStream()
        self.finished = False

    @workflow.run
    async def run(self, name: str) -> None:
        await workflow.wait_condition(lambda: self.finished)
        await workflow.wait_condition(workflow.all_handlers_finished)

    @workflow.update(name="turn")
    async def turn(self, turn: StreamTurn) -> int:
        published: int = await workflow.execute_activity(
            stream_reply,
            turn,
            start_to_close_timeout=timedelta(seconds=20),
            # A retry would publish the tokens again: fail the turn instead, visibly.
            retry_policy=RetryPolicy(maximum_attempts=1),
        )
        return published

    @workflow.signal(name="finish")
    def finish(self) -> None:
        self.finished = True


async def run_streams_worker(address: str, namespace: str) -> None:
    client = await Client.connect(address, namespace=namespace)
    worker = Worker(
        client,
        task_queue=STREAMS_TASK_QUEUE,
        workflows=[StreamBenchWorkflow],
        activities=[stream_reply],
        workflow_runner=UnsandboxedWorkflowRunner(),  # as the orchestrator's workers run
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    parent = os.getppid()
    async with worker:
        while not stop.is_set() and os.getppid() == parent:  # the bench gone: stop too
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


@contextmanager
def streams_worker_process(address: str, log_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    with (log_dir / "bench-streams-worker.log").open("ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.streaming", "worker", address, NAMESPACE],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


async def wait_for_poller(client: Client, task_queue: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        response = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace,
                task_queue=TaskQueue(name=task_queue),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            )
        )
        if response.pollers:
            return
        if time.monotonic() > deadline:
            raise BenchFailure(f"nobody polls {task_queue}")
        await asyncio.sleep(0.3)


# ---- measuring ---------------------------------------------------------------------------------
@dataclass
class Received:
    """What a client got of one turn: each token delta with its arrival time (time.time())."""

    tokens: list[tuple[float, str]] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0
    answer: str | None = None
    headers_at: float = 0.0  # when the HTTP response's headers came (a POST's stream)
    turn: int = -1  # the conversation's turn number (platform)

    @property
    def text(self) -> str:
        return "".join(text for _, text in self.tokens)


@dataclass
class TurnSample:
    first_token_ms: float
    end_to_end_ms: float
    in_order: bool
    tokens: int
    send_to_first_write_ms: float  # request sent -> the provider's first token
    headers_after_first_write_ms: float | None  # a POST stream's response headers


async def stamps(http: httpx.AsyncClient, model_url: str, tag: str) -> list[float]:
    response = await http.get(f"{model_url}/stamps/{tag}")
    response.raise_for_status()
    values: list[float] = response.json()
    return values


def sample(received: Received, written: list[float], tokens: int) -> TurnSample:
    expected = streamed_text(tokens)
    if not received.tokens or not written:
        raise BenchFailure(f"no token arrived (client got {received.text!r}, fake wrote {written})")
    return TurnSample(
        first_token_ms=(received.tokens[0][0] - written[0]) * 1000,
        end_to_end_ms=(received.ended - received.started) * 1000,
        in_order=received.text == expected,
        tokens=len(_TOKEN.findall(received.text)),
        send_to_first_write_ms=(written[0] - received.started) * 1000,
        headers_after_first_write_ms=(received.headers_at - written[0]) * 1000
        if received.headers_at
        else None,
    )


@dataclass
class SseEvent:
    id: str | None
    kind: str
    data: dict[str, Any]
    at: float


async def sse_events(response: httpx.Response) -> AsyncIterator[SseEvent]:
    """Parse an SSE body into events, each stamped with time.time() when its blank line came."""
    event_id: str | None = None
    kind = "message"
    data: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield SseEvent(event_id, kind, json.loads("\n".join(data)), time.time())
            event_id, kind, data = None, "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


@dataclass
class Platform:
    http: httpx.AsyncClient  # the gateway, with the demo user's key
    model_url: str

    async def create(self, title: str) -> str:
        response = await self.http.post("/v1/conversations", json={"title": title})
        response.raise_for_status()
        conversation_id: str = response.json()["conversation_id"]
        return conversation_id

    async def send(self, conversation_id: str, text: str) -> None:
        """A plain (JSON) message: the turn's result when it is done."""
        response = await self.http.post(
            f"/v1/conversations/{conversation_id}/messages", json={"text": text}
        )
        response.raise_for_status()
        if not response.json().get("ok"):
            raise BenchFailure(f"turn failed: {response.text[:300]}")

    async def cursor(self, conversation_id: str) -> str:
        response = await self.http.get(f"/v1/conversations/{conversation_id}")
        response.raise_for_status()
        cursor: str = response.json()["cursor"]
        return cursor

    async def streamed_turn(self, conversation_id: str, text: str) -> Received:
        """POST a message with Accept: text/event-stream; read the turn's events to its answer."""
        received = Received(started=time.time())
        async with self.http.stream(
            "POST",
            f"/v1/conversations/{conversation_id}/messages",
            json={"text": text},
            headers={"Accept": "text/event-stream"},
        ) as response:
            response.raise_for_status()
            received.headers_at = time.time()
            async for event in sse_events(response):
                received.turn = int(event.data.get("turn") or received.turn)
                if event.kind == "token":
                    received.tokens.append((event.at, str(event.data.get("text") or "")))
                elif event.kind in ("answer", "error"):
                    received.ended = event.at
                    received.answer = str(event.data.get("text") or "")
                    if event.kind == "error":
                        raise BenchFailure(f"turn failed: {received.answer}")
                    break
        return received


@dataclass
class Streams:
    """The workflow_streams side: one workflow and one live subscription per variant."""

    client: Client
    model_url: str
    tag: str
    queues: dict[str, asyncio.Queue[tuple[float, str]]] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def workflow_id(self, variant: str) -> str:
        return f"bench-streams-{variant}-{self.tag}"

    async def start(self) -> None:
        for variant in VARIANTS:
            await self.client.start_workflow(
                STREAMS_WORKFLOW,
                variant,
                id=self.workflow_id(variant),
                task_queue=STREAMS_TASK_QUEUE,
            )
            queue: asyncio.Queue[tuple[float, str]] = asyncio.Queue()
            self.queues[variant] = queue
            self.tasks.append(asyncio.create_task(self._follow(variant, queue)))

    async def _follow(self, variant: str, queue: asyncio.Queue[tuple[float, str]]) -> None:
        subscriber = WorkflowStreamClient.create(self.client, self.workflow_id(variant))
        async for item in subscriber.subscribe(TOKENS_TOPIC, result_type=str):
            queue.put_nowait((time.time(), item.data))

    async def turn(self, variant: str, text: str, tokens: int) -> Received:
        queue = self.queues[variant]
        received = Received(started=time.time())
        handle = self.client.get_workflow_handle(self.workflow_id(variant))
        update = asyncio.create_task(
            handle.execute_update(
                "turn", StreamTurn(self.model_url, text, variant), result_type=int
            )
        )
        try:
            while len(received.tokens) < tokens:
                received.tokens.append(await asyncio.wait_for(queue.get(), TURN_TIMEOUT))
            received.ended = received.tokens[-1][0]
            published = await update
        finally:
            update.cancel()
        await asyncio.sleep(0.2)  # anything more on the stream would be a duplicate
        if published != tokens or not queue.empty():
            raise BenchFailure(
                f"{variant}: {published} tokens published, {queue.qsize()} more than expected "
                "arrived"
            )
        return received

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for variant in VARIANTS:
            with contextlib.suppress(Exception):
                await self.client.get_workflow_handle(self.workflow_id(variant)).signal("finish")


@dataclass
class Follower:
    """A live `GET /events` reader of one conversation: token deltas and answers, by turn."""

    turns: dict[int, Received] = field(default_factory=dict)
    answered: dict[int, asyncio.Event] = field(default_factory=dict)

    def answer_of(self, turn: int) -> asyncio.Event:
        return self.answered.setdefault(turn, asyncio.Event())

    async def run(self, http: httpx.AsyncClient, conversation_id: str, cursor: str) -> None:
        async with http.stream(
            "GET",
            f"/v1/conversations/{conversation_id}/events",
            params={"after": cursor},
            headers={"Accept": "text/event-stream"},
            timeout=httpx.Timeout(10.0, read=None),
        ) as response:
            response.raise_for_status()
            async for event in sse_events(response):
                turn = int(event.data.get("turn") or 0)
                if event.kind == "token":
                    got = self.turns.setdefault(turn, Received())
                    got.tokens.append((event.at, str(event.data.get("text") or "")))
                elif event.kind in ("answer", "error"):
                    self.turns.setdefault(turn, Received()).ended = event.at
                    self.answer_of(turn).set()


async def history_bytes(client: Client, workflow_id: str) -> tuple[int, int]:
    """The latest run's history: total ByteSize() of its events, and how many events."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    return sum(event.ByteSize() for event in history.events), len(history.events)


async def phase_latency(
    platform: Platform, streams: Streams, http: httpx.AsyncClient
) -> dict[str, Any]:
    """(1) against (2): turns interleaved, the order rotated every turn."""
    conversation_id = await platform.create("bench streaming latency")
    await platform.send(conversation_id, "first message: starts the conversation")
    follower = Follower()
    following = asyncio.create_task(
        follower.run(platform.http, conversation_id, await platform.cursor(conversation_id))
        if FOLLOWER
        else asyncio.sleep(0)
    )
    kinds = ("platform", "platform_cold", *VARIANTS) if COLD else ("platform", *VARIANTS)
    samples: dict[str, list[TurnSample]] = {kind: [] for kind in kinds}
    if FOLLOWER:
        samples["platform_follower"] = []
    bytes_at: dict[str, tuple[int, int]] = {}
    workflow_ids = {"platform": conversation_id} | {v: streams.workflow_id(v) for v in VARIANTS}
    try:
        await _latency_turns(
            platform,
            streams,
            http,
            conversation_id,
            follower,
            samples,
            bytes_at,
            workflow_ids,
        )
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
    history: dict[str, Any] = {}
    for kind in ("platform", *VARIANTS):
        total, events = await history_bytes(streams.client, workflow_ids[kind])
        before, events_before = bytes_at[kind]
        history[kind] = {
            "bytes_per_turn": round((total - before) / TURNS),
            "events_per_turn": round((events - events_before) / TURNS, 1),
            "total_bytes": total,
        }
    history["platform_follower"] = history["platform_cold"] = history["platform"]
    return {
        "conversation_id": conversation_id,
        "samples": {k: [s.__dict__ for s in v] for k, v in samples.items()},
        "first_token_ms": {k: summarise([s.first_token_ms for s in v]) for k, v in samples.items()},
        "end_to_end_ms": {k: summarise([s.end_to_end_ms for s in v]) for k, v in samples.items()},
        "all_in_order": {k: all(s.in_order for s in v) for k, v in samples.items()},
        "tokens_per_turn": {k: sorted({s.tokens for s in v}) for k, v in samples.items()},
        "send_to_first_write_ms": {
            k: summarise([s.send_to_first_write_ms for s in v]) for k, v in samples.items()
        },
        "post_headers_after_first_write_ms": {
            k: summarise(
                [s.headers_after_first_write_ms for s in v if s.headers_after_first_write_ms]
            )
            for k in ("platform", "platform_cold")
            if (v := samples.get(k))
        },
        "history": history,
    }


async def _latency_turns(
    platform: Platform,
    streams: Streams,
    http: httpx.AsyncClient,
    conversation_id: str,
    follower: Follower,
    samples: dict[str, list[TurnSample]],
    bytes_at: dict[str, tuple[int, int]],
    workflow_ids: dict[str, str],
) -> None:
    kinds = ("platform", "platform_cold", *VARIANTS) if COLD else ("platform", *VARIANTS)
    for index in range(WARMUP + TURNS):
        if index == WARMUP:
            for kind in workflow_ids:
                bytes_at[kind] = await history_bytes(streams.client, workflow_ids[kind])
        shift = index % len(kinds)
        for kind in kinds[shift:] + kinds[:shift]:
            tag = f"{kind}-{index}-{uuid.uuid4().hex[:6]}"
            text = f"{stream_tag_text(tag)} turn {index}"
            if kind == "platform_cold":
                # A conversation the gateway has no live feed for yet: started with a plain
                # (JSON) message, then a streamed one, as a chat whose page was just opened.
                fresh = await platform.create(f"cold feed {index}")
                await platform.send(fresh, "first message")
                received = await asyncio.wait_for(platform.streamed_turn(fresh, text), TURN_TIMEOUT)
            elif kind == "platform":
                received = await asyncio.wait_for(
                    platform.streamed_turn(conversation_id, text), TURN_TIMEOUT
                )
            else:
                received = await streams.turn(kind, text, TOKENS)
            if kind.startswith("platform") and received.answer != streamed_text(TOKENS):
                raise BenchFailure(f"{kind} answer was {received.answer!r}")
            written = await stamps(http, platform.model_url, tag)
            result = sample(received, written, TOKENS)
            if index >= WARMUP:
                samples[kind].append(result)
            if kind != "platform":
                continue
            if not FOLLOWER:
                continue
            # The same turn as the live GET /events reader saw it.
            await asyncio.wait_for(follower.answer_of(received.turn).wait(), TURN_TIMEOUT)
            seen = follower.turns[received.turn]
            seen.started = received.started
            if index >= WARMUP:
                samples["platform_follower"].append(sample(seen, written, TOKENS))
        if index == 0:
            print("  first turns done (warm-up) ...")


async def phase_history_on_off(client: Client, model_url: str, tmp: Path) -> dict[str, Any]:
    """The orchestrator's history bytes per turn with LLM streaming on and off (in-process workers,
    no tool endpoints, the same fake model), turns interleaved."""
    from orchestrator.client import ConversationClient
    from orchestrator.config import LLMSettings, OrchestratorSettings
    from orchestrator.worker import build_orchestrator_worker

    sides = {"stream_on": True, "stream_off": False}
    result: dict[str, Any] = {}
    async with AsyncExitStack() as workers:
        conversations: dict[str, tuple[ConversationClient, str]] = {}
        for name, stream in sides.items():
            queue = f"bench-history-{name}"
            worker = build_orchestrator_worker(
                client,
                task_queue=queue,
                settings=OrchestratorSettings(
                    store_url=f"sqlite:///{tmp}/history-{name}.db", tool_endpoints=[]
                ),
                llm_settings=LLMSettings(
                    model="openai/fake-model",
                    api_base=f"{model_url}/v1",
                    api_key="sk-bench",
                    timeout_seconds=10,
                    temperature=0,
                    stream=stream,
                ),
            )
            await workers.enter_async_context(worker)
            conversations[name] = (
                ConversationClient(client, queue),
                f"bench-history-{name}-{uuid.uuid4().hex[:8]}",
            )
        before: dict[str, tuple[int, int]] = {}
        for index in range(2 + HISTORY_TURNS):
            if index == 2:
                for name, (_, cid) in conversations.items():
                    before[name] = await history_bytes(client, cid)
            for name, (conversation, cid) in conversations.items():
                turn = await conversation.send(cid, f"history turn {index}")
                if not turn.ok or turn.answer != streamed_text(TOKENS):
                    raise BenchFailure(f"{name} turn went wrong: {turn.error or turn.answer!r}")
        for name, (_, cid) in conversations.items():
            total, events = await history_bytes(client, cid)
            result[name] = {
                "bytes_per_turn": round((total - before[name][0]) / HISTORY_TURNS),
                "events_per_turn": round((events - before[name][1]) / HISTORY_TURNS, 1),
                "total_bytes": total,
            }
    return result


# ---- many readers ------------------------------------------------------------------------------
def rss_kb(pid: int, field_name: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


@dataclass
class Reader:
    conversation: int
    turns: dict[int, Received] = field(default_factory=dict)  # the workflow's turn number
    answers: int = 0
    connected: asyncio.Event = field(default_factory=asyncio.Event)


async def follow(
    http: httpx.AsyncClient, conversation_id: str, cursor: str, reader: Reader, answers: int
) -> None:
    async with http.stream(
        "GET",
        f"/v1/conversations/{conversation_id}/events",
        params={"after": cursor},
        headers={"Accept": "text/event-stream"},
        timeout=httpx.Timeout(10.0, read=None),
    ) as response:
        response.raise_for_status()
        reader.connected.set()
        async for event in sse_events(response):
            turn = int(event.data.get("turn") or 0)
            if event.kind == "token":
                got = reader.turns.setdefault(turn, Received())
                got.tokens.append((event.at, str(event.data.get("text") or "")))
            elif event.kind in ("answer", "error"):
                reader.answers += 1
                if reader.answers >= answers:
                    return


async def phase_readers(
    platform: Platform, http: httpx.AsyncClient, pids: dict[str, int]
) -> dict[str, Any]:
    per_conversation = max(1, SSE_CLIENTS // SSE_CONVERSATIONS)
    ids = list(
        await asyncio.gather(*(platform.create(f"readers {n}") for n in range(SSE_CONVERSATIONS)))
    )
    await asyncio.gather(*(platform.send(cid, "warm-up") for cid in ids))
    cursors = await asyncio.gather(*(platform.cursor(cid) for cid in ids))
    readers = [Reader(n) for n in range(len(ids)) for _ in range(per_conversation)]
    gateway = pids["gateway"]
    rss_peak = rss_kb(gateway)
    followers = [
        asyncio.create_task(
            follow(http, ids[r.conversation], cursors[r.conversation], r, SSE_TURNS)
        )
        for r in readers
    ]
    tags = [
        [f"sse-{n}-{k}-{uuid.uuid4().hex[:6]}" for k in range(SSE_TURNS)] for n in range(len(ids))
    ]

    async def conversation(n: int) -> None:
        for k in range(SSE_TURNS):
            await platform.send(ids[n], f"{stream_tag_text(tags[n][k])} reader turn {k}")

    async def sample_rss(stop: asyncio.Event) -> None:
        nonlocal rss_peak
        while not stop.is_set():
            rss_peak = max(rss_peak, rss_kb(gateway))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)

    try:
        deadline = time.monotonic() + PHASE_TIMEOUT
        while not all(r.connected.is_set() for r in readers):
            failed = [t for t in followers if t.done() and t.exception() is not None]
            if failed:
                raise BenchFailure(
                    f"{len(failed)} of {len(readers)} readers could not connect: "
                    f"{failed[0].exception()!r}"
                )
            if time.monotonic() > deadline:
                raise BenchFailure("the readers did not all connect in time")
            await asyncio.sleep(0.05)
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        started = time.monotonic()
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_rss(stop))
        await asyncio.wait_for(
            asyncio.gather(*(conversation(n) for n in range(len(ids)))), PHASE_TIMEOUT
        )
        sent_s = time.monotonic() - started
        await asyncio.wait_for(asyncio.gather(*followers), PHASE_TIMEOUT)
        wall_s = time.monotonic() - started
        stop.set()
        await sampler
        cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
    finally:
        for task in followers:
            task.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
    latencies: list[float] = []
    complete = 0
    problems: list[str] = []
    expected = streamed_text(TOKENS)
    for r in readers:
        turns = [r.turns[t] for t in sorted(r.turns)]
        ok = len(turns) == SSE_TURNS and all(t.text == expected for t in turns)
        complete += ok
        if not ok and len(problems) < 5:
            problems.append(
                f"conversation {r.conversation}: {len(turns)} turns, "
                + ", ".join(f"{len(_TOKEN.findall(t.text))} tokens" for t in turns)
            )
        for k, got in enumerate(turns[:SSE_TURNS]):
            written = await stamps(http, platform.model_url, tags[r.conversation][k])
            if got.tokens and written:
                latencies.append((got.tokens[0][0] - written[0]) * 1000)
    events = len(readers) * SSE_TURNS * TOKENS
    return {
        "readers": len(readers),
        "conversations": len(ids),
        "turns_per_conversation": SSE_TURNS,
        "readers_complete_in_order": complete,
        "problems": problems,
        "first_token_ms": summarise(latencies) | {"max_ms": round(max(latencies), 1)},
        "wall_s": round(wall_s, 2),
        "turns_sent_s": round(sent_s, 2),
        "cpu_s": {name: round(value, 2) for name, value in cpu.items()},
        "gateway_cpu_pct_of_core": round(100 * cpu["gateway"] / wall_s, 1),
        "gateway_rss_peak_mb": round(rss_peak / 1024, 1),
        "gateway_rss_hwm_mb": round(rss_kb(gateway, "VmHWM") / 1024, 1),
        "token_deltas_delivered": events,
    }


# ---- gateway restart ---------------------------------------------------------------------------
async def phase_restart(
    platform: Platform, client: Client, task_queue: str, restart: Any
) -> dict[str, Any]:
    """A reader follows a long turn; the gateway is SIGKILLed mid-turn and started again."""
    from orchestrator.client import ConversationClient

    conversation_id = await platform.create("restart")
    await platform.send(conversation_id, "warm-up")
    cursor = await platform.cursor(conversation_id)
    tag = f"restart-{uuid.uuid4().hex[:6]}"
    conversations = ConversationClient(client, task_queue)
    send = asyncio.create_task(
        conversations.send(
            conversation_id, f"{stream_tag_text(tag, RESTART_TOKENS)} long turn", user="demo"
        )
    )
    got: list[str] = []
    last_id = cursor
    killed_at = 0.0
    back_at = 0.0
    reconnects = 0
    kill_after = RESTART_TOKENS // 3
    restarting: asyncio.Task[float] | None = None
    done = False
    deadline = time.monotonic() + 60.0
    while not done and time.monotonic() < deadline:
        after_kill = bool(killed_at)
        try:
            async with platform.http.stream(
                "GET",
                f"/v1/conversations/{conversation_id}/events",
                headers={"Accept": "text/event-stream", "Last-Event-ID": last_id},
                timeout=httpx.Timeout(5.0, read=None),
            ) as response:
                response.raise_for_status()
                async for event in sse_events(response):
                    if after_kill and not back_at:
                        back_at = event.at
                    if event.id:
                        last_id = event.id
                    if event.kind == "token":
                        got.extend(_TOKEN.findall(str(event.data.get("text") or "")))
                        if not killed_at and len(got) >= kill_after:
                            killed_at = time.time()
                            restarting = asyncio.create_task(restart())
                    elif event.kind in ("answer", "error"):
                        done = True
                        break
        except (httpx.HTTPError, OSError):
            reconnects += 1
            if restarting is not None and restarting.done() and restarting.exception():
                raise BenchFailure("the gateway could not be restarted") from (
                    restarting.exception()
                )
            await asyncio.sleep(0.1)
    turn = await asyncio.wait_for(send, TURN_TIMEOUT)
    restart_s = await restarting if restarting is not None else float("nan")
    indexes = [int(i) for i in got]
    return {
        "tokens": RESTART_TOKENS,
        "received": len(indexes),
        "lost": len(set(range(RESTART_TOKENS)) - set(indexes)),
        "duplicated": len(indexes) - len(set(indexes)),
        "in_order": indexes == sorted(indexes),
        "turn_ok": turn.ok,
        "killed_after_tokens": kill_after,
        "failed_connection_attempts": reconnects,
        "gateway_restart_s": round(restart_s, 2),
        "kill_to_next_event_s": round(back_at - killed_at, 2) if back_at else None,
    }


# ---- the run -----------------------------------------------------------------------------------
async def run_bench(stack: Any, model_url: str, tmp: Path) -> dict[str, Any]:
    from infrastructure.stack_processes import GATEWAY_PROCESS, ORCHESTRATOR_WORKER
    from shared.config import TemporalSettings
    from shared.temporal import connect

    if await stack.up() != 0:
        raise BenchFailure("the dev stack did not come up")
    address = stack.settings.address
    client = await connect(
        TemporalSettings(address=address, namespace=NAMESPACE, api_key=None, tls=False)
    )
    plain = await Client.connect(address, namespace=NAMESPACE)
    key = stack.demo_key_path.read_text().strip()
    limits = httpx.Limits(max_connections=SSE_CLIENTS + 50, max_keepalive_connections=SSE_CLIENTS)
    result: dict[str, Any] = {}
    with streams_worker_process(address, stack.log_dir):
        await wait_for_poller(plain, STREAMS_TASK_QUEUE)
        async with (
            httpx.AsyncClient(
                base_url=stack.gateway_url,
                headers={"Authorization": f"Bearer {key}"},
                timeout=TURN_TIMEOUT,
                trust_env=False,
                limits=limits,
            ) as gateway_http,
            httpx.AsyncClient(timeout=10.0, trust_env=False) as model_http,
        ):
            platform = Platform(gateway_http, model_url)
            streams = Streams(plain, model_url, uuid.uuid4().hex[:8])
            await streams.start()
            try:
                print(
                    f"(1)+(2) first-token latency: {WARMUP} warm-up + {TURNS} turns of each, "
                    f"{TOKENS} tokens at {TOKEN_MS:g} ms, interleaved ..."
                )
                result["latency"] = await phase_latency(platform, streams, model_http)
            finally:
                await streams.close()
            print(
                f"(2b) orchestrator history, LLM streaming on/off: {HISTORY_TURNS} turns each ..."
            )
            result["history_on_off"] = await phase_history_on_off(client, model_url, tmp)
            running = stack.running()
            pids = {
                "gateway": running[GATEWAY_PROCESS],
                "orchestrator": running[ORCHESTRATOR_WORKER.name],
                "server": running["temporal"],
                "bench": os.getpid(),
            }
            if SSE_CLIENTS > 0:
                print(
                    f"(3) {SSE_CLIENTS} SSE readers on {SSE_CONVERSATIONS} conversations, "
                    f"{SSE_TURNS} turns each ..."
                )
                result["readers"] = await phase_readers(platform, gateway_http, pids)
            if RESTART:
                print(f"(4) gateway SIGKILLed and restarted mid-turn ({RESTART_TOKENS} tokens) ...")

                async def restart() -> float:
                    began = time.monotonic()
                    pid = stack.running()[GATEWAY_PROCESS]
                    if pid is not None:
                        os.kill(pid, signal.SIGKILL)
                    # Until it is gone: `up()` would take a dying gateway for a running one.
                    while stack.running()[GATEWAY_PROCESS] is not None:
                        if time.monotonic() - began > 10:
                            raise BenchFailure("the gateway did not die")
                        await asyncio.sleep(0.01)
                    with contextlib.redirect_stdout(io.StringIO()):  # not the demo key again
                        if await stack.up() != 0:
                            raise BenchFailure("the gateway did not come back")
                    return time.monotonic() - began

                result["restart"] = await phase_restart(
                    platform, client, ORCHESTRATOR_WORKER.task_queue, restart
                )
    return result


def report(result: dict[str, Any], load_before: tuple[float, ...], wall_s: float) -> None:
    latency = result["latency"]
    print()
    print(
        f"token streaming: fake model {TOKENS} tokens at {TOKEN_MS:g} ms over HTTP; first token = "
        "client receipt - provider write"
    )
    print(
        f"{'approach':34} {'1st p50':>8} {'1st p95':>8} {'e2e p50':>8} {'e2e p95':>8} "
        f"{'order':>6} {'hist B/turn':>11} {'ev/turn':>7}"
    )
    names = {
        "platform_follower": "platform, GET /events reader",
        "platform": "platform, POST message stream",
        "platform_cold": "platform, POST stream, cold feed",
        "batched": "workflow_streams, default batch",
        "interval_100ms": "workflow_streams, 100 ms batch",
        "force_flush": "workflow_streams, force_flush",
    }
    for kind, name in names.items():
        if kind not in latency["first_token_ms"]:
            continue
        first = latency["first_token_ms"][kind]
        e2e = latency["end_to_end_ms"][kind]
        hist = latency["history"][kind]
        print(
            f"{name:34} {first['p50_ms']:8.1f} {first['p95_ms']:8.1f} {e2e['p50_ms']:8.1f} "
            f"{e2e['p95_ms']:8.1f} {('ok' if latency['all_in_order'][kind] else 'NO'):>6} "
            f"{hist['bytes_per_turn']:11,d} {hist['events_per_turn']:7.1f}"
        )
    for kind, headers in latency["post_headers_after_first_write_ms"].items():
        sent = latency["send_to_first_write_ms"][kind]
        print(
            f"  {names[kind]}: POST sent -> provider's first token {sent['p50_ms']:.0f} ms, "
            f"-> response headers {headers['p50_ms']:+.0f} ms after that (p50)"
        )
    for kind in ("platform_follower", "platform", "platform_cold"):
        if kind not in latency["first_token_ms"]:
            continue
        p95 = latency["first_token_ms"][kind]["p95_ms"]
        verdict = "met" if p95 <= GOAL_FIRST_TOKEN_MS else "MISSED"
        print(f"goal: first token <= {GOAL_FIRST_TOKEN_MS:.0f} ms, {names[kind]} p95: {verdict}")
    on_off = result["history_on_off"]
    print(
        "orchestrator history per turn (no tools, in-process worker): "
        f"LLM_STREAM on {on_off['stream_on']['bytes_per_turn']:,d} B "
        f"({on_off['stream_on']['events_per_turn']} events), off "
        f"{on_off['stream_off']['bytes_per_turn']:,d} B ({on_off['stream_off']['events_per_turn']})"
    )
    if "readers" in result:
        readers = result["readers"]
        first = readers["first_token_ms"]
        print(
            f"{readers['readers']} SSE readers ({readers['conversations']} conversations x "
            f"{readers['readers'] // readers['conversations']}, {readers['turns_per_conversation']} "
            f"turns each): {readers['readers_complete_in_order']}/{readers['readers']} got every token "
            f"in order; first token p50 {first['p50_ms']:.1f} / p95 {first['p95_ms']:.1f} / max "
            f"{first['max_ms']:.1f} ms"
        )
        cpu = readers["cpu_s"]
        print(
            f"  phase {readers['wall_s']} s: gateway CPU {cpu['gateway']} s "
            f"({readers['gateway_cpu_pct_of_core']}% of a core), RSS peak "
            f"{readers['gateway_rss_peak_mb']} MB (HWM {readers['gateway_rss_hwm_mb']} MB); CPU s "
            + ", ".join(f"{k} {v}" for k, v in cpu.items() if k != "gateway")
        )
        if readers["problems"]:
            print("  problems: " + "; ".join(readers["problems"]))
    if "restart" in result:
        r = result["restart"]
        print(
            f"gateway restart mid-turn: {r['received']}/{r['tokens']} tokens, lost {r['lost']}, "
            f"duplicated {r['duplicated']}, in order {r['in_order']}; restart took "
            f"{r['gateway_restart_s']} s, kill -> next event {r['kill_to_next_event_s']} s"
        )
    load_after = os.getloadavg()
    print(
        f"n={TURNS} turns each after {WARMUP} warm-up; load average before {load_before[0]:.2f}, "
        f"after {load_after[0]:.2f} on {os.cpu_count()} cores; whole bench {wall_s:.0f} s"
    )
    result["load_average"] = {"before": load_before, "after": load_after, "cores": os.cpu_count()}


def main() -> int:
    from infrastructure.devstack import DevStack, DevStackSettings
    from shared.log import configure_logging

    configure_logging(level=os.environ.get("LOG_LEVEL", "WARNING"))
    signal.signal(signal.SIGTERM, _interrupt)
    load_before = os.getloadavg()
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="bench-streaming-"))
    failed = False
    try:
        stack = DevStack(
            DevStackSettings.throwaway(root / "run", ip="127.0.0.1", start_timeout_seconds=90.0)
        )
        with fake_model_server(
            plans_for([]), stream_tokens=TOKENS, token_delay_ms=TOKEN_MS
        ) as model_url:
            os.environ.update(
                LLM_MODEL="openai/fake-model",
                LLM_API_BASE=f"{model_url}/v1",
                LLM_API_KEY="sk-bench",
                LLM_TIMEOUT_SECONDS="30",
                LLM_TEMPERATURE="0",
                LLM_STREAM="true",
                # One user (the demo user) opens every reader: lift the gateway's per-user cap
                # on open streams (default 20), this bench measures the process's capacity.
                GATEWAY_MAX_STREAMS_PER_USER=str(SSE_CLIENTS + 50),
                LITELLM_LOCAL_MODEL_COST_MAP="True",
                ORCHESTRATOR_STORE_URL=f"sqlite:///{root}/conversations.db",
            )
            try:
                result = asyncio.run(run_bench(stack, model_url, root))
            except BaseException:
                failed = True
                raise
            finally:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                stack.down()
                if failed:
                    kept = Path(__file__).parent / "results" / "streaming_logs"
                    shutil.rmtree(kept, ignore_errors=True)
                    with contextlib.suppress(OSError):
                        shutil.copytree(stack.log_dir, kept)
                        print(f"the stack's logs are in {kept}", file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(result, load_before, time.perf_counter() - started)
    result["parameters"] = {
        "tokens": TOKENS,
        "token_ms": TOKEN_MS,
        "turns": TURNS,
        "warmup": WARMUP,
        "history_turns": HISTORY_TURNS,
        "sse_clients": SSE_CLIENTS,
        "sse_conversations": SSE_CONVERSATIONS,
        "sse_turns": SSE_TURNS,
        "restart_tokens": RESTART_TOKENS,
    }
    path = save("streaming", result)
    print(f"saved {path}")
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        asyncio.run(run_streams_worker(sys.argv[2], sys.argv[3]))
        sys.exit(0)
    from shared.temporal import exit_process

    exit_process(main())
