"""`make bench`: what publishing a tool from an MCP server costs per call, against a Python tool.

Every series is an `execute_tool` round trip from a caller workflow through the team's Nexus
endpoint (the fast path, as deployed), interleaved in rounds so drift hits them equally. The
calls come from the team manifests (no team or tool is named here):

- native: the first `sample_calls` entry of any team (a Python tool);
- mcp_shared: the first `sample_calls` entry of a `[[mcp_servers]]` with a shared session;
- mcp_session_read: the first `sample_calls` entry of a server with one session per conversation
  (a journal query before the call);
- mcp_session_write: its first `session_sample_calls` entry (the query, and the call recorded in
  the session workflow by update-with-start after it);
- mcp_direct: the mcp_shared call from an `mcp.Client` in this process, no Temporal: the MCP hop
  on its own.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from mcp import Client
from temporalio.worker import Worker

from bench.common import bench_stack, save, start_worker, summarise
from infrastructure.probe import PROBE_TASK_QUEUE, ExecuteToolProbe, ExecuteToolProbeInput
from shared.log import configure_logging
from shared.manifest import TeamManifest, default_root, discover_teams
from shared.mcp_client import stdio_parameters
from shared.mcp_config import McpServerSource
from shared.tools import ToolCall

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
CALLS_PER_ROUND = int(os.environ.get("BENCH_CALLS", "20"))
SESSION_CONVERSATION = f"bench-mcp-{uuid.uuid4().hex[:6]}"


class Series:
    """One timed call: where it goes, with which arguments, in which conversation."""

    def __init__(
        self, name: str, endpoint: str, tool: str, args: dict[str, Any], conversation: str | None
    ) -> None:
        self.name, self.endpoint, self.tool = name, endpoint, tool
        self.args, self.conversation = args, conversation


def series_from(teams: list[TeamManifest]) -> tuple[list[Series], McpServerSource]:
    """The four timed calls, and the shared MCP server the direct series talks to."""
    native = next(
        Series("native", team.endpoint, call.tool, call.args, None)
        for team in teams
        for call in team.sample_calls
    )
    found: dict[str, Series] = {}
    shared: McpServerSource | None = None
    for team in teams:
        for source in team.mcp_servers:
            per_conversation = source.session == "conversation"
            conversation = SESSION_CONVERSATION if per_conversation else None
            kinds = [("read", source.sample_calls), ("write", source.session_sample_calls)]
            for kind, calls in kinds:
                name = f"mcp_session_{kind}" if per_conversation else "mcp_shared"
                # The direct series starts the shared server itself: a command, not a URL.
                unusable = name == "mcp_shared" and (kind == "write" or source.command is None)
                if not calls or name in found or unusable:
                    continue
                call = calls[0]
                found[name] = Series(
                    name, team.endpoint, source.published_name(call.tool), call.args, conversation
                )
                if name == "mcp_shared":
                    shared = source
    names = ("mcp_shared", "mcp_session_read", "mcp_session_write")
    missing = sorted(set(names) - set(found))
    if missing or shared is None:
        raise SystemExit(f"no team manifest declares MCP sample calls for {missing}")
    return [native, *(found[name] for name in names)], shared


async def main() -> int:
    configure_logging(level=os.environ.get("LOG_LEVEL", "WARNING"))
    series, shared = series_from(discover_teams())
    direct_call = series[1]
    samples: dict[str, list[float]] = {one.name: [] for one in series}
    samples["mcp_direct"] = []
    for one in series:
        print(f"{one.name:18} {one.tool} on {one.endpoint}")
    async with bench_stack() as (clients, exit_stack):
        probe = Worker(
            clients["orchestrator"], task_queue=PROBE_TASK_QUEUE, workflows=[ExecuteToolProbe]
        )
        await start_worker(exit_stack, probe)
        caller = clients["orchestrator"]

        async def execute(one: Series, n: int) -> list[float]:
            calls = [
                ToolCall(
                    call_id=f"bench-{uuid.uuid4()}",
                    tool=one.tool,
                    args=dict(one.args),
                    conversation_id=one.conversation or f"bench-{uuid.uuid4().hex[:8]}",
                )
                for _ in range(n)
            ]
            result = await caller.execute_workflow(
                ExecuteToolProbe.run,
                ExecuteToolProbeInput(endpoint=one.endpoint, calls=calls),
                id=f"bench-{uuid.uuid4()}",
                task_queue=PROBE_TASK_QUEUE,
            )
            assert all(o.ok for o in result.outcomes), result.outcomes[0].error
            return result.durations_ms

        mcp_tool = direct_call.tool.removeprefix(shared.prefix)
        async with Client(stdio_parameters(shared, "", Path(default_root()))) as direct:

            async def direct_calls(n: int) -> list[float]:
                durations = []
                for _ in range(n):
                    started = time.perf_counter()
                    result = await direct.call_tool(mcp_tool, dict(direct_call.args))
                    durations.append((time.perf_counter() - started) * 1000)
                    assert not result.is_error
                return durations

            # Warm-up: sessions open, caches and sandbox imports fill.
            for one in series:
                await execute(one, 3)
            await direct_calls(3)
            for _ in range(ROUNDS):
                for one in series:
                    samples[one.name] += await execute(one, CALLS_PER_ROUND)
                samples["mcp_direct"] += await direct_calls(CALLS_PER_ROUND)

    figures = {name: summarise(values) for name, values in samples.items()}
    print("execute_tool round trip from a caller workflow, MCP-backed against native (ms)")
    print(f"{'series':18} {'n':>5} {'p50':>8} {'p95':>8}")
    for name, figure in figures.items():
        print(f"{name:18} {figure['n']:>5} {figure['p50_ms']:>8.1f} {figure['p95_ms']:>8.1f}")
    native = figures["native"]["p50_ms"]
    overhead = {one.name: figures[one.name]["p50_ms"] - native for one in series[1:]}
    for name, extra in overhead.items():
        print(f"{name} p50 - native p50 = {extra:+.1f} ms")
    path = save("mcp", {"figures": figures, "p50_overhead_over_native_ms": overhead})
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
