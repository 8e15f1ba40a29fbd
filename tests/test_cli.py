"""The `agent` CLI as a user runs it: a subprocess against the test stack and the fake model."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError, RPCStatusCode

from infrastructure.dev_server import temporal_binary
from orchestrator.client import MAX_MESSAGE_BYTES, InvalidMessageError
from orchestrator.worker import build_orchestrator_worker
from tests.conftest import (
    FINANCE_ENDPOINT,
    IT_ENDPOINT,
    ORCHESTRATOR_TASK_QUEUE,
    Orchestrator,
    Stack,
    custom_orchestrator,
    fake_llm_settings,
    orchestrator_settings,
)
from tests.support.fake_llm import FakeModelServer, completion

AGENT = str(Path(sys.executable).parent / "agent")


def _agent_env(stack: Stack, task_queue: str = ORCHESTRATOR_TASK_QUEUE) -> dict[str, str]:
    return {
        **os.environ,
        "TEMPORAL_ADDRESS": stack.env.client.service_client.config.target_host,
        "TEMPORAL_NAMESPACE": "orchestrator",
        "TEMPORAL_TASK_QUEUE": task_queue,
        "COLUMNS": "200",
    }


async def _agent(
    stack: Stack, *args: str | bytes, input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `agent` as a user would; bytes arguments reach it as raw argv bytes."""
    return await asyncio.to_thread(
        subprocess.run,
        [AGENT, *args],
        env=_agent_env(stack),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _no_traceback(result: subprocess.CompletedProcess[str]) -> bool:
    return "Traceback" not in result.stderr and "Fatal Python error" not in result.stderr


def _error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


async def test_ask_json_then_send_history_and_end(
    stack: Stack, orchestrator: Orchestrator, fake_model: FakeModelServer
) -> None:
    fake_model.script(
        completion(tool_calls=[("calculate_roi", {"principal": 100, "rate": 10, "years": 2})]),
        completion("You would have 121.00."),
    )
    asked = await _agent(stack, "ask", "ROI on 100 at 10% for 2 years?", "--json")
    assert asked.returncode == 0, asked.stderr
    payload = json.loads(asked.stdout)
    assert set(payload) == {"conversation_id", "answer", "tool_calls", "usage"}
    assert payload["answer"] == "You would have 121.00."
    assert payload["tool_calls"] == [
        {
            "name": "calculate_roi",
            "service": "finance",
            "args": {"principal": 100, "rate": 10, "years": 2},
            "ok": True,
            "result": {
                "principal": "100",
                "rate_percent": "10",
                "years": 2,
                "final_value": "121.00",
                "profit": "21.00",
                "roi_percent": "21.00",
            },
        }
    ]
    assert set(payload["usage"]) == {
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "unpriced_steps",
    }
    cid = payload["conversation_id"]

    fake_model.script(completion("Still here."))
    sent = await _agent(stack, "send", cid, "Are you there?")
    assert sent.returncode == 0 and "Still here." in sent.stdout

    history = json.loads((await _agent(stack, "history", cid, "--json")).stdout)
    assert history["answer"] == "Still here."
    assert [t["message"] for t in history["turns"]] == [
        "ROI on 100 at 10% for 2 years?",
        "Are you there?",
    ]
    assert history["usage"]["prompt_tokens"] == 60

    for _ in range(20):  # visibility is eventually consistent
        listed = await _agent(stack, "list")
        if cid in listed.stdout:
            break
    assert cid in listed.stdout

    ended = await _agent(stack, "end", cid)
    assert ended.returncode == 0 and "ended" in ended.stdout
    after = await _agent(stack, "send", cid, "hello?")
    assert after.returncode == 1
    assert "has ended" in after.stderr and "Traceback" not in after.stderr


async def test_errors_are_one_line_without_traceback(
    stack: Stack, orchestrator: Orchestrator
) -> None:
    empty = await _agent(stack, "ask", "   ")
    assert empty.returncode == 1 and "the message is empty" in empty.stderr

    missing = await _agent(stack, "history", "no-such-conversation")
    assert missing.returncode == 1 and "no such conversation" in missing.stderr

    too_long = await _agent(stack, "ask", "x" * 5000)
    assert too_long.returncode == 1 and "limit is 2000" in too_long.stderr

    for result in (empty, missing, too_long):
        assert "Traceback" not in result.stderr

    env = {**os.environ, "TEMPORAL_ADDRESS": "127.0.0.1:1"}
    unreachable = subprocess.run(
        [AGENT, "list"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert unreachable.returncode == 1
    assert "cannot reach Temporal at 127.0.0.1:1" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr

    bad_config = subprocess.run(
        [AGENT, "list"],
        env={**os.environ, "TEMPORAL_TLS": "maybe"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad_config.returncode == 1
    assert "TEMPORAL_TLS" in bad_config.stderr and "Traceback" not in bad_config.stderr


def test_cli_never_imports_litellm() -> None:
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, orchestrator.cli; print('litellm' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert probe.stdout.strip() == "False"


async def test_fifty_runs_in_a_row_exit_cleanly(
    stack: Stack, orchestrator: Orchestrator, fake_model: FakeModelServer
) -> None:
    """The Temporal core's threads used to abort interpreter finalisation in ~1 run in 12
    (exit 134, "Fatal Python error: PyGILState_Release", or a segfault) after a correct answer."""
    fake_model.script(completion("Counted."))
    cid = f"conv-runs-{uuid.uuid4().hex[:8]}"
    await orchestrator.conversations.send(cid, "count with me")

    failures = []
    for _ in range(25):  # two at a time: the crash needs the CPU contention of real use
        for run in await asyncio.gather(*(_agent(stack, "history", cid, "--json") for _ in "ab")):
            ok = (
                run.returncode == 0
                and json.loads(run.stdout or "null") is not None
                and _no_traceback(run)
            )
            if not ok:
                failures.append((run.returncode, run.stderr[-300:]))
    assert failures == []


async def test_invalid_utf8_is_a_one_line_error_naming_byte_and_position(
    stack: Stack, orchestrator: Orchestrator
) -> None:
    """Invalid UTF-8 in argv used to hang (and leave a traceback on Ctrl-C)."""
    asked = await _agent(stack, "ask", b"caf\xe9 au lait", timeout=30)
    sent = await _agent(stack, "send", "conv-utf8", b"ok \xff\xfe", timeout=30)
    bad_id = await _agent(stack, "send", b"conv-\xff", "hello", timeout=30)
    bad_history = await _agent(stack, "history", b"conv-\xc3", timeout=30)

    assert _error_lines(asked) == [
        "error: the message is not valid UTF-8: invalid UTF-8 byte 0xe9 at character 4"
    ]
    assert _error_lines(sent) == [
        "error: the message is not valid UTF-8: invalid UTF-8 byte 0xff at character 4"
    ]
    assert _error_lines(bad_id) == [
        "error: the conversation id is not valid UTF-8: invalid UTF-8 byte 0xff at character 6"
    ]
    assert "invalid UTF-8 byte 0xc3 at character 6" in bad_history.stderr
    for result in (asked, sent, bad_id, bad_history):
        assert result.returncode == 1 and result.stdout == "" and _no_traceback(result)
        assert len(result.stderr.splitlines()) == 1

    # A chat line with a bad byte is refused with the same line, and the chat goes on.
    chat = await asyncio.to_thread(
        subprocess.run,
        [AGENT, "chat"],
        env=_agent_env(stack),
        input=b"bad \xff line\n/exit\n",
        capture_output=True,
        timeout=60,
        check=False,
    )
    stderr = chat.stderr.decode()
    assert chat.returncode == 0, stderr
    assert "error: the message is not valid UTF-8: invalid UTF-8 byte 0xff at character 5" in stderr
    assert "resume with" in chat.stdout.decode() and "Traceback" not in stderr


async def test_ctrl_c_prints_interrupted_and_exits_130(stack: Stack) -> None:
    """While a message waits for its answer, and while chat waits for a line: no traceback, no
    hang (asyncio used to wait for the thread reading the line, and send for an unsettled start)."""
    nobody = f"no-worker-{uuid.uuid4().hex[:8]}"  # the message stays unanswered
    cid = f"conv-interrupt-{uuid.uuid4().hex[:8]}"
    pipes = {"stdout": asyncio.subprocess.PIPE, "stderr": asyncio.subprocess.PIPE}
    sending = await asyncio.create_subprocess_exec(
        AGENT, "send", cid, "hello?", env=_agent_env(stack, nobody), **pipes
    )
    handle = stack.client("orchestrator").get_workflow_handle(cid)
    for _ in range(300):
        with contextlib.suppress(RPCError):
            await handle.describe()
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # now waiting for the update's answer
    sending.send_signal(signal.SIGINT)
    _, stderr = await asyncio.wait_for(sending.communicate(), timeout=20)
    assert (sending.returncode, stderr.decode().strip()) == (130, "interrupted")

    chatting = await asyncio.create_subprocess_exec(
        AGENT,
        "chat",
        env=_agent_env(stack),
        stdin=asyncio.subprocess.PIPE,  # left open: chat waits for a line
        **pipes,
    )
    assert chatting.stdout is not None
    banner = await asyncio.wait_for(chatting.stdout.readline(), timeout=30)
    assert banner.startswith(b"conversation ")
    await asyncio.sleep(0.5)
    chatting.send_signal(signal.SIGINT)
    _, stderr = await asyncio.wait_for(chatting.communicate(), timeout=20)
    assert (chatting.returncode, stderr.decode().strip()) == (130, "interrupted")


async def test_ending_twice_says_already_ended(
    stack: Stack, orchestrator: Orchestrator, fake_model: FakeModelServer
) -> None:
    fake_model.script(completion("Hello."))
    cid = f"conv-end-twice-{uuid.uuid4().hex[:8]}"
    await orchestrator.conversations.send(cid, "hi")

    first = await _agent(stack, "end", cid)
    second = await _agent(stack, "end", cid)
    assert first.returncode == 0 and f"conversation {cid} ended" in first.stdout
    # Exit 0: the conversation is ended, as asked; a retried `end` in a script is not a failure.
    assert second.returncode == 0, second.stderr
    assert f"conversation {cid} has already ended · 25 tokens" in second.stdout
    assert "no such conversation" not in second.stdout + second.stderr

    refreshed = await _agent(stack, "refresh", cid)
    assert refreshed.returncode == 1
    assert _error_lines(refreshed) == [f"error: conversation {cid} has already ended"]
    unknown = await _agent(stack, "end", "conv-never-existed")
    assert unknown.returncode == 1 and "no such conversation" in unknown.stderr


async def test_oversized_or_invalid_message_is_refused_before_anything_is_sent(
    stack: Stack, orchestrator: Orchestrator
) -> None:
    """A 3 MB message used to start the conversation and fail its workflow tasks over and over
    (PAYLOADS_TOO_LARGE)."""
    conversations = orchestrator.conversations
    for text, reason in [
        ("x" * 3_000_000, f"3000000 bytes of UTF-8; the limit is {MAX_MESSAGE_BYTES} bytes"),
        ("é" * (MAX_MESSAGE_BYTES // 2 + 1), "the limit is 262144 bytes (256 KiB)"),
        ("lone \ud800 surrogate", "unpaired surrogate U+D800 at character 6"),
    ]:
        cid = f"conv-refused-{uuid.uuid4().hex[:8]}"
        with pytest.raises(InvalidMessageError, match=re.escape(reason)):
            await conversations.send(cid, text)
        with pytest.raises(RPCError) as missing:
            await conversations.handle(cid).describe()
        assert missing.value.status == RPCStatusCode.NOT_FOUND
    assert issubclass(InvalidMessageError, ValueError)
    with pytest.raises(InvalidMessageError, match="message id is not valid UTF-8"):
        await conversations.send("conv-refused-id", "hello", message_id="retry-\udcff")

    # Through the CLI (argv cannot carry 300 KB in one argument, a chat line can): one line.
    chat = await _agent(stack, "chat", input="y" * 300_000 + "\n/exit\n")
    assert chat.returncode == 0 and _no_traceback(chat)
    assert _error_lines(chat) == [
        "error: the message is 300000 bytes of UTF-8; the limit is 262144 bytes (256 KiB)"
    ]


async def test_refresh_lists_tools_and_unavailable_endpoints(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    async with custom_orchestrator(
        stack, fake_model, tool_endpoints=[IT_ENDPOINT, FINANCE_ENDPOINT, "no-such-tools"]
    ) as conversations:
        fake_model.script(completion("Hi."))
        cid = f"conv-refresh-{uuid.uuid4().hex[:8]}"
        await conversations.send(cid, "hello")

        as_json = await _agent(stack, "refresh", cid, "--json")
        assert as_json.returncode == 0, as_json.stderr
        payload = json.loads(as_json.stdout)
        assert payload["conversation_id"] == cid
        assert {"calculate_roi", "get_ip", "calculator"} <= set(payload["tools"])
        assert payload["unavailable_endpoints"] == ["no-such-tools"]

        text = await _agent(stack, "refresh", cid)
        assert text.returncode == 0, text.stderr
        assert f"conversation {cid}: {len(payload['tools'])} tools" in text.stdout
        assert "  calculate_roi" in text.stdout
        assert "still unavailable: no-such-tools" in text.stdout

    missing = await _agent(stack, "refresh", "conv-never-existed")
    assert missing.returncode == 1 and "no such conversation" in missing.stderr


# ---- core logs during a server restart ----------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def _dev_server(db: Path, port: int, http_port: int) -> AsyncIterator[Client]:
    """A Temporal dev server persisted in `db` (so it can be restarted with its workflows)."""
    server = await asyncio.create_subprocess_exec(
        temporal_binary(),
        "server",
        "start-dev",
        "--headless",
        "--db-filename",
        str(db),
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--http-port",
        str(http_port),
        "--log-level",
        "error",
        "--namespace",
        "orchestrator",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        for _ in range(600):
            try:
                client = await Client.connect(
                    f"127.0.0.1:{port}",
                    namespace="orchestrator",
                    data_converter=pydantic_data_converter,
                )
                break
            except RuntimeError:
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("the dev server did not start")
        yield client
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), timeout=30)


async def test_core_warnings_during_a_server_restart_go_to_stderr(
    tmp_path: Path, fake_model: FakeModelServer
) -> None:
    """The core's retry WARN lines used to be written to stdout, so `--json` did not parse."""
    db, port, http_port = tmp_path / "temporal.db", _free_port(), _free_port()
    task_queue = f"restart-{uuid.uuid4().hex[:8]}"
    cid = f"conv-restart-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": f"127.0.0.1:{port}",
        "TEMPORAL_NAMESPACE": "orchestrator",
        "TEMPORAL_TASK_QUEUE": task_queue,
    }
    output: dict[str, list[bytes]] = {"stdout": [], "stderr": []}

    async def collect(name: str, stream: asyncio.StreamReader | None) -> None:
        assert stream is not None
        while chunk := await stream.readline():
            output[name].append(chunk)

    def everything(name: str) -> str:
        return b"".join(output[name]).decode()

    sending = None
    try:
        async with _dev_server(db, port, http_port) as client:
            # No worker yet: the message waits for its answer while the server goes away.
            sending = await asyncio.create_subprocess_exec(
                AGENT,
                "send",
                cid,
                "still there?",
                "--json",
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            readers = [
                asyncio.create_task(collect("stdout", sending.stdout)),
                asyncio.create_task(collect("stderr", sending.stderr)),
            ]
            handle = client.get_workflow_handle(cid)
            for _ in range(300):
                with contextlib.suppress(RPCError):
                    await handle.describe()
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)

        # The server is down: the CLI's client retries, and the core warns about it (on
        # whichever stream it writes to).
        for _ in range(300):
            if "retried" in everything("stdout") + everything("stderr"):
                break
            await asyncio.sleep(0.1)

        fake_model.script(completion("Yes, back after the restart."))
        async with _dev_server(db, port, http_port) as client:
            worker = build_orchestrator_worker(
                client,
                task_queue=task_queue,
                settings=orchestrator_settings(tool_endpoints=[]),
                llm_settings=fake_llm_settings(fake_model),
            )
            async with worker:
                await asyncio.wait_for(sending.wait(), timeout=90)
                await asyncio.gather(*readers)
    finally:
        if sending is not None and sending.returncode is None:
            sending.kill()
            await sending.wait()

    stdout, stderr = everything("stdout"), everything("stderr")
    assert sending.returncode == 0, stderr
    assert "gRPC call execute_multi_operation retried" in stderr
    assert "warning" in stderr.lower() and "Traceback" not in stderr
    payload = json.loads(stdout)  # nothing but the answer on stdout
    assert payload["answer"] == "Yes, back after the restart."


async def test_an_operator_chooses_the_turn_s_model_among_the_deployment_s(
    stack: Stack, orchestrator: Orchestrator, fake_model: FakeModelServer
) -> None:
    fake_model.script(completion("chosen model here"))
    chosen = await _agent(stack, "ask", "--json", "--model", "openai/fake-model", "hello")
    assert chosen.returncode == 0, chosen.stderr
    turn = json.loads(chosen.stdout)
    assert turn["answer"] == "chosen model here"
    assert "model chosen for this turn: openai/fake-model" in turn["notes"]
    # A model the deployment does not have fails the turn with the list it has; nothing is asked.
    asked = len(fake_model.chat_requests())
    unknown = await _agent(stack, "ask", "--model", "openai/not-ours", "hello")
    assert unknown.returncode == 1 and _no_traceback(unknown)
    assert "model 'openai/not-ours' is not one of this deployment's models" in (
        unknown.stdout + unknown.stderr
    )
    assert len(fake_model.chat_requests()) == asked
    spaced = await _agent(stack, "ask", "--model", "two words", "hello")
    assert _error_lines(spaced) == [
        "error: --model: the model name must be 1 to 200 characters without spaces"
    ]
    gateway = await _agent(stack, "ask", "--gateway", "http://127.0.0.1:9", "--model", "m", "hi")
    assert _error_lines(gateway) == [
        "error: --model is for operators, straight to Temporal: leave out --gateway"
    ]
