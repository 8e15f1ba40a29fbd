"""`make bench`: p50/p95 of an `execute_tool` round trip from a caller workflow, three ways.

- fast path: the team handler answers synchronously when the tool workflow finishes in budget;
- workflow-run: the same handler with the fast path off (plain async workflow-run operation);
- sync op: a bare sync Nexus operation (`list_tools`), the structural floor.
All three run on the same server, interleaved in rounds so drift hits them equally.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from datetime import timedelta

from temporalio.worker import Worker

from bench.calls import BenchCall, bench_calls, team_of
from bench.common import bench_stack, save, start_worker, summarise
from infrastructure.probe import (
    PROBE_TASK_QUEUE,
    ExecuteToolProbe,
    ExecuteToolProbeInput,
    ListToolsProbe,
    ListToolsProbeInput,
)
from infrastructure.setup import EndpointDefinition
from shared.log import configure_logging
from shared.manifest import discover_teams
from shared.tools import ToolCall
from shared.worker import build_manifest_worker

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
CALLS_PER_ROUND = int(os.environ.get("BENCH_CALLS", "20"))


def _calls(sample: BenchCall, n: int) -> list[ToolCall]:
    return [
        ToolCall(
            call_id=f"bench-{uuid.uuid4()}",
            tool=sample.tool,
            args=dict(sample.args),
            conversation_id="bench",
        )
        for _ in range(n)
    ]


async def main() -> int:
    configure_logging(level=os.environ.get("LOG_LEVEL", "WARNING"))
    # The first sample call of the teams' manifests, on its own team's endpoint, and on a second
    # deployment of that team with the fast path off.
    teams = discover_teams()
    sample = bench_calls(teams)[0]
    team = team_of(sample, teams)
    endpoint = team.endpoint
    plain_endpoint = f"{endpoint}-plain"
    plain = EndpointDefinition(
        name=plain_endpoint, namespace=team.namespace, task_queue=plain_endpoint
    )
    print(f"timing {sample.tool} on {endpoint} (the first sample call of the team manifests)")
    async with bench_stack([plain]) as (clients, exit_stack):
        await start_worker(
            exit_stack,
            await build_manifest_worker(
                clients[team.namespace],
                team,
                task_queue=plain_endpoint,
                fast_path_budget=timedelta(0),
            ),
        )
        await start_worker(
            exit_stack,
            Worker(
                clients["orchestrator"],
                task_queue=PROBE_TASK_QUEUE,
                workflows=[ExecuteToolProbe, ListToolsProbe],
            ),
        )
        caller = clients["orchestrator"]

        async def execute(endpoint: str, n: int) -> list[float]:
            result = await caller.execute_workflow(
                ExecuteToolProbe.run,
                ExecuteToolProbeInput(endpoint=endpoint, calls=_calls(sample, n)),
                id=f"bench-{uuid.uuid4()}",
                task_queue=PROBE_TASK_QUEUE,
            )
            assert all(o.ok for o in result.outcomes), result.outcomes[0].error
            return result.durations_ms

        async def sync_op(n: int) -> list[float]:
            result = await caller.execute_workflow(
                ListToolsProbe.run,
                ListToolsProbeInput(endpoints=[endpoint], repeat=n),
                id=f"bench-{uuid.uuid4()}",
                task_queue=PROBE_TASK_QUEUE,
            )
            return result.durations_ms

        # Warm-up: first calls pay for connections, caches and sandbox imports.
        await execute(endpoint, 5)
        await execute(plain_endpoint, 5)
        await sync_op(5)

        samples: dict[str, list[float]] = {"fast_path": [], "workflow_run": [], "sync_op": []}
        for _ in range(ROUNDS):
            samples["fast_path"] += await execute(endpoint, CALLS_PER_ROUND)
            samples["workflow_run"] += await execute(plain_endpoint, CALLS_PER_ROUND)
            samples["sync_op"] += await sync_op(CALLS_PER_ROUND)

    figures = {form: summarise(values) for form, values in samples.items()}
    ratio = figures["fast_path"]["p50_ms"] / figures["workflow_run"]["p50_ms"]
    print("execute_tool round trip from a caller workflow (ms, same dev server, same run)")
    print(f"{'form':14} {'n':>5} {'p50':>8} {'p95':>8}")
    for form, figure in figures.items():
        print(f"{form:14} {figure['n']:>5} {figure['p50_ms']:>8.1f} {figure['p95_ms']:>8.1f}")
    verdict = "meets" if ratio <= 0.5 else "MISSES"
    print(f"fast-path p50 / workflow-run p50 = {ratio:.3f} ({verdict} the <= 0.5 goal)")
    path = save("nexus_roundtrip", {"figures": figures, "fast_over_workflow_run_p50": ratio})
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
