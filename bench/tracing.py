"""`make bench`: what tracing costs a turn. One-tool turn p50 with tracing on, over tracing off.

Both run in one process, on one dev server, turn by turn: this machine's speed drifts by up to
30% between minutes, far more than tracing costs, so only samples taken side by side compare.
- off: the orchestrator and every team's worker on clients without the tracing plugin;
- on: a second orchestrator and second team workers (their own task queues and Nexus
  endpoints) on clients with `OpenTelemetryPlugin`, the process's replay-safe provider batching
  spans to a JSON-lines file, as `make up` runs them.
Turns alternate off/on (the order flipped every turn) on one conversation each, with the 0 ms fake
model. HTTP calls are not instrumented, as in the orchestrator's worker (the bench's tool makes no
HTTP call; a team worker traces its tools' HTTP calls, one span each). Goal: ratio <= 1.05.

    python -m bench.tracing            # BENCH_TRACING_TURNS=150
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from bench.calls import bench_calls
from bench.common import (
    FAST_PATH_BUDGET,
    bench_stack,
    fake_model_orchestrator,
    save,
    start_worker,
    summarise,
)
from bench.fake_model import ONE_TOOL, fake_model_server, plans_for
from infrastructure.setup import EndpointDefinition, ensure_endpoint
from orchestrator.client import ConversationClient
from shared.log import configure_logging
from shared.manifest import discover_teams
from shared.telemetry import TelemetrySettings, flush_spans, install_tracing, plugins
from shared.worker import build_manifest_worker

TURNS = int(os.environ.get("BENCH_TRACING_TURNS", "150"))
WARMUP = 5
GOAL = 1.05


async def measure() -> tuple[dict[str, list[float]], int]:
    """Latencies (ms) of one-tool turns, untraced and traced, interleaved; and the spans written."""
    spans_file = Path(tempfile.mkdtemp(prefix="bench-traces-")) / "traces.jsonl"
    calls = bench_calls()
    samples: dict[str, list[float]] = {"off": [], "on": []}
    with ExitStack() as processes:
        model_url = processes.enter_context(
            fake_model_server(plans_for([(call.tool, call.args) for call in calls]))
        )
        # The untraced side first: its clients are made before tracing is installed.
        async with bench_stack() as (clients, exit_stack):
            untraced = clients["orchestrator"]
            await start_worker(
                exit_stack, fake_model_orchestrator(untraced, "bench-off", model_url)
            )
            install_tracing(TelemetrySettings(telemetry_traces_file=spans_file), "bench")
            traced = {
                namespace: Client(
                    client.service_client,
                    namespace=namespace,
                    data_converter=pydantic_data_converter,
                    plugins=list(plugins()),
                )
                for namespace, client in clients.items()
            }
            endpoints = []
            for team in discover_teams():
                endpoint = EndpointDefinition(
                    name=f"{team.endpoint}-traced",
                    namespace=team.namespace,
                    task_queue=f"{team.task_queue}-traced",
                )
                await ensure_endpoint(untraced, endpoint)
                endpoints.append(endpoint.name)
                worker = await build_manifest_worker(
                    traced[team.namespace],
                    team,
                    fast_path_budget=FAST_PATH_BUDGET,
                    task_queue=endpoint.task_queue,
                )
                await start_worker(exit_stack, worker)
            await start_worker(
                exit_stack,
                fake_model_orchestrator(
                    traced["orchestrator"], "bench-on", model_url, tool_endpoints=endpoints
                ),
            )
            sides = {
                "off": (ConversationClient(untraced, "bench-off"), f"tracing-off-{uuid.uuid4()}"),
                "on": (
                    ConversationClient(traced["orchestrator"], "bench-on"),
                    f"tracing-on-{uuid.uuid4()}",
                ),
            }
            for index in range(WARMUP + TURNS):
                order = ("off", "on") if index % 2 == 0 else ("on", "off")
                for mode in order:
                    conversations, conversation_id = sides[mode]
                    started = time.perf_counter()
                    result = await conversations.send(conversation_id, f"turn {index}: {ONE_TOOL}")
                    elapsed = (time.perf_counter() - started) * 1000
                    if not result.ok or len(result.tool_calls) != 1:
                        raise RuntimeError(f"{mode} turn went wrong: {result.error}")
                    if index >= WARMUP:
                        samples[mode].append(elapsed)
    flush_spans()
    written = sum(1 for _ in spans_file.open()) if spans_file.is_file() else 0
    return samples, written


def main() -> int:
    configure_logging(level=os.environ.get("LOG_LEVEL", "WARNING"))
    print(f"tracing overhead: {TURNS} one-tool turns each, traced and untraced interleaved ...")
    samples, spans = asyncio.run(measure())
    if not spans:
        raise SystemExit("tracing was on but no span reached the file")
    figures = {mode: summarise(values) for mode, values in samples.items()}
    ratio = round(figures["on"]["p50_ms"] / figures["off"]["p50_ms"], 3)
    print()
    print(f"{'one-tool turn':24} {'p50 ms':>8} {'p95 ms':>8} {'mean ms':>8} {'n':>5}")
    for mode in ("off", "on"):
        f = figures[mode]
        print(
            f"tracing {mode:16} {f['p50_ms']:8.1f} {f['p95_ms']:8.1f} {f['mean_ms']:8.1f} "
            f"{int(f['n']):5d}"
        )
    verdict = "within" if ratio <= GOAL else "OVER"
    print(f"ratio on/off (p50): {ratio}  ({verdict} the goal of {GOAL})")
    print(f"spans written: {spans} ({spans / max(1, TURNS + WARMUP):.1f} per traced turn)")
    path = save(
        "tracing",
        {"figures": figures, "ratio_p50": ratio, "goal": GOAL, "spans_written": spans},
    )
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
