"""`make bench`, part four: the agent loop on the stack as `make up` runs it, against its floor.

The stack is `infrastructure.devstack.DevStack` on a temporary run directory and free ports: the
Temporal dev server (latency-tuned dynamic config, Prometheus metrics on), one worker process per
team manifest and the orchestrator worker, each in its own process with the environment `make up`
gives it. The model is the 0 ms fake (`bench.fake_model`, its own process); the store a throw-away
SQLite file. The structural floor (`bench.floor`) runs in its own process too
(`python -m bench.floor_worker`), on the same server, against the same team workers.

Figures, in one run:
- latency: one conversation and one floor workflow, one-tool turns interleaved turn by turn
  (BENCH_STACK_WARMUP=5 warm-up turns, then BENCH_STACK_TURNS=40 of each), client-side p50/p95;
- throughput: BENCH_STACK_CONVERSATIONS=100 conversations and as many floor workflows, each started
  with one untimed turn, then all at once sending BENCH_STACK_TURNS_PER_CONVERSATION=3 one-tool
  turns one after another; the floor's phase first, then the agent's;
- for each throughput phase: CPU seconds per turn of every process (utime + stime from
  /proc/<pid>/stat before and after the phase), and billable actions per turn (the dev server's
  `action` counter, scraped before and after the phase), with the top action types.

Nothing is left running: the stack is brought down, the floor worker and the fake model are
stopped and the run directory is removed in `finally` blocks, on failure and on Ctrl-C/SIGTERM too.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from bench.agent_loop import Runner, interleaved, timed
from bench.calls import bench_calls
from bench.common import RESULTS_DIR, percentile, save, summarise
from bench.costs import ACTION_METRIC, Probe, phase_costs
from bench.fake_model import fake_model_server, plans_for
from bench.floor import FLOOR_TASK_QUEUE
from infrastructure.devstack import DevStack, DevStackSettings
from infrastructure.setup import write_private_file
from infrastructure.stack_processes import ORCHESTRATOR_WORKER, child_environment
from orchestrator.client import ConversationClient
from shared.auth import NexusAuthSettings
from shared.config import SECRETS_DIR_VARIABLE, TemporalSettings, secret_file_name
from shared.log import configure_logging
from shared.temporal import connect, exit_process

WARMUP_TURNS = int(os.environ.get("BENCH_STACK_WARMUP", "5"))
LATENCY_TURNS = int(os.environ.get("BENCH_STACK_TURNS", "40"))
CONVERSATIONS = int(os.environ.get("BENCH_STACK_CONVERSATIONS", "100"))
TURNS_PER_CONVERSATION = int(os.environ.get("BENCH_STACK_TURNS_PER_CONVERSATION", "3"))
PHASE_TIMEOUT = 300.0  # seconds: one whole throughput phase (each turn has its own 60 s)
SETTLE_SECONDS = 1.0  # after a phase, before the "after" readings: tool workflows still closing
FLOOR_PROCESS = "bench-floor"
# The goals this bench is judged against.
GOAL_THROUGHPUT_RATIO = 1.2  # agent turns/s >= 1.2 x floor turns/s
GOAL_ONE_TOOL_P50_MS = 125.0
GOAL_ONE_TOOL_P50_RATIO = 1.25  # agent one-tool p50 <= 1.25 x floor's


class BenchFailure(RuntimeError):
    pass


# ---- processes --------------------------------------------------------------------------------
def children_matching(text: str) -> list[int]:
    """Pids of this process's children whose command line contains `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and text in cmdline:
            found.append(int(entry.name))
    return found


def stop_process(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the process group it leads, SIGKILL it after `grace`; wait for it either way."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=5)


@contextmanager
def floor_worker_process(stack: DevStack) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m bench.floor_worker` in its own process: the orchestrator's namespace, the floor's
    task queue, and a copy of the orchestrator's signing keys in its own secrets directory."""
    name = secret_file_name(NexusAuthSettings, "signing_keys")
    keys = (stack.secrets_root / ORCHESTRATOR_WORKER.name / name).read_text()
    secrets_dir = stack.secrets_root / FLOOR_PROCESS
    secrets_dir.mkdir(mode=0o700, exist_ok=True)
    write_private_file(secrets_dir / name, keys)
    own = {
        "TEMPORAL_ADDRESS": stack.settings.address,
        "TEMPORAL_NAMESPACE": ORCHESTRATOR_WORKER.namespace,
        "TEMPORAL_TASK_QUEUE": FLOOR_TASK_QUEUE,
        SECRETS_DIR_VARIABLE: str(secrets_dir),
    }
    log_path = stack.log_dir / f"{FLOOR_PROCESS}.log"
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.floor_worker"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_environment(os.environ, (), own),
            start_new_session=True,
        )
    try:
        yield process
    finally:
        stop_process(process)


async def wait_for_poller(
    client: Client, task_queue: str, process: subprocess.Popen[bytes], timeout: float = 60.0
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise BenchFailure(f"the floor worker exited with code {process.returncode}")
        response = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace,
                task_queue=TaskQueue(name=task_queue),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            )
        )
        if response.pollers:
            return
        if time.monotonic() > deadline:
            raise BenchFailure(f"the floor worker is not polling {task_queue}")
        await asyncio.sleep(0.3)


# ---- phases ------------------------------------------------------------------------------------
async def latency(runner: Runner) -> dict[str, list[float]]:
    """One conversation and one floor workflow, one-tool turns interleaved turn by turn."""
    tag = uuid.uuid4().hex[:8]
    kinds = {
        "agent": (runner.agent(1), f"bench-stack-agent-latency-{tag}"),
        "floor": (runner.floor(1), f"bench-stack-floor-latency-{tag}"),
    }
    return await interleaved(kinds, WARMUP_TURNS, LATENCY_TURNS)


async def run_all(coroutines: list[Awaitable[None]], timeout: float) -> None:
    """Run `coroutines` concurrently; on the first failure (or the timeout) cancel the others and
    wait for them, so none is left for asyncio.run to cancel (and log) at exit."""
    tasks = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
    try:
        done, pending = await asyncio.wait(
            tasks, timeout=timeout, return_when=asyncio.FIRST_EXCEPTION
        )
        for task in done:
            task.result()  # the first failure, if any, is raised here
        if pending:
            raise BenchFailure(f"{len(pending)} of {len(tasks)} did not finish in {timeout:.0f} s")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def start_all(run: Callable[[str, int], Awaitable[None]], kind: str) -> list[str]:
    """`CONVERSATIONS` workflows, started concurrently with one untimed turn each."""
    ids = [f"bench-stack-{kind}-{uuid.uuid4().hex[:8]}-{n}" for n in range(CONVERSATIONS)]
    await run_all([run(i, 0) for i in ids], PHASE_TIMEOUT)
    return ids


async def throughput(
    run: Callable[[str, int], Awaitable[None]], ids: list[str], probe: Probe
) -> dict[str, Any]:
    """All workflows at once, each sending `TURNS_PER_CONVERSATION` turns one after another."""
    turn_ms: list[float] = []

    async def conversation(workflow_id: str) -> None:
        for index in range(1, TURNS_PER_CONVERSATION + 1):
            turn_ms.append(await timed(run, workflow_id, index))

    before = probe.read()
    await run_all([conversation(i) for i in ids], PHASE_TIMEOUT)
    wall_s = time.perf_counter() - before.at
    await asyncio.sleep(SETTLE_SECONDS)
    after = probe.read()
    turns = len(ids) * TURNS_PER_CONVERSATION
    return {
        "conversations": len(ids),
        "turns": turns,
        "wall_s": round(wall_s, 2),
        "turns_per_s": round(turns / wall_s, 2),
        "turn_p50_ms": round(percentile(turn_ms, 50), 1),
        "turn_p95_ms": round(percentile(turn_ms, 95), 1),
        "settle_s": SETTLE_SECONDS,
        **phase_costs(before, after, turns),
    }


async def run_bench(stack: DevStack, exit_stack: ExitStack) -> dict[str, Any]:
    if await stack.up() != 0:
        raise BenchFailure("the dev stack did not come up")
    client = await connect(
        TemporalSettings(
            address=stack.settings.address,
            namespace=ORCHESTRATOR_WORKER.namespace,
            api_key=None,
            tls=False,
        )
    )
    floor = exit_stack.enter_context(floor_worker_process(stack))
    await wait_for_poller(client, FLOOR_TASK_QUEUE, floor)
    pids = {name: pid for name, pid in stack.running().items() if pid is not None}
    if len(pids) != len(stack.workers) + 1:
        raise BenchFailure(f"not every stack process is running: {stack.running()}")
    pids = {
        "server": pids.pop("temporal"),
        **pids,
        FLOOR_PROCESS: floor.pid,
        "client": os.getpid(),
    }
    for pid in children_matching("fake_model.py")[:1]:
        pids["fake-model"] = pid
    assert stack.settings.metrics_port is not None
    probe = Probe(pids, stack.settings.metrics_port)
    calls = bench_calls()
    runner = Runner(ConversationClient(client, ORCHESTRATOR_WORKER.task_queue), client, calls)

    print(f"latency: {WARMUP_TURNS} warm-up + {LATENCY_TURNS} one-tool turns each, interleaved ...")
    samples = await latency(runner)
    print(
        "  one-tool p50 (ms): "
        + ", ".join(f"{kind} {percentile(values, 50):.1f}" for kind, values in samples.items())
    )
    print(
        f"throughput: {CONVERSATIONS} concurrent workflows x {TURNS_PER_CONVERSATION} one-tool "
        "turns (after an untimed start turn each), floor then agent ..."
    )
    started = time.perf_counter()
    floor_ids = await start_all(runner.floor(1), "floor")
    agent_ids = await start_all(runner.agent(1), "agent")
    start_phase_s = round(time.perf_counter() - started, 2)
    print(f"  started {2 * CONVERSATIONS} workflows in {start_phase_s} s")
    floor_rate = await throughput(runner.floor(1), floor_ids, probe)
    print(f"  floor: {floor_rate['turns_per_s']} turns/s")
    agent_rate = await throughput(runner.agent(1), agent_ids, probe)
    print(f"  agent: {agent_rate['turns_per_s']} turns/s")
    return {
        "latency_samples": samples,
        "throughput": {"agent": agent_rate, "floor": floor_rate},
        "throughput_start_phase_s": start_phase_s,
        "pids": pids,
        "action_labels": sorted(probe.action_labels_seen),
    }


# ---- report ------------------------------------------------------------------------------------
def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report(result: dict[str, Any], load_before: tuple[float, ...], wall_s: float) -> None:
    agent_rate: dict[str, Any] = result["throughput"]["agent"]
    floor_rate: dict[str, Any] = result["throughput"]["floor"]
    latency: dict[str, dict[str, float]] = result["latency_ms"]
    agent_p50, floor_p50 = latency["agent"]["p50_ms"], latency["floor"]["p50_ms"]
    rate_ratio = agent_rate["turns_per_s"] / floor_rate["turns_per_s"]
    server_agent = agent_rate["cpu_ms_per_turn"]["server"]
    server_floor = floor_rate["cpu_ms_per_turn"]["server"]
    goals = {
        "turns_per_s_ratio_ge_1.2": rate_ratio >= GOAL_THROUGHPUT_RATIO,
        "server_cpu_per_turn_le_floor": server_agent <= server_floor,
        "one_tool_p50_le_125_ms": agent_p50 <= GOAL_ONE_TOOL_P50_MS,
        "one_tool_p50_le_1.25x_floor": agent_p50 <= GOAL_ONE_TOOL_P50_RATIO * floor_p50,
    }
    result["goals"] = goals

    def row(name: str, agent: float, floor: float, goal: str = "") -> str:
        # A process idle in one phase (the orchestrator in the floor's) has no meaningful ratio.
        ratio = f"{agent / floor:>7.2f}" if min(agent, floor) >= 0.5 else f"{'-':>7}"
        return f"{name:34} {agent:>9.1f} {floor:>9.1f} {ratio}  {goal}".rstrip()

    print()
    print("stack throughput: workers in their own processes (as `make up`), 0 ms fake model,")
    print(
        "vs the structural floor in its own process (same dev server, same run); ratio = agent/floor"
    )
    print(f"{'figure':34} {'agent':>9} {'floor':>9} {'ratio':>7}  goal")
    print(
        row(
            "one-tool turn p50 (ms)",
            agent_p50,
            floor_p50,
            f"<= {GOAL_ONE_TOOL_P50_MS:.0f} ms: {_verdict(goals['one_tool_p50_le_125_ms'])}; "
            f"<= {GOAL_ONE_TOOL_P50_RATIO}x: {_verdict(goals['one_tool_p50_le_1.25x_floor'])}",
        )
    )
    print(row("one-tool turn p95 (ms)", latency["agent"]["p95_ms"], latency["floor"]["p95_ms"]))
    print(
        row(
            f"{CONVERSATIONS} concurrent (turns/s)",
            agent_rate["turns_per_s"],
            floor_rate["turns_per_s"],
            f">= {GOAL_THROUGHPUT_RATIO}x: {_verdict(goals['turns_per_s_ratio_ge_1.2'])}",
        )
    )
    print(row("  turn p50 under load (ms)", agent_rate["turn_p50_ms"], floor_rate["turn_p50_ms"]))
    print(
        row(
            "billable actions / turn",
            agent_rate["actions_per_turn"],
            floor_rate["actions_per_turn"],
        )
    )
    print("CPU ms per turn, by process (throughput phases):")
    for name in agent_rate["cpu_ms_per_turn"]:
        goal = ""
        if name == "server":
            goal = f"<= floor: {_verdict(goals['server_cpu_per_turn_le_floor'])}"
        print(
            row(
                f"  {name}",
                agent_rate["cpu_ms_per_turn"][name],
                floor_rate["cpu_ms_per_turn"][name],
                goal,
            )
        )
    print(
        row(
            "  all processes",
            agent_rate["cpu_ms_per_turn_total"],
            floor_rate["cpu_ms_per_turn_total"],
        )
    )
    for kind, rate in (("agent", agent_rate), ("floor", floor_rate)):
        top = list(rate["actions_per_turn_by_type"].items())[:6]
        print(f"top action types per turn, {kind}: " + ", ".join(f"{t} {v:g}" for t, v in top))
        print(
            f"actions per turn by namespace, {kind}: "
            + ", ".join(f"{ns} {v:g}" for ns, v in rate["actions_per_turn_by_namespace"].items())
        )
    print(
        f"latency n={LATENCY_TURNS} each after {WARMUP_TURNS} warm-up turns; throughput "
        f"{agent_rate['turns']} turns each: agent {agent_rate['wall_s']} s, floor "
        f"{floor_rate['wall_s']} s; starts {result['throughput_start_phase_s']} s"
    )
    load_after = os.getloadavg()
    print(
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} on "
        f"{os.cpu_count()} cores; whole bench {wall_s:.0f} s"
    )
    result["load_average"] = {"before": load_before, "after": load_after, "cores": os.cpu_count()}


def keep_logs(log_dir: Path) -> None:
    """After a failure: the processes' logs into bench/results/ (the run dir is removed)."""
    if not log_dir.is_dir():
        return
    kept = RESULTS_DIR / "stack_throughput_logs"
    shutil.rmtree(kept, ignore_errors=True)
    shutil.copytree(log_dir, kept)
    print(f"the stack's logs are in {kept}", file=sys.stderr)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _quiet_cancellations(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Drop asyncio's "exception was never retrieved" for client calls cancelled by an interrupt
    (the SDK's update-with-start settles its inner futures with the cancellation, or with an error
    caused by it, and nobody awaits them): one long traceback each, nothing to learn."""
    error = context.get("exception")
    while error is not None:
        if isinstance(error, asyncio.CancelledError):
            return
        error = error.__cause__
    loop.default_exception_handler(context)


async def run_interruptible(stack: DevStack, processes: ExitStack) -> dict[str, Any]:
    """`run_bench`, with SIGTERM cancelling it the way asyncio.run already treats Ctrl-C: the
    bench's own tasks are cancelled and awaited, not cut mid-step."""
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    loop.set_exception_handler(_quiet_cancellations)
    return await run_bench(stack, processes)


def main() -> int:
    configure_logging(level=os.environ.get("LOG_LEVEL", "WARNING"))
    # Outside the event loop, SIGTERM unwinds like Ctrl-C, so every finally block below runs.
    signal.signal(signal.SIGTERM, _interrupt)
    load_before = os.getloadavg()
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="bench-stack-"))
    try:
        stack = DevStack(
            DevStackSettings.throwaway(
                root / "run", metrics=True, ip="127.0.0.1", start_timeout_seconds=90.0
            )
        )
        calls = bench_calls()
        with fake_model_server(plans_for([(call.tool, call.args) for call in calls])) as model_url:
            # DevStack gives the orchestrator only ORCHESTRATOR_*, LLM_*, LITELLM_* (and provider)
            # variables from this process's environment: its model, key and store come from here.
            os.environ.update(
                LLM_MODEL="openai/fake-model",
                LLM_API_BASE=f"{model_url}/v1",
                LLM_API_KEY="sk-bench",
                LLM_TIMEOUT_SECONDS="10",
                LLM_TEMPERATURE="0",
                LITELLM_LOCAL_MODEL_COST_MAP="True",
                ORCHESTRATOR_STORE_URL=f"sqlite:///{root}/conversations.db",
            )
            failed = False
            processes = ExitStack()  # the floor worker, once started
            try:
                result = asyncio.run(run_interruptible(stack, processes))
            except (KeyboardInterrupt, asyncio.CancelledError):
                print("interrupted: stopping what this bench started", file=sys.stderr)
                return 130
            except BaseException:
                failed = True
                raise
            finally:
                # Cleanup is not to be cut short by a second Ctrl-C: every step is time-bounded.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                processes.close()  # the floor worker, then the stack, then (leaving) the model
                stack.down()
                if failed:
                    keep_logs(stack.log_dir)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    samples: dict[str, list[float]] = result.pop("latency_samples")
    result["latency_ms"] = {kind: summarise(values) for kind, values in samples.items()}
    report(result, load_before, time.perf_counter() - started)
    result["latency_samples_ms"] = {k: [round(v, 1) for v in vs] for k, vs in samples.items()}
    result["parameters"] = {
        "warmup_turns": WARMUP_TURNS,
        "latency_turns": LATENCY_TURNS,
        "conversations": CONVERSATIONS,
        "turns_per_conversation": TURNS_PER_CONVERSATION,
        "action_metric": ACTION_METRIC,
    }
    path = save("stack_throughput", json.loads(json.dumps(result, default=str)))
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    exit_process(main())
