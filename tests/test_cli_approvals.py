"""`agent approvals|approve|deny|cancel` and the approval prompt of `agent chat`, as a user runs
them: the real `agent` binary against the test stack and the fake model."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import uuid
from typing import Any

from tests.conftest import FINANCE_ENDPOINT, Orchestrator, Stack, custom_orchestrator
from tests.support.fake_llm import FakeModelServer, completion
from tests.test_cli import AGENT, _agent, _agent_env, _error_lines, _no_traceback

EXPENSE_ARGS = {"amount": "750", "currency": "EUR", "cost_centre": "CC-1001", "reason": "offsite"}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The only line on stderr, which must be an `error:` line (exit 1, no traceback)."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert _no_traceback(result), result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and _error_lines(result) == lines, result.stderr
    return lines[0]


async def _approver(stack: Stack) -> str:
    """Someone the expense policy lets decide: its first named approver, or anyone."""
    catalogs = (await stack.list_tools([FINANCE_ENDPOINT])).catalogs
    spec = next(t for c in catalogs for t in c.tools if t.name == "submit_expense")
    assert spec.approval.gated, "submit_expense should need approval over 500"
    return spec.approval.approvers[0] if spec.approval.approvers else "tester"


async def _agent_as(
    stack: Stack, user: str, *args: str, input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {**_agent_env(stack), "AGENT_USER": user}
    return await asyncio.to_thread(
        subprocess.run,
        [AGENT, *args],
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def _pending_call(stack: Stack, conversation_id: str, timeout: float = 30) -> dict[str, Any]:
    """The call of `conversation_id` that `agent approvals --json` lists, once it does."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        listed = await _agent(stack, "approvals", "--json")
        assert listed.returncode == 0, listed.stderr
        calls = [c for c in json.loads(listed.stdout) if c["conversation_id"] == conversation_id]
        if calls:
            assert len(calls) == 1, calls
            return dict(calls[0])
        assert asyncio.get_running_loop().time() < deadline, "no call waits for approval"
        await asyncio.sleep(0.3)


async def _send_expense_in_background(stack: Stack, cid: str) -> asyncio.subprocess.Process:
    """`agent send --json` of the scripted expense, left running while the test decides."""
    return await asyncio.create_subprocess_exec(
        AGENT,
        "send",
        cid,
        "File my offsite expense: 750 EUR on CC-1001",
        "--json",
        env=_agent_env(stack),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


def _banner_conversation(stdout: str) -> str:
    """The conversation a new `agent chat` made up, from its first line."""
    found = re.search(r"^conversation (\S+)", stdout)
    assert found, stdout
    return found.group(1)


def _script_expense(fake_model: FakeModelServer) -> None:
    fake_model.script(
        completion(tool_calls=[("submit_expense", EXPENSE_ARGS)]),
        completion("Recorded."),
    )


# ---- what works whatever the workflow does ------------------------------------------------------
async def test_bad_decisions_are_one_line_before_anything_is_sent(
    stack: Stack, orchestrator: Orchestrator
) -> None:
    empty_call = await _agent(stack, "approve", "conv-x", "  ")
    assert "call id is invalid" in _one_error_line(empty_call)

    long_reason = await _agent(stack, "deny", "conv-x", "call_1", "--reason", "x" * 2001)
    assert "reason is invalid: string should have at most 2000 characters" in _one_error_line(
        long_reason
    )

    bad_call = await _agent(stack, "approve", "conv-x", b"call-\xff")
    assert _one_error_line(bad_call) == (
        "error: the call id is not valid UTF-8: invalid UTF-8 byte 0xff at character 6"
    )
    bad_id = await _agent(stack, "cancel", b"conv-\xc3")
    assert "conversation id is not valid UTF-8: invalid UTF-8 byte 0xc3" in _one_error_line(bad_id)

    missing_args = await _agent(stack, "approve", "conv-x")
    assert missing_args.returncode == 2 and _no_traceback(missing_args)


async def test_unknown_conversation_is_one_line(stack: Stack, orchestrator: Orchestrator) -> None:
    for command in (
        ["approve", "conv-never-existed", "call_1", "--reason", "ok"],
        ["deny", "conv-never-existed", "call_1", "--json"],
        ["cancel", "conv-never-existed"],
    ):
        result = await _agent(stack, *command)
        assert "no such conversation" in _one_error_line(result), command
        assert result.stdout == ""


async def test_ended_conversation(
    stack: Stack, orchestrator: Orchestrator, fake_model: FakeModelServer
) -> None:
    fake_model.script(completion("Hello."))
    cid = f"conv-approve-ended-{uuid.uuid4().hex[:8]}"
    await orchestrator.conversations.send(cid, "hi")
    await orchestrator.conversations.end(cid)

    approved = await _agent(stack, "approve", cid, "call_1")
    assert _one_error_line(approved) == f"error: conversation {cid} has already ended"

    # Nothing runs, as asked: exit 0, like `agent end` on an ended conversation.
    cancelled = await _agent(stack, "cancel", cid)
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"nothing to cancel: conversation {cid} has already ended" in cancelled.stdout
    as_json = json.loads((await _agent(stack, "cancel", cid, "--json")).stdout)
    assert as_json["cancelled"] is False and as_json["conversation_id"] == cid


async def test_approvals_lists_nothing_for_an_idle_conversation(
    stack: Stack, orchestrator: Orchestrator, fake_model: FakeModelServer
) -> None:
    fake_model.script(completion("Hello."))
    cid = f"conv-approvals-idle-{uuid.uuid4().hex[:8]}"
    await orchestrator.conversations.send(cid, "hi")

    listed = await _agent(stack, "approvals", "--json", "--limit", "50")
    assert listed.returncode == 0 and _no_traceback(listed), listed.stderr
    calls = json.loads(listed.stdout)
    assert isinstance(calls, list)
    assert all(call["conversation_id"] != cid for call in calls)

    text = await _agent(stack, "approvals")
    assert text.returncode == 0, text.stderr
    if not calls:
        assert "no calls are waiting for approval" in text.stdout

    bad_limit = await _agent(stack, "approvals", "--limit", "0")
    assert bad_limit.returncode == 2 and _no_traceback(bad_limit)

    history = json.loads((await _agent(stack, "history", cid, "--json")).stdout)
    assert history["pending_approvals"] == []
    assert "cancelled" not in history["turns"][0]  # only on a cancelled turn


# ---- with the approval gates of the conversation workflow --------------------------------------
async def test_cancel_an_idle_conversation_says_nothing_to_cancel(
    stack: Stack, orchestrator: Orchestrator, fake_model: FakeModelServer
) -> None:
    fake_model.script(completion("Hello."))
    cid = f"conv-cancel-idle-{uuid.uuid4().hex[:8]}"
    await orchestrator.conversations.send(cid, "hi")

    text = await _agent(stack, "cancel", cid, "--reason", "changed my mind")
    assert text.returncode == 0, text.stderr
    assert f"nothing to cancel: conversation {cid} has no turn running" in text.stdout
    as_json = await _agent(stack, "cancel", cid, "--json")
    assert as_json.returncode == 0, as_json.stderr
    result = json.loads(as_json.stdout)
    assert (result["conversation_id"], result["cancelled"]) == (cid, False)
    assert result["dropped_approvals"] == []


async def test_approve_from_another_terminal(
    stack: Stack, orchestrator: Orchestrator, fake_model: FakeModelServer
) -> None:
    approver = await _approver(stack)
    _script_expense(fake_model)
    cid = f"conv-approve-{uuid.uuid4().hex[:8]}"
    # FORCE_COLOR makes rich treat the pipe as a terminal: `send` then says what it waits for.
    sending = await asyncio.create_subprocess_exec(
        AGENT,
        "send",
        cid,
        "File my offsite expense: 750 EUR on CC-1001",
        env={**_agent_env(stack), "FORCE_COLOR": "1"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        call = await _pending_call(stack, cid)
        assert (call["tool"], call["service"]) == ("submit_expense", "finance")
        assert call["args"]["cost_centre"] == "CC-1001"
        assert "amount" in call["reason"]
        assert call["expires_at"] > call["requested_at"]

        status = await orchestrator.conversations.status(cid)
        assert status.state == "awaiting_approval"
        assert [p.call_id for p in status.pending_approvals] == [call["call_id"]]

        table = await _agent(stack, "approvals")
        assert table.returncode == 0 and call["call_id"] in table.stdout

        running = await _agent(stack, "history", cid, "--json")
        assert [p["call_id"] for p in json.loads(running.stdout)["pending_approvals"]] == [
            call["call_id"]
        ]
        shown = await _agent(stack, "history", cid)
        assert "waiting for approval" in shown.stdout and "submit_expense" in shown.stdout

        decided = await _agent_as(
            stack,
            "someone",
            "approve",
            cid,
            call["call_id"],
            "--reason",
            "ok",
            "--as",
            approver,
            "--json",
        )
        assert decided.returncode == 0, decided.stderr
        record = json.loads(decided.stdout)
        assert record["call_id"] == call["call_id"] and record["verdict"] == "approve"
        assert (record["approver"], record["reason"]) == (approver, "ok")
        assert record["tool"] == "submit_expense" and record["timed_out"] is False

        stdout, stderr = await asyncio.wait_for(sending.communicate(), timeout=60)
    finally:
        if sending.returncode is None:
            sending.kill()
            await sending.wait()
    out, err = ANSI.sub("", stdout.decode()), ANSI.sub("", stderr.decode())
    assert sending.returncode == 0, err
    assert f"agent approve {cid} {call['call_id']}" in err
    assert "Recorded." in out and f"submit_expense: approved by {approver}" in out

    again = await _agent(stack, "deny", cid, call["call_id"], "--as", approver)
    assert _one_error_line(again).startswith("error: ")

    history = json.loads((await _agent(stack, "history", cid, "--json")).stdout)
    approval = history["tool_calls"][0]["approval"]
    assert (approval["verdict"], approval["approver"], approval["reason"]) == (
        "approve",
        approver,
        "ok",
    )
    assert history["pending_approvals"] == []
    text = await _agent(stack, "history", cid)
    assert f"submit_expense: approved by {approver}" in text.stdout and ": ok" in text.stdout


async def test_deny_from_another_terminal(
    stack: Stack, orchestrator: Orchestrator, fake_model: FakeModelServer
) -> None:
    approver = await _approver(stack)
    _script_expense(fake_model)
    cid = f"conv-deny-{uuid.uuid4().hex[:8]}"
    sending = await _send_expense_in_background(stack, cid)
    try:
        call = await _pending_call(stack, cid)
        denied = await _agent(
            stack, "deny", cid, call["call_id"], "--reason", "too much", "--as", approver
        )
        assert denied.returncode == 0, denied.stderr
        assert f"denied by {approver}" in denied.stdout and "too much" in denied.stdout
        stdout, stderr = await asyncio.wait_for(sending.communicate(), timeout=60)
    finally:
        if sending.returncode is None:
            sending.kill()
            await sending.wait()
    assert b"waiting for approval" not in stderr  # --json: no notices
    payload = json.loads(stdout)
    assert payload["answer"] == "Recorded."
    [record] = payload["tool_calls"]
    assert record["name"] == "submit_expense"
    assert record["approval"]["verdict"] == "deny"
    assert (record["approval"]["approver"], record["approval"]["reason"]) == (approver, "too much")


async def test_chat_approves_inline(
    stack: Stack, orchestrator: Orchestrator, fake_model: FakeModelServer
) -> None:
    approver = await _approver(stack)
    _script_expense(fake_model)
    chat = await _agent_as(
        stack,
        approver,
        "chat",
        input="File my offsite expense: 750 EUR on CC-1001\nmaybe\ny looks fine\n/exit\n",
        timeout=90,
    )
    assert chat.returncode == 0 and _no_traceback(chat), chat.stderr
    assert "approval needed" in chat.stdout and "submit_expense on finance" in chat.stdout
    assert "answer y or n" in chat.stdout  # "maybe" is asked again
    assert f"approved by {approver}" in chat.stdout and "Recorded." in chat.stdout
    assert chat.stdout.count("approval needed") == 1  # each call is asked about once
    cid = _banner_conversation(chat.stdout)

    history = json.loads((await _agent(stack, "history", cid, "--json")).stdout)
    approval = history["tool_calls"][0]["approval"]
    assert (approval["verdict"], approval["approver"], approval["reason"]) == (
        "approve",
        approver,
        "looks fine",
    )


async def test_chat_goes_on_when_the_decision_is_refused(
    stack: Stack, orchestrator: Orchestrator, fake_model: FakeModelServer
) -> None:
    """An approver the policy does not name is refused in one line; the chat keeps waiting, and
    the call is decided elsewhere."""
    approver = await _approver(stack)
    _script_expense(fake_model)
    chatting = await asyncio.create_subprocess_exec(
        AGENT,
        "chat",
        env={**_agent_env(stack), "AGENT_USER": "not-an-approver"},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert chatting.stdin is not None and chatting.stdout is not None
    shown: list[bytes] = []
    try:
        banner = await asyncio.wait_for(chatting.stdout.readline(), timeout=30)
        cid = _banner_conversation(banner.decode())
        chatting.stdin.write(b"File my offsite expense: 750 EUR on CC-1001\n")
        await chatting.stdin.drain()
        # Once the chat shows the call it is prompting: deciding elsewhere now cannot race it.
        while not shown or b"approval needed" not in shown[-1]:
            line = await asyncio.wait_for(chatting.stdout.readline(), timeout=30)
            assert line, b"".join(shown)
            shown.append(line)
        call = await _pending_call(stack, cid)
        # Decided elsewhere first: the chat's own answer is then refused, in one line.
        decided = await _agent(stack, "approve", cid, call["call_id"], "--as", approver)
        assert decided.returncode == 0, decided.stderr
        chatting.stdin.write(b"n no thanks\n/exit\n")
        await chatting.stdin.drain()
        chatting.stdin.close()
        stdout, stderr = await asyncio.wait_for(chatting.communicate(), timeout=60)
    finally:
        if chatting.returncode is None:
            chatting.kill()
            await chatting.wait()
    assert chatting.returncode == 0 and b"Traceback" not in stderr, stderr
    errors = [line for line in stderr.decode().splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert "Recorded." in stdout.decode()
    assert call["call_id"] in b"".join(shown).decode()


async def test_a_message_follows_its_conversation_across_continue_as_new(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    """A run full after one turn continues as new while the turn waits for approval: the
    message's update fails with ConversationContinuedAsNew, and the client sends it again under
    the same id to the next run, which answers it once."""
    approver = await _approver(stack)
    _script_expense(fake_model)
    async with custom_orchestrator(stack, fake_model, max_turns_per_run=1) as conversations:
        cid = f"conv-continued-{uuid.uuid4().hex[:8]}"
        sending = asyncio.create_task(
            conversations.send(cid, "File my offsite expense: 750 EUR on CC-1001")
        )
        call = await _pending_call(stack, cid)
        first_run = (await conversations.handle(cid).describe()).run_id
        decided = await _agent(stack, "approve", cid, call["call_id"], "--as", approver)
        assert decided.returncode == 0, decided.stderr
        result = await asyncio.wait_for(sending, timeout=60)
        assert result.answer == "Recorded."
        assert [c.approval.verdict for c in result.tool_calls if c.approval] == ["approve"]
        runs = [
            execution.run_id
            async for execution in stack.client("orchestrator").list_workflows(
                f"WorkflowId = '{cid}'"
            )
        ]
        assert first_run in runs and len(runs) >= 2, runs
        assert len(fake_model.chat_requests()) == 2  # answered once


async def test_cancel_a_turn_waiting_for_approval(
    stack: Stack, orchestrator: Orchestrator, fake_model: FakeModelServer
) -> None:
    _script_expense(fake_model)
    cid = f"conv-cancel-waiting-{uuid.uuid4().hex[:8]}"
    sending = await _send_expense_in_background(stack, cid)
    try:
        call = await _pending_call(stack, cid)
        cancelled = await _agent(stack, "cancel", cid, "--reason", "wrong trip")
        assert cancelled.returncode == 0, cancelled.stderr
        assert f"cancelled turn 1 of conversation {cid}" in cancelled.stdout
        assert f"dropped approvals: {call['call_id']}" in cancelled.stdout
        stdout, _ = await asyncio.wait_for(sending.communicate(), timeout=60)
    finally:
        if sending.returncode is None:
            sending.kill()
            await sending.wait()
    assert json.loads(stdout)["cancelled"] is True
    listed = json.loads((await _agent(stack, "approvals", "--json")).stdout)
    assert all(c["conversation_id"] != cid for c in listed)
    late = await _agent(stack, "approve", cid, call["call_id"])
    assert _one_error_line(late).startswith("error: ")
    again = await _agent(stack, "cancel", cid, "--json")
    assert json.loads(again.stdout)["cancelled"] is False
