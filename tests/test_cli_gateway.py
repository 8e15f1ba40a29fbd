"""`agent ask|send|chat --gateway` as a user runs it: the real `agent` executable against a real
gateway process on the session's stack, with the fake model at its HTTP boundary.

The CLI is given no way to reach Temporal (TEMPORAL_ADDRESS names a closed port): whatever works
here went through the gateway, as the key's user.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from orchestrator.worker import build_orchestrator_worker
from tests.conftest import STORE_URL, Stack, fake_llm_settings, orchestrator_settings
from tests.support.fake_llm import FakeModelServer, completion
from tests.support.gateway import GatewayServer, dev_server_address, gateway_fixture  # noqa: F401
from tests.test_cli import AGENT, _error_lines, _no_traceback
from tests.test_cli_approvals import _approver, _script_expense

SLOW = " ".join(f"word{i}" for i in range(30))


def _user(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


def _env(url: str, key: str | None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TEMPORAL_", "ORCHESTRATOR_", "AGENT_"))
    }
    env.update(TEMPORAL_ADDRESS="127.0.0.1:1", AGENT_GATEWAY_URL=url, COLUMNS="400")
    if key is not None:
        env["AGENT_API_KEY"] = key
    return env


async def _agent(
    url: str, key: str | None, *args: str, input: str | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [AGENT, *args],
        env=_env(url, key),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert _no_traceback(result), result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and _error_lines(result) == lines, result.stderr
    return lines[0]


async def _ask_streaming(
    url: str, key: str, on_first_word: Callable[[], Awaitable[None]]
) -> tuple[int, str, str]:
    """`agent ask --stream` of a question the fake model answers with SLOW, gated after word0:
    `on_first_word` runs once word0 is on screen (while the provider holds the rest)."""
    process = await asyncio.create_subprocess_exec(
        AGENT,
        "ask",
        "--stream",
        "what is 6 * 7?",
        env=_env(url, key),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    output = b""
    first_word_seen = False
    try:
        while True:
            piece = await asyncio.wait_for(process.stdout.read(64), timeout=90)
            if not piece:
                break
            output += piece
            if not first_word_seen and b"word0" in output:
                first_word_seen = True
                # The provider sent word0 and nothing after it: the CLI printed it as it came.
                assert b"word1" not in output and process.returncode is None
                await on_first_word()
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=90)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert first_word_seen, output.decode()
    return process.returncode or 0, output.decode(), stderr.decode()


def _script_slow(fake_model: FakeModelServer) -> threading.Event:
    rest_may_go = threading.Event()
    fake_model.script(
        completion(tool_calls=[("calculator", {"expression": "6 * 7"})]),
        completion(SLOW, gate=rest_may_go, gate_after_words=1),
    )
    return rest_may_go


async def test_ask_streams_through_the_gateway(
    gateway: GatewayServer, fake_model: FakeModelServer
) -> None:
    user = _user("gia")
    key = gateway.create_key(user)
    rest_may_go = _script_slow(fake_model)

    async def release() -> None:
        rest_may_go.set()

    code, text, stderr = await _ask_streaming(gateway.url, key, release)
    assert code == 0 and "Traceback" not in stderr, stderr
    assert "calculator" in text  # the tool call was shown as it ran
    assert text.count("word29") == 1  # streamed, not printed again at the end
    # The conversation is the key user's, titled with the question.
    async with gateway.client(key) as http:
        mine = (await http.get("/v1/conversations")).json()["conversations"]
    assert mine[0]["title"] == "what is 6 * 7?"
    cid = mine[0]["conversation_id"]
    assert f"continue with `agent send {cid}" in stderr


async def test_a_cut_stream_resumes_where_it_stopped(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    """The gateway restarts mid-answer: the CLI resumes from the last event it printed, and the
    answer is on screen once, whole, in order."""
    queue = f"orchestrator-cligw-{uuid.uuid4().hex[:8]}"
    # The provider holds the answer while the gateway restarts: longer than the suite's 3 s.
    patient = fake_llm_settings(fake_model).model_copy(update={"timeout_seconds": 60})
    worker = build_orchestrator_worker(
        stack.client("orchestrator"),
        task_queue=queue,
        settings=orchestrator_settings(),
        llm_settings=patient,
    )
    server = GatewayServer(
        temporal_address=dev_server_address(stack), task_queue=queue, store_url=STORE_URL
    )
    rest_may_go = _script_slow(fake_model)

    async def restart_then_release() -> None:
        await asyncio.to_thread(server.restart)
        rest_may_go.set()

    async with worker:
        with server.started():
            key = server.create_key(_user("hal"))
            code, text, stderr = await _ask_streaming(server.url, key, restart_then_release)
    assert code == 0 and "Traceback" not in stderr, stderr
    shown = text[text.index("word0") :].split()
    assert shown[:30] == SLOW.split(), text
    assert text.count("word0") == 1 and text.count("word29") == 1


async def test_json_ask_then_send(gateway: GatewayServer, fake_model: FakeModelServer) -> None:
    key = gateway.create_key(_user("ivy"))
    fake_model.script(completion("Hello there."))
    asked = await _agent(gateway.url, key, "ask", "Hi!", "--json")
    assert asked.returncode == 0 and asked.stderr == "", asked.stderr
    payload = json.loads(asked.stdout)
    assert set(payload) == {"conversation_id", "answer", "tool_calls", "usage"}
    assert payload["answer"] == "Hello there."
    cid = payload["conversation_id"]

    fake_model.script(completion("Still here."))
    sent = await _agent(gateway.url, key, "send", cid, "Are you there?", "--json")
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["answer"] == "Still here."
    async with gateway.client(key) as http:
        turns = (await http.get(f"/v1/conversations/{cid}")).json()["turns"]
    assert [t["message"] for t in turns] == ["Hi!", "Are you there?"]


async def test_someone_elses_conversation_is_one_line_404(
    gateway: GatewayServer, fake_model: FakeModelServer
) -> None:
    async with gateway.client(gateway.create_key(_user("jo"))) as http:
        created = await http.post("/v1/conversations", json={"title": "mine"})
        cid = created.json()["conversation_id"]
    other = gateway.create_key(_user("kit"))
    sent = await _agent(gateway.url, other, "send", cid, "Let me in")
    assert _one_error_line(sent) == f"error: no conversation {cid!r}"
    assert sent.stdout == ""
    resumed = await _agent(gateway.url, other, "chat", "-c", cid, input="/exit\n")
    assert _one_error_line(resumed) == f"error: no conversation {cid!r}"
    assert fake_model.chat_requests() == []


async def test_a_bad_or_missing_key_is_one_line_naming_the_key(
    gateway: GatewayServer, tmp_path: Path
) -> None:
    unknown = await _agent(gateway.url, "agk_0123456789ab_not-a-real-secret", "ask", "Hi")
    line = _one_error_line(unknown)
    assert "refused the API key" in line and "check AGENT_API_KEY" in line
    chat = await _agent(gateway.url, "agk_0123456789ab_not-a-real-secret", "chat", input="Hi\n")
    assert "check AGENT_API_KEY" in _one_error_line(chat)  # before anything is typed

    revoked = gateway.create_key(_user("lee"))
    gateway.revoke_key(revoked)
    key_file = tmp_path / "key"
    key_file.write_text(revoked + "\n")
    from_file = await _agent(gateway.url, None, "ask", "--api-key-file", str(key_file), "Hi")
    assert f"check the key in {key_file}" in _one_error_line(from_file)

    missing = await _agent(gateway.url, None, "send", "c-123", "Hi")
    assert "set AGENT_API_KEY" in _one_error_line(missing)


async def test_an_unreachable_gateway_is_one_line_with_its_url() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    for args in (("ask", "Hi"), ("send", "c-123", "Hi"), ("chat",)):
        result = await _agent(url, "agk_0123456789ab_secret", *args, input="Hi\n/exit\n")
        line = _one_error_line(result)
        assert f"cannot reach the gateway at {url}: connection refused" in line


async def test_chat_prompts_for_approval_through_the_gateway(
    stack: Stack, gateway: GatewayServer, fake_model: FakeModelServer
) -> None:
    approver = await _approver(stack)
    key = gateway.create_key(approver)
    _script_expense(fake_model)
    chat = await _agent(
        gateway.url,
        key,
        "chat",
        input="File my offsite expense: 750 EUR on CC-1001\nmaybe\ny looks fine\n/exit\n",
    )
    assert chat.returncode == 0 and _no_traceback(chat), chat.stderr
    assert "approval needed" in chat.stdout and "submit_expense on finance" in chat.stdout
    assert "answer y or n" in chat.stdout  # "maybe" is asked again
    assert f"approved by {approver}" in chat.stdout and "Recorded." in chat.stdout
    assert chat.stdout.count("Recorded.") == 1  # streamed, not printed again
    cid = chat.stdout.split("chat --conversation ")[1].split("`")[0]

    fake_model.script(completion("Welcome back."))
    again = await _agent(gateway.url, key, "chat", "-c", cid, input="Hello again\n/end\n")
    assert again.returncode == 0 and _no_traceback(again), again.stderr
    assert "you: File my offsite expense" in again.stdout  # the earlier turn, when resumed
    assert "Welcome back." in again.stdout and "conversation ended" in again.stdout
    async with gateway.client(key) as http:
        detail = (await http.get(f"/v1/conversations/{cid}")).json()
    approval = detail["turns"][0]["tool_calls"][0]["approval"]
    assert (approval["verdict"], approval["approver"], approval["reason"]) == (
        "approve",
        approver,
        "looks fine",
    )


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
