"""`make bench`, recovery: how soon a turn completes after a worker is killed (SIGKILL) mid-turn.

The stack runs as `make up` runs it (dev server and every worker in its own process). Two
scenarios, each on a fresh conversation:
- **orchestrator**, once per kind of model step (ORCHESTRATOR_MODEL_STEP): the model (a fake
  OpenAI-compatible server; the only stand-in) holds the first request of the turn open; the
  orchestrator worker is killed while its model step waits on it and started again at once. A
  local step runs again when its workflow task times out (10 s); an activity step when its
  heartbeats stop (10 s heartbeat timeout).
- **team**: the model asks for a team's first `upstream_calls` entry (team.toml: a tool that waits
  on an HTTP API the worker finds through one setting); a stand-in for that API holds the request
  open, and the team's worker is killed mid-call and started again.
The figures are the time from the restarted worker polling again (its own poller, by process id)
to the turn's answer, and from the kill to the answer. Without heartbeats the model step waited
out its 130 s start-to-close timeout.

Also used by tests/test_recovery.py, which checks how the step was retried.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from temporalio.client import Client

from infrastructure.devstack import DevStack, DevStackSettings
from orchestrator.client import ConversationClient
from orchestrator.models import TurnResult
from shared.config import TemporalSettings
from shared.manifest import TeamManifest, UpstreamCall, discover_teams
from shared.temporal import connect
from tests.support.fake_http import FakeHttpServer, Reply
from tests.support.fake_llm import FakeModelServer, completion

HELD_OPEN_SECONDS = 300.0  # the held request never answers in time: only a retry completes the turn
TURN_TIMEOUT_SECONDS = 120.0
TEAM_ANSWER = "the tool answered after the restart"


def _upstream_call() -> tuple[TeamManifest, UpstreamCall]:
    for team in discover_teams():
        if team.upstream_calls:
            return team, team.upstream_calls[0]
    raise SystemExit("no team manifest declares `upstream_calls`: no team scenario to run")


@dataclass
class Recovery:
    killed: str
    result: TurnResult
    seconds_after_back: float
    seconds_after_kill: float
    conversation_id: str


def _upstream_settings(base: str) -> dict[str, str]:
    """Every team's upstream API setting, pointed at the stand-in."""
    return {
        call.url_variable: call.url.replace("{base}", base)
        for team in discover_teams()
        for call in team.upstream_calls
    }


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set variables that `make up`'s children inherit (each only its own prefixes)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class RecoveryStack:
    """The embedded stack in its own processes, its model and the teams' upstream APIs the fake servers."""

    def __init__(self, model: FakeModelServer, upstream: FakeHttpServer) -> None:
        self.model = model
        self.upstream = upstream
        self.run_dir = Path(tempfile.mkdtemp(prefix="recovery-"))
        self.settings = DevStackSettings.throwaway(self.run_dir, start_timeout_seconds=120)
        self.stack = DevStack(self.settings, discover_teams())
        self.client: Client | None = None
        self._environment = ExitStack()

    async def __aenter__(self) -> RecoveryStack:
        # Kept for the stack's whole life: a restarted worker must get the same settings.
        self._environment.enter_context(
            _environment(
                {
                    "LLM_MODEL": "openai/fake-model",
                    "LLM_API_BASE": f"{self.model.url}/v1",
                    "LLM_API_KEY": "sk-recovery",
                    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                    "ORCHESTRATOR_STORE_URL": f"sqlite:///{self.run_dir}/conversations.db",
                    **_upstream_settings(self.upstream.url),
                    "ORCHESTRATOR_MODEL_STEP": "local",
                }
            )
        )
        try:
            if await self.stack.up() != 0:
                raise RuntimeError(f"the stack did not start; see {self.run_dir / 'logs'}")
            self.client = await connect(
                TemporalSettings(address=self.settings.address, namespace="orchestrator")
            )
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        try:
            self.stack.down()
        finally:
            self._environment.close()
            shutil.rmtree(self.run_dir, ignore_errors=True)

    async def kill_and_restart(self, name: str) -> tuple[float, float]:
        """SIGKILL the worker `name` and start it again: the monotonic times of the kill and of
        the new process polling."""
        worker = next(w for w in self.stack.workers if w.name == name)
        pid = self.stack._alive(name)
        if pid is None:
            raise RuntimeError(f"{name} is not running")
        killed = time.monotonic()
        os.killpg(pid, signal.SIGKILL)
        await _wait_for(lambda: self.stack._alive(name) is None, f"{name} to die")
        self.stack._start_worker(worker)
        assert self.client is not None
        await self.stack._wait_for_pollers(self.client)
        return killed, time.monotonic()


async def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def recover_orchestrator(
    stack: RecoveryStack, conversation_id: str, model_step: str = "local"
) -> Recovery:
    """Kill the orchestrator worker while its model step (run as `model_step`: see
    ORCHESTRATOR_MODEL_STEP) waits on the model."""
    assert stack.client is not None
    if os.environ.get("ORCHESTRATOR_MODEL_STEP", "local") != model_step:
        os.environ["ORCHESTRATOR_MODEL_STEP"] = model_step  # restored when the stack exits
        await stack.kill_and_restart("orchestrator")
    conversations = ConversationClient(stack.client, "orchestrator")
    stack.model.script(completion("hello"))
    await conversations.send(conversation_id, "warm up")  # started, tools discovered
    stack.model.script(
        Reply(200, completion("too late").body, delay=HELD_OPEN_SECONDS),
        completion("answered after the restart"),
    )
    before = len(stack.model.chat_requests())
    turn = asyncio.create_task(conversations.send(conversation_id, "are you still there?"))
    await _wait_for(lambda: len(stack.model.chat_requests()) > before, "the model step")
    killed, back = await stack.kill_and_restart("orchestrator")
    result = await asyncio.wait_for(turn, TURN_TIMEOUT_SECONDS)
    done = time.monotonic()
    killed_name = f"orchestrator ({model_step} model step)"
    return Recovery(killed_name, result, done - back, done - killed, conversation_id)


async def recover_team(stack: RecoveryStack, conversation_id: str) -> Recovery:
    """Kill the worker of a team whose tool waits on its HTTP API, mid-call."""
    assert stack.client is not None
    team, call = _upstream_call()
    conversations = ConversationClient(stack.client, "orchestrator")
    stack.model.script(completion("hello"))
    await conversations.send(conversation_id, "warm up")
    stack.upstream.script(Reply(200, call.answer, delay=HELD_OPEN_SECONDS), Reply(200, call.answer))
    stack.model.script(
        completion(tool_calls=[(call.tool, call.args)]),
        completion(TEAM_ANSWER),
    )
    before = len(stack.upstream.requests)
    turn = asyncio.create_task(conversations.send(conversation_id, f"please run {call.tool}"))
    await _wait_for(lambda: len(stack.upstream.requests) > before, "the tool's API call")
    killed, back = await stack.kill_and_restart(team.service)
    result = await asyncio.wait_for(turn, TURN_TIMEOUT_SECONDS)
    done = time.monotonic()
    return Recovery(team.service, result, done - back, done - killed, conversation_id)


async def main() -> int:
    model, upstream = FakeModelServer(), FakeHttpServer()
    model.start()
    upstream.start()
    try:
        async with RecoveryStack(model, upstream) as stack:
            figures = [
                await recover_team(stack, "recovery-team"),
                await recover_orchestrator(stack, "recovery-local-step", "local"),
                await recover_orchestrator(stack, "recovery-activity-step", "activity"),
            ]
    finally:
        model.stop()
        upstream.stop()
    print("recovery after SIGKILL mid-turn (worker restarted at once; goal <= 15 s)")
    for figure in figures:
        state = "ok" if figure.result.ok else f"failed: {figure.result.error}"
        print(
            f"  {figure.killed:35} killed mid-turn: answered {figure.seconds_after_back:5.1f} s "
            f"after the new worker polled, {figure.seconds_after_kill:5.1f} s after the kill "
            f"({state})"
        )
    expected = [TEAM_ANSWER, *["answered after the restart"] * 2]
    return 0 if [f.result.answer for f in figures] == expected else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
