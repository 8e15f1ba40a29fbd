"""Long conversations at constant cost: one conversation, many one-tool turns, 0 ms fake model.

Reports history bytes per turn and wall time per turn around turns 10, 100 and 1,000 (and 10,000
with `make bench-long`), the largest single run, and the goals: bytes/turn at 1,000 <= 1.2x at 10,
no run over 10 MB, turn latency at 1,000 <= 1.2x at 10. The seed passed the whole transcript into
every LLM activity: ~16 KB/turn at turn 25, ~188 KB/turn at turn 200, 20.5 MB after 200 turns.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import uuid
from contextlib import ExitStack

from bench.calls import bench_calls
from bench.common import bench_stack, fake_model_orchestrator, save, start_worker
from bench.fake_model import ONE_TOOL, fake_model_server, plans_for
from orchestrator.client import ConversationClient
from shared.log import configure_logging

TURNS = int(os.environ.get("BENCH_LONG_TURNS", "1000"))
WINDOW = 5  # turns averaged at each checkpoint
WARMUP_TURNS = int(os.environ.get("BENCH_LONG_WARMUP", "30"))
TASK_QUEUE = "bench-long"


async def main() -> int:
    configure_logging(level=os.environ.get("LOG_LEVEL", "WARNING"))
    checkpoints = [k for k in (10, 100, 1000, 10_000) if k <= TURNS]
    per_turn: list[tuple[str, int, float]] = []  # (run id, history bytes after turn, seconds)
    started = time.perf_counter()
    plans = plans_for([(call.tool, call.args) for call in bench_calls()])
    with ExitStack() as processes:
        # The fake model outlives the run: at most a second per turn, never under 15 minutes.
        model_url = processes.enter_context(
            fake_model_server(plans, max_seconds=max(900.0, TURNS * 1.0))
        )
        async with bench_stack() as (clients, exit_stack):
            client = clients["orchestrator"]
            await start_worker(
                exit_stack,
                fake_model_orchestrator(
                    client,
                    TASK_QUEUE,
                    model_url,
                    max_turns_per_run=int(os.environ.get("BENCH_LONG_TURNS_PER_RUN", "100")),
                ),
            )
            conversations = ConversationClient(client, TASK_QUEUE)
            # Warm up on another conversation: on this dev server, task dispatch settles ~50 ms
            # slower after the first few dozen tasks, whatever the conversation (bench/README.md).
            warmup = f"bench-warmup-{uuid.uuid4().hex[:8]}"
            for turn in range(WARMUP_TURNS):
                await conversations.send(warmup, f"warm-up {turn}: {ONE_TOOL} please")
            cid = f"bench-long-{uuid.uuid4().hex[:8]}"
            print(f"{TURNS} one-tool turns on conversation {cid} ...", flush=True)
            for turn in range(1, TURNS + 1):
                t0 = time.perf_counter()
                result = await conversations.send(cid, f"turn {turn}: {ONE_TOOL} please")
                elapsed = time.perf_counter() - t0
                if not result.ok or not result.tool_calls or not result.tool_calls[0].ok:
                    raise SystemExit(f"turn {turn} failed: {result.error or result.tool_calls}")
                description = await conversations.handle(cid).describe()
                info = description.raw_description.workflow_execution_info
                per_turn.append((description.run_id or "", info.history_size_bytes, elapsed))
                if turn % 500 == 0:
                    print(f"  turn {turn}: {elapsed * 1000:.0f} ms", flush=True)
            runs = [
                execution.run_id
                async for execution in client.list_workflows(f"WorkflowId = '{cid}'")
            ]
            sizes = []
            for run_id in runs:
                run = await client.get_workflow_handle(cid, run_id=run_id).describe()
                sizes.append(run.raw_description.workflow_execution_info.history_size_bytes)
    total_s = time.perf_counter() - started

    def bytes_per_turn(k: int) -> float:
        deltas = [
            per_turn[i][1] - per_turn[i - 1][1]
            for i in range(max(1, k - WINDOW), k)
            if per_turn[i][0] == per_turn[i - 1][0]  # same run: no continue-as-new in between
        ]
        return statistics.fmean(deltas) if deltas else float("nan")

    def ms_per_turn(k: int) -> float:
        return statistics.fmean(t for _, _, t in per_turn[k - WINDOW : k]) * 1000

    figures = {
        str(k): {
            "bytes_per_turn": round(bytes_per_turn(k)),
            "ms_per_turn": round(ms_per_turn(k), 1),
        }
        for k in checkpoints
    }
    peak = max(sizes) if sizes else 0
    print(
        f"\nlong conversation, 0 ms fake model: {TURNS} turns in {total_s:.0f} s, {len(runs)} runs"
    )
    print(f"{'turn':>7} {'history bytes/turn':>19} {'ms/turn':>9}")
    for k, figure in figures.items():
        print(f"{k:>7} {figure['bytes_per_turn']:>19,} {figure['ms_per_turn']:>9.1f}")
    print(f"peak run size: {peak / 1e6:.2f} MB (largest of {len(sizes)} runs; limit goal 10 MB)")
    print("seed, for comparison: ~16 KB/turn at turn 25, ~188 KB/turn at turn 200, 20.5 MB at 200")
    goals = []
    if "1000" in figures:
        b_ratio = figures["1000"]["bytes_per_turn"] / figures["10"]["bytes_per_turn"]
        t_ratio = figures["1000"]["ms_per_turn"] / figures["10"]["ms_per_turn"]
        goals = [
            f"bytes/turn at 1000 / at 10 = {b_ratio:.2f} (goal <= 1.2)",
            f"ms/turn at 1000 / at 10 = {t_ratio:.2f} (goal <= 1.2)",
        ]
    goals.append(f"peak run {peak / 1e6:.2f} MB (goal <= 10 MB)")
    for line in goals:
        print(line)
    path = save(
        f"long_conversation_{TURNS}",
        {
            "turns": TURNS,
            "figures": figures,
            "peak_run_bytes": peak,
            "runs": len(runs),
            "total_seconds": round(total_s, 1),
            "run_sizes": sizes,
            "ms_per_turn_all": [round(t * 1000, 1) for _, _, t in per_turn],
        },
    )
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
