"""`make bench`: what publishing a tool from an MCP server costs per call, against a Python tool.

Every series is an `execute_tool` round trip from a caller workflow through the team's Nexus
endpoint (the fast path, as deployed), interleaved in rounds so drift hits them equally:

- native: a Python tool (finance `calculate_roi`, pure arithmetic);
- mcp shared: IT's `get_current_time`, served by mcp-server-time over stdio, one session per worker;
- mcp session read: IT's notebook `list_notes`, one session per conversation (a journal query
  before the call);
- mcp session write: the notebook's `add_note` (the query, and the call recorded in the session
  workflow by update-with-start after it);
- mcp direct: the same `get_current_time` from an `mcp.Client` in this process, no Temporal: the
  stdio hop on its own.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from typing import Any

from mcp import Client
from mcp.client.stdio import StdioServerParameters
from temporalio.worker import Worker

from bench.common import bench_stack, save, start_worker, summarise
from infrastructure.probe import PROBE_TASK_QUEUE, ExecuteToolProbe, ExecuteToolProbeInput
from shared.log import configure_logging
from shared.manifest import find_team
from shared.tools import ToolCall

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
CALLS_PER_ROUND = int(os.environ.get("BENCH_CALLS", "20"))
# (series, endpoint's team package, tool, arguments, conversation: None for one per call)
SERIES: list[tuple[str, str, str, dict[str, Any], str | None]] = [
    (
        "native",
        "finance_service",
        "calculate_roi",
        {"principal": "1000", "rate": "5", "years": 3},
        None,
    ),
    ("mcp_shared", "it_service", "get_current_time", {"timezone": "UTC"}, None),
    ("mcp_session_read", "it_service", "list_notes", {}, "bench-notebook"),
    ("mcp_session_write", "it_service", "add_note", {"text": "bench note"}, "bench-notebook"),
]


async def main() -> int:
    configure_logging(level=os.environ.get("LOG_LEVEL", "WARNING"))
    samples: dict[str, list[float]] = {name: [] for name, *_ in SERIES}
    samples["mcp_direct"] = []
    async with bench_stack() as (clients, exit_stack):
        await start_worker(
            exit_stack,
            Worker(
                clients["orchestrator"], task_queue=PROBE_TASK_QUEUE, workflows=[ExecuteToolProbe]
            ),
        )
        caller = clients["orchestrator"]

        async def execute(
            package: str, tool: str, args: dict[str, Any], conversation: str | None, n: int
        ) -> list[float]:
            calls = [
                ToolCall(
                    call_id=f"bench-{uuid.uuid4()}",
                    tool=tool,
                    args=dict(args),
                    conversation_id=conversation or f"bench-{uuid.uuid4().hex[:8]}",
                )
                for _ in range(n)
            ]
            result = await caller.execute_workflow(
                ExecuteToolProbe.run,
                ExecuteToolProbeInput(endpoint=find_team(package).endpoint, calls=calls),
                id=f"bench-{uuid.uuid4()}",
                task_queue=PROBE_TASK_QUEUE,
            )
            assert all(o.ok for o in result.outcomes), result.outcomes[0].error
            return result.durations_ms

        server = StdioServerParameters(
            command=sys.executable, args=["-m", "mcp_server_time", "--local-timezone", "UTC"]
        )
        async with Client(server) as direct:

            async def direct_calls(n: int) -> list[float]:
                durations = []
                for _ in range(n):
                    started = time.perf_counter()
                    result = await direct.call_tool("get_current_time", {"timezone": "UTC"})
                    durations.append((time.perf_counter() - started) * 1000)
                    assert not result.is_error
                return durations

            # Warm-up: sessions open, caches and sandbox imports fill.
            for _, package, tool, args, conversation in SERIES:
                await execute(package, tool, args, conversation, 3)
            await direct_calls(3)
            for _ in range(ROUNDS):
                for name, package, tool, args, conversation in SERIES:
                    samples[name] += await execute(
                        package, tool, args, conversation, CALLS_PER_ROUND
                    )
                samples["mcp_direct"] += await direct_calls(CALLS_PER_ROUND)

    figures = {name: summarise(values) for name, values in samples.items()}
    print("execute_tool round trip from a caller workflow, MCP-backed against native (ms)")
    print(f"{'series':18} {'n':>5} {'p50':>8} {'p95':>8}")
    for name, figure in figures.items():
        print(f"{name:18} {figure['n']:>5} {figure['p50_ms']:>8.1f} {figure['p95_ms']:>8.1f}")
    native = figures["native"]["p50_ms"]
    overhead = {
        name: figures[name]["p50_ms"] - native
        for name in ("mcp_shared", "mcp_session_read", "mcp_session_write")
    }
    for name, extra in overhead.items():
        print(f"{name} p50 - native p50 = {extra:+.1f} ms")
    path = save("mcp", {"figures": figures, "p50_overhead_over_native_ms": overhead})
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
