"""`make chaos`: concurrent conversations while workers are killed and the server restarts.

The embedded stack runs in a throw-away directory on spare ports, with every team whose manifest
(`*/team.toml`) it finds. A baseline phase measures turn latency undisturbed; then N conversations
run while a driver `kill -9`s random workers (the orchestrator and every team's) at random moments
(every 5-10 s, each worker in turn, so a killed orchestrator — ~5 s to start on two busy cores —
gets to work before its next kill) and restarts them, and restarts the Temporal dev server on its
persisted database. Clients resend a message after a failure with the same message id, as a real
client would.

The conversations are made of the teams' `examples` (requests the offline model routes to their
tools), taking turns, the first ones joined with a request for a local tool; this driver names no
team and no team tool.

Report: conversations completed, user messages lost, duplicate tool effects (tool calls run by two
workflows in any team's namespace, and what each team's `effect_audit` finds in its own state),
effects recorded in the tool ledger (keyed by call id), and p50/p95 turn latency with and without
chaos. Goal: 100% completed, 0 lost, 0 duplicated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path

from temporalio.client import (
    Client,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.service import RPCError

from infrastructure.devstack import DevStack, DevStackSettings
from infrastructure.stack_processes import WorkerProcess
from orchestrator.client import ConversationClient
from shared.config import ConfigError, TemporalSettings
from shared.log import configure_logging
from shared.manifest import TeamManifest, discover_teams
from shared.temporal import connect, exit_process
from shared.worker import resolve_import_path

# Requests for the orchestrator's own local tools (calculator, weather), joined to the first team
# requests so that local activities run under chaos too.
LOCAL_REQUESTS = ["what is ({n} + 2) * 3?", "what's the weather in Paris?"]
TURN_DEADLINE_SECONDS = 300.0

EffectAudit = Callable[[Client, str], Awaitable[int]]


def chaos_script(teams: Sequence[TeamManifest]) -> list[str]:
    """The user messages of a conversation, `{n}` standing for its number. Every turn is answered
    by the offline model, which picks tools from the words: the teams' examples, one team after
    another, the first ones also asking for a local tool."""
    examples = [
        example
        for row in zip_longest(*(team.examples for team in teams))
        for example in row
        if example is not None
    ]
    if not examples:
        raise ConfigError("no team manifest declares `examples`: the chaos run has nothing to send")
    return [
        f"{example.rstrip(' ?.')} and {LOCAL_REQUESTS[index]}"
        if index < len(LOCAL_REQUESTS)
        else example
        for index, example in enumerate(examples)
    ]


def message_for(script: Sequence[str], turn: int, conversation_number: int) -> str:
    return script[turn % len(script)].replace("{n}", str(conversation_number % 250))


def ledger_counts(path: Path) -> tuple[int, int]:
    """(effects recorded, extra attempts absorbed by the idempotency key) in the tool ledger that
    TOOL_LEDGER_PATH names. Its schema is the ledger's contract: one row per call id in
    `effects(call_id, tool, conversation_id, attempts, first_at)`."""
    if not path.exists():
        return 0, 0
    with sqlite3.connect(path) as connection:
        effects, attempts = connection.execute(
            "SELECT COUNT(*), COALESCE(SUM(attempts), 0) FROM effects"
        ).fetchone()
    return int(effects), int(attempts) - int(effects)


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
    team_state_duplicates: int = 0
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
            "duplicate_tool_effects": self.team_state_duplicates + self.duplicate_tool_workflows,
            "duplicate_effects_in_team_state": self.team_state_duplicates,
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
    script: Sequence[str],
    cid: str,
    n: int,
    turns: int,
    report: ChaosReport,
    samples: list[float],
) -> None:
    for index in range(turns):
        text = message_for(script, index, n)
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
        workers = {worker.name: worker for worker in self._stack.workers}
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
                workers = self._stack.workers
                self._queue = self._random.sample(workers, len(workers))
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
    settings = DevStackSettings.throwaway(run_dir, start_timeout_seconds=120)
    teams = discover_teams()
    script = chaos_script(teams)
    # Each team's own check of its state, run against its namespace after the chaos phase.
    audits: dict[str, EffectAudit] = {
        team.namespace: resolve_import_path(team.effect_audit)
        for team in teams
        if team.effect_audit
    }
    stack = DevStack(settings, teams)
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
                    conversations, script, f"base-{tag}-{i}", i, turns, report, report.baseline_ms
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
                _conversation(conversations, script, cid, i, turns, report, report.chaos_ms)
                for i, cid in enumerate(ids)
            ),
            return_exceptions=True,
        )
        stop.set()
        await chaos_task
        await stack._wait_for_pollers(client)  # every worker back before checking

        team_clients = {
            team.namespace: await connect(
                TemporalSettings(address=settings.address, namespace=team.namespace)
            )
            for team in teams
        }
        for number, (cid, outcome) in enumerate(zip(ids, results, strict=True)):
            if isinstance(outcome, BaseException):
                print(f"  {cid}: {outcome}", flush=True)
            answered = await _answered(conversations, cid)
            expected = [message_for(script, i, number) for i in range(turns)]
            report.lost_messages += sum(1 for text in expected if text not in answered)
            report.answered_twice += sum(max(0, answered.count(t) - 1) for t in set(answered))
            if answered == expected:
                report.completed += 1
            for namespace, audit in audits.items():
                report.team_state_duplicates += await audit(team_clients[namespace], cid)
        report.ledger_effects, report.reexecutions_absorbed = ledger_counts(ledger)
        for team_client in team_clients.values():
            checked, twice = await _calls_run_twice(team_client, tag)
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
        and report.team_state_duplicates == 0
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
    exit_process(0)


if __name__ == "__main__":
    main()
