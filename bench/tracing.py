"""`make bench`: what tracing costs a turn. One-tool turn p50 with tracing on, over tracing off.

Each mode runs in its own process (OpenTelemetry allows one tracer provider per process, and the
off mode must have none at all): the same in-process stack as `bench.agent_loop` (dev server,
every team's worker, the orchestrator with the 0 ms fake model), one conversation, one-tool turns.
"On" is what `make up` runs: the Temporal plugin on every client, spans batched to a JSON-lines
file. The modes alternate (off, on, off, on, ...) so drift falls on both alike; the figure is
the p50 over all of a mode's samples. Goal: ratio <= 1.05.

    python -m bench.tracing            # BENCH_TRACING_ROUNDS=3 BENCH_TRACING_TURNS=60
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench.calls import bench_calls
from bench.common import bench_stack, fake_model_orchestrator, save, start_worker, summarise
from bench.fake_model import ONE_TOOL, fake_model_server, plans_for
from orchestrator.client import ConversationClient
from shared.log import configure_logging
from shared.telemetry import TelemetrySettings, flush_spans, install_tracing

ROUNDS = int(os.environ.get("BENCH_TRACING_ROUNDS", "3"))
TURNS = int(os.environ.get("BENCH_TRACING_TURNS", "60"))
WARMUP = 5
GOAL = 1.05
TASK_QUEUE = "bench-tracing"


async def measure(traced: bool, turns: int) -> list[float]:
    """One-tool turn latencies (ms) of one conversation, in this process."""
    spans = Path(tempfile.mkdtemp(prefix="bench-traces-")) / "traces.jsonl"
    if traced:
        install_tracing(TelemetrySettings(telemetry_traces_file=spans), "bench")
    calls = bench_calls()
    with ExitStack() as processes:
        model_url = processes.enter_context(
            fake_model_server(plans_for([(call.tool, call.args) for call in calls]))
        )
        async with bench_stack() as (clients, exit_stack):
            client = clients["orchestrator"]
            await start_worker(exit_stack, fake_model_orchestrator(client, TASK_QUEUE, model_url))
            conversations = ConversationClient(client, TASK_QUEUE)
            conversation_id = f"bench-tracing-{os.getpid()}"
            samples = []
            for index in range(WARMUP + turns):
                started = time.perf_counter()
                result = await conversations.send(conversation_id, f"turn {index}: {ONE_TOOL}")
                elapsed = (time.perf_counter() - started) * 1000
                if not result.ok or len(result.tool_calls) != 1:
                    raise RuntimeError(f"turn went wrong: {result.error} {result.tool_calls}")
                if index >= WARMUP:
                    samples.append(elapsed)
    flush_spans()
    if traced and not spans.is_file():
        raise RuntimeError("tracing was on but no span reached the file")
    return samples


def run_child(mode: str) -> list[float]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.tracing", "--child", mode],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{mode} run failed: {done.stderr[-2000:]}")
    samples: list[float] = json.loads(done.stdout.strip().splitlines()[-1])
    return samples


def main() -> int:
    configure_logging(level=os.environ.get("LOG_LEVEL", "WARNING"))
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(asyncio.run(measure(sys.argv[2] == "on", TURNS))))
        return 0
    samples: dict[str, list[float]] = {"off": [], "on": []}
    print(f"tracing overhead: {ROUNDS} rounds x {TURNS} one-tool turns per mode, alternating ...")
    for round_number in range(ROUNDS):
        for mode in ("off", "on"):
            samples[mode].extend(run_child(mode))
            print(f"  round {round_number + 1} {mode}: done")
    figures = {mode: summarise(values) for mode, values in samples.items()}
    ratio = round(figures["on"]["p50_ms"] / figures["off"]["p50_ms"], 3)
    print()
    print(f"{'one-tool turn':24} {'p50 ms':>8} {'p95 ms':>8} {'n':>5}")
    for mode in ("off", "on"):
        f = figures[mode]
        print(f"tracing {mode:16} {f['p50_ms']:8.1f} {f['p95_ms']:8.1f} {int(f['n']):5d}")
    verdict = "within" if ratio <= GOAL else "OVER"
    print(f"ratio on/off (p50): {ratio}  ({verdict} the goal of {GOAL})")
    path = save("tracing", {"figures": figures, "ratio_p50": ratio, "goal": GOAL})
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
