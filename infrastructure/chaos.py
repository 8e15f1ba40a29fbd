"""`make chaos`: concurrent conversations while workers are killed and the server restarts.

The embedded stack runs in a throw-away directory on spare ports. A baseline phase measures turn
latency undisturbed; then N conversations (local, IT and Finance tools, an IT session tool) run
while a driver `kill -9`s random workers (orchestrator, IT, Finance) at random moments (every
5-10 s, each worker in turn, so a killed orchestrator — ~5 s to start on two busy cores — gets to
work before its next kill) and restarts them, and restarts the Temporal dev server on its persisted database. Clients resend a
message after a failure with the same message id, as a real client would.

Report: conversations completed, user messages lost, duplicate tool effects (from the IT ledger,
keyed by call id, and from the session state itself), and p50/p95 turn latency with and without
chaos. Goal: 100% completed, 0 lost, 0 duplicated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from temporalio.client import (
    Client,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.service import RPCError

from infrastructure.devstack import WORKERS, DevStack, DevStackSettings, WorkerProcess
from it_service.ledger import ledger_counts
from it_service.workflows import ITSessionWorkflow, session_workflow_id
from orchestrator.client import ConversationClient
from shared.config import TemporalSettings
from shared.log import configure_logging
from shared.temporal import connect

# Each turn is answered by the offline model, which picks tools from the words.
SCRIPT = [
    "Track IP 192.0.2.{n} and what is ({n} + 2) * 3?",
    "What's the stock price of AAPL and the ROI on 1000 at 5 percent for 3 years?",
    "Set my Jira project to OPS and what's the weather in Paris?",
    "Show my IP history",
]
TURN_DEADLINE_SECONDS = 300.0


@dataclass
class ChaosReport:
    conversations: int
    turns_per_conversation: int
    completed: int = 0
    lost_messages: int = 0
    answered_twice: int = 0
    ledger_effects: int = 0
    reexecutions_absorbed: int = 0
    duplicate_tool_workflows: int = 0
    tool_workflows_checked: int = 0
    session_duplicates: int = 0
    client_retries: int = 0
    kills: dict[str, int] = field(default_factory=dict)
    server_restarts: int = 0
    baseline_ms: list[float] = field(default_factory=list)
    chaos_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        def pct(values: list[float], q: float) -> float:
            if not values:
                return float("nan")
            ordered = sorted(values)
            return round(ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1)))], 1)

        return {
            "conversations": self.conversations,
            "completed": self.completed,
            "completed_pct": round(100 * self.completed / max(self.conversations, 1), 1),
            "lost_messages": self.lost_messages,
            "answered_twice": self.answered_twice,
            "duplicate_tool_effects": self.session_duplicates + self.duplicate_tool_workflows,
            "duplicate_effects_in_session_state": self.session_duplicates,
            "tool_calls_executed_by_two_workflows": self.duplicate_tool_workflows,
            "tool_workflows_checked": self.tool_workflows_checked,
            "tool_effects_recorded": self.ledger_effects,
            "tool_reexecutions_absorbed": self.reexecutions_absorbed,
            "client_retries": self.client_retries,
            "worker_kills": self.kills,
            "server_restarts": self.server_restarts,
            "turn_ms_baseline_p50": pct(self.baseline_ms, 0.5),
            "turn_ms_baseline_p95": pct(self.baseline_ms, 0.95),
            "turn_ms_chaos_p50": pct(self.chaos_ms, 0.5),
            "turn_ms_chaos_p95": pct(self.chaos_ms, 0.95),
        }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _send_until_answered(
    conversations: ConversationClient, cid: str, index: int, text: str, report: ChaosReport
) -> float:
    """Send one message, resending it (same message id) through outages. Returns seconds.

    Resending early is safe: the message id makes every resend attach to the same answer.
    """
    started = time.monotonic()
    delay = 0.5
    while True:
        try:
            result = await asyncio.wait_for(
                conversations.send(cid, text, message_id=f"{cid}-m{index}"), timeout=15
            )
            if not result.ok:
                raise RuntimeError(f"{cid} turn {index} failed: {result.error}")
            return time.monotonic() - started
        except (
            RPCError,
            TimeoutError,
            RuntimeError,
            WorkflowUpdateFailedError,
            WorkflowUpdateRPCTimeoutOrCancelledError,
        ) as err:
            if isinstance(err, WorkflowUpdateFailedError) and "still being answered" not in str(
                err.cause
            ):
                raise
            if time.monotonic() - started > TURN_DEADLINE_SECONDS:
                raise RuntimeError(f"{cid} turn {index} not answered: {err}") from err
            report.client_retries += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def _conversation(
    conversations: ConversationClient,
    cid: str,
    n: int,
    turns: int,
    report: ChaosReport,
    samples: list[float],
) -> None:
    for index in range(turns):
        text = SCRIPT[index % len(SCRIPT)].format(n=n % 250)
        samples.append(1000 * await _send_until_answered(conversations, cid, index, text, report))


class Chaos:
    """Kills and restarts the stack's processes at random moments."""

    def __init__(
        self,
        stack: DevStack,
        report: ChaosReport,
        seed: int,
        kill_every: tuple[float, float] = (5.0, 10.0),
        max_kills: int | None = None,
    ) -> None:
        self._kill_every = kill_every
        self._max_kills = max_kills
        self._stack = stack
        self._report = report
        self._random = random.Random(seed)
        self._queue: list[WorkerProcess] = []

    async def run_plan(self, plan: list[str]) -> None:
        """Inject a fixed sequence of faults ('server' or a worker name), whatever else happens."""
        workers = {worker.name: worker for worker in WORKERS}
        for fault in plan:
            await asyncio.sleep(self._random.uniform(*self._kill_every))
            if fault == "server":
                await self._restart_server()
            else:
                await self._kill_and_restart(workers[fault])

    async def _kill_and_restart(self, worker: WorkerProcess) -> None:
        pid = self._stack._alive(worker.name)
        if pid is not None:
            os.killpg(pid, signal.SIGKILL)
            self._report.kills[worker.name] = self._report.kills.get(worker.name, 0) + 1
        await asyncio.sleep(self._random.uniform(0.2, 2.0))
        self._stack._start_worker(worker)

    async def run(self, stop: asyncio.Event, restart_server_after: float) -> None:
        started = time.monotonic()
        server_restarted = False
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=self._random.uniform(*self._kill_every))
                return
            except TimeoutError:
                pass
            if not server_restarted and time.monotonic() - started > restart_server_after:
                await self._restart_server()
                server_restarted = True
                continue
            if self._max_kills is not None and sum(self._report.kills.values()) >= self._max_kills:
                continue
            if not self._queue:  # every worker is killed once before any is killed again
                self._queue = self._random.sample(WORKERS, len(WORKERS))
            await self._kill_and_restart(self._queue.pop())
        if not server_restarted:
            await self._restart_server()

    async def _restart_server(self) -> None:
        pid = self._stack._alive("temporal")
        if pid is not None:
            os.killpg(pid, signal.SIGTERM)
            for _ in range(100):
                if self._stack._alive("temporal") is None:
                    break
                await asyncio.sleep(0.1)
        self._stack._start_server()
        await self._stack._wait_for_server()
        self._report.server_restarts += 1


async def run_chaos(
    conversations_n: int,
    turns: int,
    baseline_n: int,
    seed: int,
    *,
    kill_every: tuple[float, float] = (5.0, 10.0),
    restart_server_after: float = 20.0,
    max_kills: int | None = None,
    plan: list[str] | None = None,
) -> ChaosReport:
    report = ChaosReport(conversations=conversations_n, turns_per_conversation=turns)
    run_dir = Path(tempfile.mkdtemp(prefix="chaos-"))
    ledger = run_dir / "ledger.db"
    os.environ["TOOL_LEDGER_PATH"] = str(ledger)  # inherited by the workers the stack starts
    settings = DevStackSettings(
        run_dir=run_dir,
        port=_free_port(),
        http_port=_free_port(),
        ui_port=_free_port(),
        start_timeout_seconds=120,
    )
    stack = DevStack(settings)
    if await stack.up() != 0:
        raise RuntimeError(f"the stack did not start; see {run_dir / 'logs'}")
    try:
        client = await connect(TemporalSettings(address=settings.address, namespace="orchestrator"))
        conversations = ConversationClient(client, "orchestrator")
        tag = f"{seed}-{int(time.time())}"

        print(f"baseline: {baseline_n} conversations x {turns} turns, no faults ...", flush=True)
        await asyncio.gather(
            *(
                _conversation(
                    conversations, f"base-{tag}-{i}", i, turns, report, report.baseline_ms
                )
                for i in range(baseline_n)
            )
        )

        print(
            f"chaos: {conversations_n} conversations x {turns} turns while workers are killed "
            "and the server restarts ...",
            flush=True,
        )
        stop = asyncio.Event()
        chaos = Chaos(stack, report, seed, kill_every, max_kills)
        chaos_task = asyncio.create_task(
            chaos.run_plan(plan) if plan else chaos.run(stop, restart_server_after)
        )
        ids = [f"chaos-{tag}-{i}" for i in range(conversations_n)]
        results = await asyncio.gather(
            *(
                _conversation(conversations, cid, i, turns, report, report.chaos_ms)
                for i, cid in enumerate(ids)
            ),
            return_exceptions=True,
        )
        stop.set()
        await chaos_task
        await stack._wait_for_pollers(client)  # every worker back before checking

        it_client = await connect(TemporalSettings(address=settings.address, namespace="it"))
        for cid, outcome in zip(ids, results, strict=True):
            if isinstance(outcome, BaseException):
                print(f"  {cid}: {outcome}", flush=True)
            answered = await _answered(conversations, cid)
            expected = [
                SCRIPT[i % len(SCRIPT)].format(n=ids.index(cid) % 250) for i in range(turns)
            ]
            report.lost_messages += sum(1 for text in expected if text not in answered)
            report.answered_twice += sum(max(0, answered.count(t) - 1) for t in set(answered))
            if answered == expected:
                report.completed += 1
            report.session_duplicates += await _session_duplicates(it_client, cid)
        report.ledger_effects, report.reexecutions_absorbed = ledger_counts(ledger)
        for namespace in ("it", "finance"):
            team = await connect(TemporalSettings(address=settings.address, namespace=namespace))
            checked, twice = await _calls_run_twice(team, tag)
            report.tool_workflows_checked += checked
            report.duplicate_tool_workflows += twice
    finally:
        stack.down()
    return report


async def _answered(conversations: ConversationClient, cid: str) -> list[str]:
    try:
        return [turn.message for turn in await conversations.turns(cid) if turn.ok]
    except RPCError:
        return []


async def _session_duplicates(client: Client, cid: str) -> int:
    handle = client.get_workflow_handle_for(ITSessionWorkflow.run, session_workflow_id(cid))
    try:
        state = await handle.query(ITSessionWorkflow.state)
    except RPCError:
        return 0
    call_ids = [entry.call_id for entry in state.ip_history]
    return len(call_ids) - len(set(call_ids))


async def _calls_run_twice(client: Client, tag: str) -> tuple[int, int]:
    """(tool calls checked, executions beyond one per call id): a call run twice shows here."""
    runs: dict[str, int] = {}
    async for execution in client.list_workflows(f"WorkflowId STARTS_WITH 'tool-chaos-{tag}-'"):
        runs[execution.id] = runs.get(execution.id, 0) + 1
    return len(runs), sum(count - 1 for count in runs.values())


def print_report(report: ChaosReport) -> None:
    summary = report.summary()
    print("\nchaos report")
    for key, value in summary.items():
        print(f"  {key:32} {value}")
    ok = (
        report.completed == report.conversations
        and report.lost_messages == 0
        and report.answered_twice == 0
        and report.duplicate_tool_workflows == 0
        and report.session_duplicates == 0
    )
    print("goal (100% completed, 0 lost, 0 duplicated):", "met" if ok else "NOT met")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--conversations", type=int, default=50)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--baseline", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    configure_logging(level=os.environ.get("LOG_LEVEL", "WARNING"))
    report = asyncio.run(run_chaos(args.conversations, args.turns, args.baseline, args.seed))
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report.summary(), indent=2))
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
