"""A third team, from `make new-service` to a tool call through Nexus, with no other edit.

In a throw-away copy of the repository (the files git tracks or would track), the real scaffolding
command creates a team, its own generated test passes, and the real embedded stack
(`python -m infrastructure.devstack up`, spare ports) serves it: setup creates its namespace and
endpoint from the manifest, devstack starts its worker, and the orchestrator discovers its endpoint
from the manifests (ORCHESTRATOR_TOOL_ENDPOINTS is unset). A conversation through the `agent` CLI,
with a fake OpenAI-compatible model scripted to call the new tool, shows the call running on the new
service and succeeding. The copy reuses this virtualenv: its interpreter, with the copy first on
PYTHONPATH and as the working directory, imports the copy's code.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_http import RecordedRequest, Reply
from tests.support.fake_llm import FakeModelServer, completion

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
# Not "hr", the README's example, so that a team someone scaffolded in the repository does not
# collide with this one in the copy.
TEAM = "people"
PACKAGE = f"{TEAM}_service"
TOOL = f"{TEAM}_greet"
# Settings of the parent shell that must not reach the copy's stack: it configures its own.
FOREIGN_PREFIXES = (
    "LLM_",
    "OPENAI_",
    "NEXUS_AUTH_",
    "ORCHESTRATOR_",
    "STACK_",
    "TEMPORAL_",
    "DEVSTACK_",
    "TOOL_",
    "PYTHONPATH",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def copy_repository(destination: Path) -> None:
    """The repository's files as a clone plus the working tree's changes would have them."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    for raw in listed.split(b"\0"):
        relative = raw.decode()
        source = ROOT / relative
        if not relative or not source.is_file():  # deleted in the working tree
            continue
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def run(
    argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def model_reply(request: RecordedRequest) -> Reply:
    """Call the new team's tool for a user message; answer plainly once its result is back."""
    messages = request.json()["messages"]
    if messages[-1]["role"] == "tool":
        return completion("I greeted Ada through the new team's service.")
    return completion(tool_calls=[(TOOL, {"name": "Ada"})])


@pytest.fixture
def fake_model() -> Iterator[FakeModelServer]:
    server = FakeModelServer().start()
    try:
        yield server
    finally:
        server.stop()


def test_a_scaffolded_team_is_served_discovered_and_called(
    tmp_path: Path, fake_model: FakeModelServer
) -> None:
    repo = tmp_path / "repo"
    copy_repository(repo)
    assert not (repo / PACKAGE).exists()
    python = str(VENV_BIN / "python")
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith(FOREIGN_PREFIXES)}
    env = {**base, "PYTHONPATH": str(repo), "LOG_LEVEL": "WARNING"}

    scaffolded = run([python, "-m", "infrastructure.scaffold", TEAM], repo, env, timeout=60)
    assert scaffolded.returncode == 0, scaffolded.stdout + scaffolded.stderr
    assert (repo / PACKAGE / "team.toml").is_file()

    own_test = run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"tests/test_{PACKAGE}.py"],
        repo,
        env,
    )
    assert own_test.returncode == 0, own_test.stdout + own_test.stderr

    port = _free_port()
    stack_env = {
        **env,
        "DEVSTACK_RUN_DIR": str(tmp_path / "run"),
        "DEVSTACK_PORT": str(port),
        "DEVSTACK_HTTP_PORT": str(_free_port()),
        "DEVSTACK_UI_PORT": str(_free_port()),
        # Reach the orchestrator only, through its env prefixes (LLM_*, LITELLM_*).
        "LLM_MODEL": "openai/fake-model",
        "LLM_API_BASE": f"{fake_model.url}/v1",
        "LLM_API_KEY": "sk-fake",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    fake_model.script(*[model_reply] * 4)
    try:
        up = run([python, "-m", "infrastructure.devstack", "up"], repo, stack_env)
        assert up.returncode == 0, up.stdout + up.stderr
        pids = {p.stem for p in (tmp_path / "run" / "pids").glob("*.json")}
        assert TEAM in pids, pids

        cli_env = {
            **env,
            "TEMPORAL_ADDRESS": f"127.0.0.1:{port}",
            "TEMPORAL_NAMESPACE": "orchestrator",
        }
        asked = run([str(VENV_BIN / "agent"), "ask", "--json", "Greet Ada"], repo, cli_env)
        assert asked.returncode == 0, asked.stdout + asked.stderr
        turn = json.loads(asked.stdout)
        calls = [(c["service"], c["name"], c["ok"]) for c in turn["tool_calls"]]
        assert calls == [(TEAM, TOOL, True)], turn
        assert "Hello, Ada" in json.dumps(turn["tool_calls"][0]["result"]), turn

        # The model was offered the new tool: the orchestrator discovered the endpoint itself.
        offered = {tool["function"]["name"] for tool in fake_model.chat_requests()[0]["tools"]}
        assert TOOL in offered, offered
    finally:
        down = run([python, "-m", "infrastructure.devstack", "down"], repo, stack_env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "Stopped:" in down.stdout and TEAM in down.stdout
