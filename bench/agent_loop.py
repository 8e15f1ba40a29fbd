"""`make bench`, part two: the agent loop with a 0 ms fake model, against its structural floor.

Figures, all on one dev server in one run:
- p50/p95 client-side latency of `ConversationClient.send` for a one-tool and a three-tool turn on
  one conversation (update-with-start on a running conversation: model step, tools over Nexus,
  model step);
- turns/s with 100 concurrent conversations, each sending one-tool turns one after another
  (3 by default: the bench must stay within ~3 minutes on 2 cores). All conversations and floor
  workflows are first started with one untimed turn each, 100 at a time, so the timed phases are
  steady-state turns; the floor's timed phase runs first, then the agent's.
Each is set against the floor (`bench.floor`): the same client call shape (update-with-start), two
no-op activities and the same workflow-backed Nexus tool operations, nothing else. Ratios are
figure/floor for latency and floor/figure for throughput, so > 1 always means slower than the floor.
Latency samples are interleaved turn by turn (agent one-tool, agent three-tool, floor one-tool,
floor three-tool) so drift and noise from other processes hit all four alike.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from typing import Any

from temporalio.client import Client, WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy

from bench.calls import BenchCall, bench_calls
from bench.common import (
    bench_stack,
    fake_model_orchestrator,
    percentile,
    save,
    start_worker,
    summarise,
)
from bench.fake_model import ONE_TOOL, THREE_TOOLS, fake_model_server, plans_for
from bench.floor import FLOOR_TASK_QUEUE, FloorWorkflow, build_floor_worker
from orchestrator.client import ConversationClient
from orchestrator.models import TurnResult
from shared.log import configure_logging

ORCHESTRATOR_TASK_QUEUE = "bench-orchestrator"
WARMUP_TURNS = int(os.environ.get("BENCH_AGENT_WARMUP", "5"))
LATENCY_TURNS = int(os.environ.get("BENCH_AGENT_TURNS", "40"))
CONVERSATIONS = int(os.environ.get("BENCH_AGENT_CONVERSATIONS", "100"))
TURNS_PER_CONVERSATION = int(os.environ.get("BENCH_AGENT_TURNS_PER_CONVERSATION", "3"))
TURN_TIMEOUT = 60.0  # seconds: one turn, or one floor update
PHASE_TIMEOUT = 300.0  # seconds: one whole throughput phase
# The seed implementation (litellm_temporal) with a 0 ms fake model, from DESIGN.md.
SEED = {"one_tool_p50_ms": 250.0, "turns_per_s_100": 21.0}


class BenchFailure(RuntimeError):
    pass


def _check_turn(result: TurnResult, calls: list[BenchCall], tools: int) -> None:
    expected = [call.tool for call in calls[:tools]]
    names = [call.name for call in result.tool_calls]
    if not result.ok or names != expected or not all(call.ok for call in result.tool_calls):
        bad = [call.result for call in result.tool_calls if not call.ok]
        raise BenchFailure(
            f"turn went wrong: ok={result.ok} error={result.error} tools={names} "
            f"(expected {expected}) failures={bad} notes={result.notes}"
        )


class Runner:
    """The four things being timed, each as `await run(conversation_id, turn_index)`."""

    def __init__(
        self, conversations: ConversationClient, floor_client: Client, calls: list[BenchCall]
    ) -> None:
        self._conversations = conversations
        self._floor_client = floor_client
        self._calls = calls

    def agent(self, tools: int) -> Callable[[str, int], Awaitable[None]]:
        marker = THREE_TOOLS if tools == 3 else ONE_TOOL

        async def run(conversation_id: str, index: int) -> None:
            result = await asyncio.wait_for(
                self._conversations.send(conversation_id, f"bench turn {index}: {marker}"),
                TURN_TIMEOUT,
            )
            _check_turn(result, self._calls, tools)

        return run

    def floor(self, tools: int) -> Callable[[str, int], Awaitable[None]]:
        async def run(workflow_id: str, index: int) -> None:
            # The same client call shape as ConversationClient.send: update-with-start.
            start = WithStartWorkflowOperation(
                FloorWorkflow.run,
                self._calls,
                id=workflow_id,
                task_queue=FLOOR_TASK_QUEUE,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            )
            done = await asyncio.wait_for(
                self._floor_client.execute_update_with_start_workflow(
                    FloorWorkflow.turn, tools, start_workflow_operation=start
                ),
                TURN_TIMEOUT,
            )
            if done != tools:
                raise BenchFailure(f"floor turn ran {done} tools, expected {tools}")

        return run


async def timed(run: Callable[[str, int], Awaitable[None]], key: str, index: int) -> float:
    started = time.perf_counter()
    await run(key, index)
    return (time.perf_counter() - started) * 1000


async def latency(runner: Runner) -> dict[str, list[float]]:
    """One conversation and one floor workflow; the four kinds of turn interleaved turn by turn."""
    tag = uuid.uuid4().hex[:8]
    agent_id, floor_id = f"bench-agent-latency-{tag}", f"bench-floor-latency-{tag}"
    kinds = {
        "agent_one_tool": (runner.agent(1), agent_id),
        "agent_three_tools": (runner.agent(3), agent_id),
        "floor_one_tool": (runner.floor(1), floor_id),
        "floor_three_tools": (runner.floor(3), floor_id),
    }
    return await interleaved(kinds, WARMUP_TURNS, LATENCY_TURNS)


Turn = Callable[[str, int], Awaitable[None]]


async def interleaved(
    kinds: dict[str, tuple[Turn, str]], warmup: int, turns: int
) -> dict[str, list[float]]:
    """Latency samples of each kind of turn (a turn function and the workflow it runs on),
    interleaved turn by turn, so drift and other processes' noise fall on all kinds alike."""
    samples: dict[str, list[float]] = {kind: [] for kind in kinds}
    # Warm-up: the first turn starts the workflow (and the conversation discovers its tools);
    # the next ones warm connections and caches.
    for index in range(warmup):
        for run, key in kinds.values():
            await run(key, -1 - index)
    for index in range(turns):
        for kind, (run, key) in kinds.items():
            samples[kind].append(await timed(run, key, index))
    return samples


async def start_all(runs: dict[str, Callable[[str, int], Awaitable[None]]]) -> dict[str, list[str]]:
    """Start `CONVERSATIONS` workflows of each kind, concurrently, each with one untimed turn.

    The timed phases then measure steady-state turns, not workflow starts or tool discovery.
    """
    ids: dict[str, list[str]] = {}
    for kind, run in runs.items():
        ids[kind] = [f"bench-{kind}-rate-{uuid.uuid4().hex[:8]}-{n}" for n in range(CONVERSATIONS)]
        await asyncio.wait_for(asyncio.gather(*(run(i, 0) for i in ids[kind])), PHASE_TIMEOUT)
    return ids


async def throughput(
    run: Callable[[str, int], Awaitable[None]], ids: list[str]
) -> dict[str, float | int]:
    """The started workflows all at once, each sending `TURNS_PER_CONVERSATION` turns in turn."""
    turn_ms: list[float] = []

    async def conversation(workflow_id: str) -> None:
        for index in range(1, TURNS_PER_CONVERSATION + 1):
            turn_ms.append(await timed(run, workflow_id, index))

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(conversation(i) for i in ids)), PHASE_TIMEOUT)
    wall_s = time.perf_counter() - started
    turns = len(ids) * TURNS_PER_CONVERSATION
    return {
        "conversations": len(ids),
        "turns": turns,
        "wall_s": round(wall_s, 2),
        "turns_per_s": round(turns / wall_s, 2),
        "turn_p50_ms": round(percentile(turn_ms, 50), 1),
        "turn_p95_ms": round(percentile(turn_ms, 95), 1),
    }


def _row(name: str, agent: float, floor: float, ratio: float, seed: float | None) -> str:
    seed_text = f"{seed:>8.1f}" if seed is not None else f"{'-':>8}"
    return f"{name:34} {agent:>9.1f} {floor:>9.1f} {ratio:>7.2f} {seed_text}"


async def main() -> int:
    configure_logging(level=os.environ.get("LOG_LEVEL", "WARNING"))
    load_before = os.getloadavg()
    calls = bench_calls()
    with ExitStack() as processes:
        plans = plans_for([(call.tool, call.args) for call in calls])
        model_url = processes.enter_context(fake_model_server(plans))
        async with bench_stack() as (clients, exit_stack):
            client = clients["orchestrator"]
            await start_worker(
                exit_stack,
                fake_model_orchestrator(client, ORCHESTRATOR_TASK_QUEUE, model_url),
            )
            await start_worker(exit_stack, build_floor_worker(client))
            runner = Runner(ConversationClient(client, ORCHESTRATOR_TASK_QUEUE), client, calls)

            print(f"latency: {WARMUP_TURNS} warm-up + {LATENCY_TURNS} turns of each kind ...")
            samples = await latency(runner)
            print(
                f"throughput: {CONVERSATIONS} concurrent conversations x "
                f"{TURNS_PER_CONVERSATION} one-tool turns (after an untimed start turn each), "
                "floor then agent ..."
            )
            started = time.perf_counter()
            ids = await start_all({"floor": runner.floor(1), "agent": runner.agent(1)})
            start_phase_s = round(time.perf_counter() - started, 2)
            floor_rate = await throughput(runner.floor(1), ids["floor"])
            agent_rate = await throughput(runner.agent(1), ids["agent"])
    load_after = os.getloadavg()

    figures = {kind: summarise(values) for kind, values in samples.items()}
    # The conversation's transcript grows turn by turn; the floor's state does not. Show the drift.
    quarter = max(1, LATENCY_TURNS // 4)
    drift = {
        kind: {
            f"first_{quarter}_p50_ms": round(percentile(values[:quarter], 50), 1),
            f"last_{quarter}_p50_ms": round(percentile(values[-quarter:], 50), 1),
        }
        for kind, values in samples.items()
    }
    ratios = {
        "one_tool_p50": figures["agent_one_tool"]["p50_ms"] / figures["floor_one_tool"]["p50_ms"],
        "one_tool_p95": figures["agent_one_tool"]["p95_ms"] / figures["floor_one_tool"]["p95_ms"],
        "three_tools_p50": figures["agent_three_tools"]["p50_ms"]
        / figures["floor_three_tools"]["p50_ms"],
        "three_tools_p95": figures["agent_three_tools"]["p95_ms"]
        / figures["floor_three_tools"]["p95_ms"],
        "turns_per_s_100": float(floor_rate["turns_per_s"]) / float(agent_rate["turns_per_s"]),
    }
    ratios = {name: round(value, 2) for name, value in ratios.items()}

    print()
    print("agent loop, 0 ms fake model, vs structural floor (same dev server, same run)")
    print("ratio = agent/floor for latency, floor/agent for throughput: > 1 is slower than floor")
    print(f"{'figure':34} {'agent':>9} {'floor':>9} {'ratio':>7} {'seed':>8}")
    for label, kind in (("one-tool turn", "one_tool"), ("three-tool turn", "three_tools")):
        agent, floor = figures[f"agent_{kind}"], figures[f"floor_{kind}"]
        seed_p50 = SEED["one_tool_p50_ms"] if kind == "one_tool" else None
        print(
            _row(
                f"{label} p50 (ms)",
                agent["p50_ms"],
                floor["p50_ms"],
                ratios[f"{kind}_p50"],
                seed_p50,
            )
        )
        print(
            _row(f"{label} p95 (ms)", agent["p95_ms"], floor["p95_ms"], ratios[f"{kind}_p95"], None)
        )
    print(
        _row(
            f"{CONVERSATIONS} conversations (turns/s)",
            float(agent_rate["turns_per_s"]),
            float(floor_rate["turns_per_s"]),
            ratios["turns_per_s_100"],
            SEED["turns_per_s_100"],
        )
    )
    print(
        f"latency n={LATENCY_TURNS} per kind after {WARMUP_TURNS} warm-up turns; throughput "
        f"{agent_rate['turns']} turns, agent {agent_rate['wall_s']} s (turn p50 "
        f"{agent_rate['turn_p50_ms']} ms), floor {floor_rate['wall_s']} s (turn p50 "
        f"{floor_rate['turn_p50_ms']} ms)"
    )
    print(
        f"drift along the run, p50 of the first / last {quarter} samples (ms): "
        + ", ".join(
            f"{kind} {figure[f'first_{quarter}_p50_ms']:.0f} / {figure[f'last_{quarter}_p50_ms']:.0f}"
            for kind, figure in drift.items()
        )
    )
    print(
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
        f"on {os.cpu_count()} cores (other processes make these figures noisy)"
    )
    payload: dict[str, Any] = {
        "latency_ms": figures,
        "latency_drift_ms": drift,
        "latency_samples_ms": {
            kind: [round(v, 1) for v in values] for kind, values in samples.items()
        },
        "throughput": {"agent": agent_rate, "floor": floor_rate},
        "throughput_start_phase_s": start_phase_s,
        "ratios": ratios,
        "seed": SEED,
        "parameters": {
            "warmup_turns": WARMUP_TURNS,
            "latency_turns": LATENCY_TURNS,
            "conversations": CONVERSATIONS,
            "turns_per_conversation": TURNS_PER_CONVERSATION,
        },
        "load_average": {"before": load_before, "after": load_after, "cores": os.cpu_count()},
    }
    path = save("agent_loop", payload)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
