"""`make bench`: the approve-to-result latency of a gated tool call, with a 0 ms fake model.

The call comes from the first team manifest that declares `approval_calls` with `ungated_args`
(in this repository, an expense over its approval threshold). Each gated sample: a conversation
sends a message whose first model reply makes that call, so the turn pauses on it; the bench polls the conversation's `status` query until the call is listed as pending (not timed),
then times from just before `decide(approve)` is sent to the moment the pending `send` returns the
turn's answer: the decision, the approved call over Nexus (the team checks the approval and runs
the tool) and the model's second, final reply. It also times the `decide` update
alone (sent -> ApprovalRecord back).

For context, each ungated sample makes the same tool's call under its threshold (the manifest's
`ungated_args`), which needs no approval: message sent -> answer, the whole turn. Gated and ungated
samples are interleaved, one conversation each. `{n}` in the arguments becomes the sample number,
so effects a team limits per key (a daily total per cost centre) never add up. Real dev server, real team workers, real Nexus,
the real orchestrator worker talking to the fake model over HTTP (as in `bench.agent_loop`).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from contextlib import ExitStack
from typing import Any

from temporalio.service import RPCError

from bench.common import (
    bench_stack,
    fake_model_orchestrator,
    percentile,
    save,
    start_worker,
    summarise,
)
from bench.fake_model import call_tool_text, fake_model_server
from orchestrator.client import ConversationClient
from orchestrator.models import Decision, PendingApproval, TurnResult
from shared.log import configure_logging
from shared.manifest import ApprovalCall, discover_teams

ORCHESTRATOR_TASK_QUEUE = "bench-orchestrator"
WARMUP = int(os.environ.get("BENCH_APPROVAL_WARMUP", "5"))
SAMPLES = int(os.environ.get("BENCH_APPROVAL_SAMPLES", "30"))
APPROVER = "bench-approver"
TURN_TIMEOUT = 60.0  # seconds: one turn, one decide, or waiting for the call to be pending
POLL_INTERVAL = 0.005  # seconds between status queries while waiting for the pending call


class BenchFailure(RuntimeError):
    pass


def approval_call() -> ApprovalCall:
    for team in discover_teams():
        for call in team.approval_calls:
            if call.ungated_args is not None:
                return call
    raise SystemExit("no team manifest declares `approval_calls` with `ungated_args`")


CALL = approval_call()
TOOL = CALL.tool


def call_message(sample: int, *, gated: bool) -> str:
    kind = "gated" if gated else "ungated"
    arguments = CALL.arguments(sample, gated=gated)
    return f"bench {kind} sample {sample}: {call_tool_text(TOOL, arguments)}"


def check_turn(result: TurnResult, gated: bool) -> None:
    calls = result.tool_calls
    call = calls[0] if len(calls) == 1 else None
    approval = call.approval if call else None
    approved = approval is not None and approval.verdict == "approve"
    if not result.ok or call is None or call.name != TOOL or not call.ok or approved != gated:
        raise BenchFailure(
            f"{'gated' if gated else 'ungated'} turn went wrong: ok={result.ok} "
            f"error={result.error} calls={[(c.name, c.ok, c.result) for c in calls]} "
            f"approval={approval} notes={result.notes}"
        )


async def wait_pending(
    conversations: ConversationClient, conversation_id: str, send: asyncio.Task[Any]
) -> PendingApproval:
    """Poll `status` until the turn's gated call is listed as pending (not timed)."""
    deadline = time.monotonic() + TURN_TIMEOUT
    while time.monotonic() < deadline:
        if send.done():  # the turn ended without pausing: show why
            result = send.result()
            raise BenchFailure(f"the gated turn did not pause for approval: {result}")
        try:
            status = await conversations.status(conversation_id)
        except RPCError:  # the first send has not started the conversation yet
            status = None
        if status is not None:
            pending = [p for p in status.pending_approvals if p.tool == TOOL]
            if pending:
                return pending[0]
        await asyncio.sleep(POLL_INTERVAL)
    raise BenchFailure(f"no {TOOL} call was pending within {TURN_TIMEOUT:.0f} s")


async def gated_sample(
    conversations: ConversationClient, conversation_id: str, sample: int
) -> tuple[float, float]:
    """(approve -> answer ms, decide update ms) for one gated turn."""
    returned_at = 0.0

    async def send() -> TurnResult:
        nonlocal returned_at
        result = await conversations.send(conversation_id, call_message(sample, gated=True))
        returned_at = time.perf_counter()
        return result

    turn = asyncio.create_task(send())
    try:
        pending = await wait_pending(conversations, conversation_id, turn)
        decision = Decision(
            call_id=pending.call_id,
            verdict="approve",
            approver=APPROVER,
            reason=f"bench sample {sample}",
        )
        started = time.perf_counter()
        record = await asyncio.wait_for(
            conversations.decide(conversation_id, decision), TURN_TIMEOUT
        )
        decided_at = time.perf_counter()
        result = await asyncio.wait_for(turn, TURN_TIMEOUT)
    finally:
        if not turn.done():
            turn.cancel()
    if record.verdict != "approve" or record.call_id != pending.call_id:
        raise BenchFailure(f"unexpected approval record: {record}")
    check_turn(result, gated=True)
    return (returned_at - started) * 1000, (decided_at - started) * 1000


async def ungated_sample(
    conversations: ConversationClient, conversation_id: str, sample: int
) -> float:
    """Message sent -> answer ms for one turn whose call needs no approval."""
    started = time.perf_counter()
    result = await asyncio.wait_for(
        conversations.send(conversation_id, call_message(sample, gated=False)),
        TURN_TIMEOUT,
    )
    elapsed = (time.perf_counter() - started) * 1000
    check_turn(result, gated=False)
    return elapsed


async def measure(conversations: ConversationClient) -> dict[str, list[float]]:
    tag = uuid.uuid4().hex[:8]
    gated_id, ungated_id = f"bench-approval-gated-{tag}", f"bench-approval-ungated-{tag}"
    samples: dict[str, list[float]] = {"approve_to_answer": [], "decide_update": [], "ungated": []}
    # Warm-up (not kept): the first turns start the conversations and warm connections and caches.
    for sample in range(1, WARMUP + SAMPLES + 1):
        approve_ms, decide_ms = await gated_sample(conversations, gated_id, sample)
        ungated_ms = await ungated_sample(conversations, ungated_id, sample)
        if sample > WARMUP:
            samples["approve_to_answer"].append(approve_ms)
            samples["decide_update"].append(decide_ms)
            samples["ungated"].append(ungated_ms)
    return samples


async def main() -> int:
    configure_logging(level=os.environ.get("LOG_LEVEL", "WARNING"))
    load_before = os.getloadavg()
    started = time.perf_counter()
    with ExitStack() as processes:
        # No marker plans: every message names its own call (`call_tool_text`).
        model_url = processes.enter_context(fake_model_server({}))
        async with bench_stack() as (clients, exit_stack):
            client = clients["orchestrator"]
            await start_worker(
                exit_stack, fake_model_orchestrator(client, ORCHESTRATOR_TASK_QUEUE, model_url)
            )
            conversations = ConversationClient(client, ORCHESTRATOR_TASK_QUEUE)
            print(
                f"approval: {WARMUP} warm-up + {SAMPLES} samples, gated and ungated {TOOL} "
                "turns interleaved ..."
            )
            samples = await measure(conversations)
    wall_s = time.perf_counter() - started
    load_after = os.getloadavg()

    figures = {kind: summarise(values) for kind, values in samples.items()}
    labels = {
        "approve_to_answer": "approve -> answer (gated turn)",
        "decide_update": "decide update alone",
        "ungated": "ungated turn, send -> answer",
    }
    print()
    print(f"approval gate, 0 ms fake model, {TOOL} over Nexus (same dev server, same run)")
    print(f"{'figure':34} {'p50 ms':>8} {'p95 ms':>8} {'mean ms':>8}")
    for kind, label in labels.items():
        figure = figures[kind]
        print(
            f"{label:34} {figure['p50_ms']:>8.1f} {figure['p95_ms']:>8.1f} {figure['mean_ms']:>8.1f}"
        )
    ratio = percentile(samples["approve_to_answer"], 50) / percentile(samples["ungated"], 50)
    print(
        f"approve -> answer p50 / ungated turn p50 = {ratio:.2f}; n={SAMPLES} of each after "
        f"{WARMUP} warm-up; whole bench {wall_s:.0f} s; load average before "
        f"{load_before[0]:.2f}, after {load_after[0]:.2f} on {os.cpu_count()} cores"
    )
    payload: dict[str, Any] = {
        "latency_ms": figures,
        "ratio_approve_to_answer_over_ungated_p50": round(ratio, 2),
        "latency_samples_ms": {
            kind: [round(v, 1) for v in values] for kind, values in samples.items()
        },
        "parameters": {
            "warmup": WARMUP,
            "samples": SAMPLES,
            "tool": TOOL,
            "gated_args": CALL.args,
            "ungated_args": CALL.ungated_args,
            "poll_interval_s": POLL_INTERVAL,
        },
        "wall_s": round(wall_s, 1),
        "load_average": {"before": load_before, "after": load_after, "cores": os.cpu_count()},
    }
    path = save("approval", payload)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
