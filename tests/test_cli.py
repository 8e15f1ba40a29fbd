"""The `agent` CLI as a user runs it: a subprocess against the test stack and the fake model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ORCHESTRATOR_TASK_QUEUE, Orchestrator, Stack
from tests.support.fake_llm import FakeModelServer, completion

AGENT = str(Path(sys.executable).parent / "agent")


async def _agent(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    import asyncio

    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": stack.env.client.service_client.config.target_host,
        "TEMPORAL_NAMESPACE": "orchestrator",
        "TEMPORAL_TASK_QUEUE": ORCHESTRATOR_TASK_QUEUE,
        "COLUMNS": "200",
    }
    return await asyncio.to_thread(
        subprocess.run,
        [AGENT, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


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
    assert set(payload["usage"]) == {"prompt_tokens", "completion_tokens", "cost_usd"}
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
