"""MCP servers as team tool sources, on the real stack: real dev server, Nexus endpoints, workers
and real MCP servers (mcp-server-time from PyPI, the IT notebook, and tests/support's lab
servers) over stdio with the official SDK. The model is the only stand-in.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from infrastructure.setup import EndpointDefinition, ensure_endpoint
from shared.manifest import load_manifest
from shared.mcp_client import BREAKER_FAILURES, McpConnections, McpUnavailableError
from shared.mcp_session import JOURNAL_QUERY, JournalEntry, mcp_session_workflow_id
from shared.mcp_tools import McpTool, mcp_tool, publish_mcp_servers
from shared.tools import ToolContext, ToolRegistry
from shared.worker import build_manifest_worker
from tests.conftest import (
    IT_ENDPOINT,
    Orchestrator,
    Stack,
    custom_orchestrator,
)
from tests.support.fake_llm import FakeModelServer, completion
from tests.support.gateway import dev_server_address
from tests.support.team_process import serving, start_team_worker, stop_team_worker, wait_for_file

ROOT = Path(__file__).resolve().parents[1]
LAB_DIR = ROOT / "tests" / "support" / "mcp_lab"
LAB = load_manifest(LAB_DIR / "team.toml")
LAB_TOKEN = f"lab-secret-{uuid.uuid4().hex}"


def _conversation() -> str:
    return f"mcp-{uuid.uuid4().hex[:10]}"


async def test_mcp_tools_are_discovered_with_their_real_schemas(stack: Stack) -> None:
    catalog = (await stack.list_tools([IT_ENDPOINT])).catalogs[0]
    specs = {spec.name: spec for spec in catalog.tools}
    # Python tools and MCP tools side by side, in one catalog.
    assert {"track_ip", "get_current_time", "convert_time", "add_note", "list_notes"} <= set(specs)
    time_schema = specs["get_current_time"].parameters
    assert time_schema["required"] == ["timezone"]
    assert "IANA timezone" in time_schema["properties"]["timezone"]["description"]
    assert specs["add_note"].parameters["properties"]["text"]["maxLength"] == 2000
    assert specs["clear_notes"].approval.mode == "always"
    assert specs["get_current_time"].service == "it"


async def test_an_mcp_tool_answers_through_nexus(stack: Stack) -> None:
    outcome = await stack.execute_one(IT_ENDPOINT, "get_current_time", timezone="Asia/Tokyo")
    assert outcome.ok, outcome.error
    assert outcome.output["timezone"] == "Asia/Tokyo"
    converted = await stack.execute_one(
        IT_ENDPOINT,
        "convert_time",
        source_timezone="UTC",
        time="12:00",
        target_timezone="Asia/Kolkata",
    )
    assert converted.ok, converted.error
    assert converted.output["target"]["datetime"].endswith("17:30:00+05:30")


async def test_bad_arguments_are_a_bad_request_naming_the_field(stack: Stack) -> None:
    missing = await stack.execute_one(IT_ENDPOINT, "get_current_time")
    assert missing.error_kind == "bad_request"
    assert "'timezone' is a required property" in (missing.error or "")
    wrong = await stack.execute_one(IT_ENDPOINT, "add_note", text=7)
    assert wrong.error_kind == "bad_request"
    assert "'text': 7 is not of type 'string'" in (wrong.error or "")


async def test_the_server_s_own_refusal_reaches_the_caller(stack: Stack) -> None:
    outcome = await stack.execute_one(IT_ENDPOINT, "get_current_time", timezone="Mars/Olympus")
    assert not outcome.ok
    assert outcome.error_kind == "failed"
    assert "Mars/Olympus" in (outcome.error or "")


async def test_each_conversation_has_its_own_notebook(stack: Stack) -> None:
    first, second = _conversation(), _conversation()
    for conversation, text in ((first, "VPN down"), (first, "restarted gw-2"), (second, "other")):
        added = await stack.execute_one(
            IT_ENDPOINT, "add_note", text=text, _conversation_id=conversation
        )
        assert added.ok, added.error
    listed = await stack.execute_one(IT_ENDPOINT, "list_notes", _conversation_id=first)
    assert [n["text"] for n in listed.output["notes"]] == ["VPN down", "restarted gw-2"]
    other = await stack.execute_one(IT_ENDPOINT, "list_notes", _conversation_id=second)
    assert [n["text"] for n in other.output["notes"]] == ["other"]
    # What a rebuild replays: the state-building calls, once each, in order.
    journal = await (
        stack.client("it")
        .get_workflow_handle(mcp_session_workflow_id("notebook", first))
        .query(JOURNAL_QUERY, result_type=list[JournalEntry])
    )
    assert [entry.arguments["text"] for entry in journal] == ["VPN down", "restarted gw-2"]


async def test_a_gated_mcp_tool_is_refused_at_the_team_without_approval(stack: Stack) -> None:
    outcome = await stack.execute_one(IT_ENDPOINT, "clear_notes", _conversation_id=_conversation())
    assert outcome.error_kind == "unauthenticated"
    assert "approval" in (outcome.error or "")


async def test_a_conversation_uses_a_tool_that_only_an_mcp_server_has(
    orchestrator: Orchestrator, fake_model: FakeModelServer
) -> None:
    fake_model.script(
        completion(tool_calls=[("get_current_time", {"timezone": "Europe/Paris"})]),
        completion("It is late in Paris."),
    )
    result = await orchestrator.conversations.send(_conversation(), "What time is it in Paris?")
    assert result.ok, result.error
    assert result.answer == "It is late in Paris."
    [call] = result.tool_calls
    assert (call.name, call.service, call.ok) == ("get_current_time", "it", True)
    assert call.result["timezone"] == "Europe/Paris"


@pytest.fixture(scope="module")
async def lab(stack: Stack) -> AsyncIterator[None]:
    """The lab team in this process, on its manifest's task queue and endpoint, with its HTTP
    MCP server running and the secret it checks in this process's environment."""
    await ensure_endpoint(
        stack.client("orchestrator"),
        EndpointDefinition(name=LAB.endpoint, namespace=LAB.namespace, task_queue=LAB.task_queue),
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(
        MCP_LAB_URL=f"http://127.0.0.1:{port}/mcp",
        MCP_LAB_TOKEN=LAB_TOKEN,
        MCP_LAB_GATE_DIR=os.environ.get("MCP_LAB_GATE_DIR", "/nonexistent"),
    )
    server = _start_directory(port)
    try:
        await _accepting(port)
        worker = await build_manifest_worker(
            stack.client(LAB.namespace), LAB, fast_path_budget=timedelta(0)
        )
        async with worker:
            yield
    finally:
        server.terminate()
        server.wait(timeout=10)


def _start_directory(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.mcp_lab_server", "directory", str(port)], cwd=ROOT
    )


async def _accepting(port: int) -> None:
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise AssertionError(f"nothing listens on port {port}")


async def test_per_user_headers_reach_an_http_mcp_server_and_the_secret_stays_out_of_history(
    stack: Stack, lab: None, fake_model: FakeModelServer
) -> None:
    async with custom_orchestrator(stack, fake_model, tool_endpoints=[LAB.endpoint]) as client:
        answers = {}
        for user in ("alice", "bob"):
            fake_model.script(completion(tool_calls=[("whoami", {})]), completion("checked"))
            conversation = _conversation()
            result = await client.send(conversation, "who am I?", user=user)
            assert result.ok, result.error
            answers[user] = result.tool_calls[0].result
            histories = [
                await stack.client("orchestrator")
                .get_workflow_handle(conversation)
                .fetch_history(),
                *[
                    await stack.client(LAB.namespace)
                    .get_workflow_handle(execution.id)
                    .fetch_history()
                    async for execution in stack.client(LAB.namespace).list_workflows(
                        f"WorkflowId STARTS_WITH 'tool-{conversation}'"
                    )
                ],
            ]
            assert len(histories) == 2
            for history in histories:
                assert LAB_TOKEN not in history.to_json()
    assert answers == {
        "alice": {"user": "alice", "token_ok": True},
        "bob": {"user": "bob", "token_ok": True},
    }


async def test_a_crashed_hung_or_garbled_server_is_unavailable_and_the_turn_goes_on(
    stack: Stack, lab: None, fake_model: FakeModelServer
) -> None:
    fake_model.script(
        completion(tool_calls=[("explode", {}), ("stall", {}), ("babble", {})]),
        completion("Those tools are down; carrying on."),
    )
    async with custom_orchestrator(stack, fake_model, tool_endpoints=[LAB.endpoint]) as client:
        result = await client.send(_conversation(), "try the lab tools")
    assert result.ok, result.error
    assert result.answer == "Those tools are down; carrying on."
    records = {record.name: record for record in result.tool_calls}
    assert set(records) == {"explode", "stall", "babble"}
    for name, source in (("explode", "crashy"), ("stall", "stuck"), ("babble", "noisy")):
        assert not records[name].ok
        assert f"MCP server '{source}' is unavailable" in str(records[name].result)
    # The model was told, in the tool messages of its next step.
    told = [m for m in fake_model.chat_requests()[-1]["messages"] if m["role"] == "tool"]
    assert all("is unavailable" in m["content"] for m in told)


async def test_a_stateful_session_is_rebuilt_and_exactly_once_across_a_worker_kill(
    stack: Stack, lab: None, fake_model: FakeModelServer, tmp_path: Path
) -> None:
    """The worker holding the conversation's MCP session is SIGKILLed while a call is inside the
    server. A new worker rebuilds the session from the journal, the call runs once more there,
    and the list holds every item exactly once."""
    task_queue = f"mcp-lab-kill-{uuid.uuid4().hex[:6]}"
    endpoint = f"mcp-lab-kill-{uuid.uuid4().hex[:6]}"
    await ensure_endpoint(
        stack.client("orchestrator"),
        EndpointDefinition(name=endpoint, namespace=LAB.namespace, task_queue=task_queue),
    )
    address = dev_server_address(stack)
    worker = start_team_worker(
        "mcp_lab", address, LAB.namespace, task_queue, tmp_path, MCP_LAB_GATE_DIR=str(tmp_path)
    )
    conversation = _conversation()
    try:
        await serving(stack, endpoint)
        async with custom_orchestrator(
            stack, fake_model, tool_endpoints=[endpoint], tool_timeout_seconds=120
        ) as client:
            fake_model.script(
                completion(tool_calls=[("append", {"item": "first"})]), completion("added")
            )
            first = await client.send(conversation, "add first")
            assert first.ok, first.error
            assert first.tool_calls[0].ok, first.tool_calls[0].result
            fake_model.script(
                completion(tool_calls=[("append", {"item": "second", "hold": True})]),
                completion("added again"),
            )
            turn = asyncio.create_task(client.send(conversation, "add second"))
            await wait_for_file(tmp_path / "entered-second")
            first_pid = int((tmp_path / "entered-second").read_text())
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)
            (tmp_path / "entered-second").unlink()
            (tmp_path / "release-second").write_text("go")
            worker = start_team_worker(
                "mcp_lab",
                address,
                LAB.namespace,
                task_queue,
                tmp_path,
                MCP_LAB_GATE_DIR=str(tmp_path),
            )
            second = await asyncio.wait_for(turn, 120)
            assert second.ok, second.error
            [call] = second.tool_calls
            assert call.ok, call.result
            # A new server process, rebuilt with "first" before "second" ran in it once.
            assert call.result["items"] == ["first", "second"]
            assert call.result["pid"] != first_pid
            fake_model.script(completion(tool_calls=[("items_so_far", {})]), completion("listed"))
            third = await client.send(conversation, "list")
            assert third.tool_calls[0].result["items"] == ["first", "second"]
        # The session workflow (on the team's worker) recorded each call once.
        journal = await _journal(stack.client(LAB.namespace), conversation)
        assert [entry.arguments["item"] for entry in journal] == ["first", "second"]
    finally:
        stop_team_worker(worker)


async def _journal(client: Client, conversation: str) -> list[JournalEntry]:
    handle = client.get_workflow_handle(mcp_session_workflow_id("tally", conversation))
    result: Any = await handle.query(JOURNAL_QUERY, result_type=list[JournalEntry])
    return list(result)


async def test_a_server_failing_three_times_in_a_row_is_not_called_for_a_while() -> None:
    """The worker's breaker per MCP server: after three failures it answers at once."""
    connections = McpConnections(root=ROOT)
    crashy = next(source for source in LAB.mcp_servers if source.name == "crashy")
    try:
        for _ in range(BREAKER_FAILURES):
            connection, _ = await connections.connection(crashy, "", "")
            with pytest.raises(McpUnavailableError):
                await connection.call("explode", {})
            connections.failed(crashy)
        with pytest.raises(McpUnavailableError, match="not calling it for another"):
            await connections.connection(crashy, "", "")
    finally:
        await connections.close()


async def test_a_call_cancelled_inside_the_server_retires_its_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whether the server applied a cancelled call is unknown, so that session is never used
    again: the retry opens a new one (rebuilt from the journal), never applying the call twice."""
    monkeypatch.setenv("MCP_LAB_GATE_DIR", str(tmp_path))
    connections = McpConnections(root=ROOT)
    tally = next(source for source in LAB.mcp_servers if source.name == "tally")
    try:
        connection, opened = await connections.connection(tally, "conversation-1", "")
        assert opened
        call = asyncio.create_task(connection.call("append", {"item": "x", "hold": True}))
        await wait_for_file(tmp_path / "entered-x")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert not connection.alive
        again, reopened = await connections.connection(tally, "conversation-1", "")
        assert reopened and again is not connection
        listed = await again.call("items_so_far", {})
        assert listed.structured_content == {"items": [], "pid": listed.structured_content["pid"]}
    finally:
        await connections.close()


async def test_a_server_down_at_start_is_published_once_it_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The team's other tools do not wait for it: its tools join the catalog when it answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MCP_LAB_URL", f"http://127.0.0.1:{port}/mcp")
    monkeypatch.setenv("MCP_LAB_TOKEN", LAB_TOKEN)
    monkeypatch.setenv("MCP_LAB_GATE_DIR", "/nonexistent")
    connections = McpConnections(root=ROOT, retry_seconds=0.2)
    registry = ToolRegistry(LAB.service)
    server: subprocess.Popen[bytes] | None = None
    try:
        added = await publish_mcp_servers(LAB, registry, connections)
        assert "whoami" not in added and {"append", "explode"} <= set(added)
        server = _start_directory(port)
        for _ in range(300):
            if registry.get("whoami") is not None:
                break
            await asyncio.sleep(0.1)
        assert registry.get("whoami") is not None
    finally:
        await connections.close()
        if server is not None:
            server.terminate()
            server.wait(timeout=10)


async def test_two_workers_serving_one_conversation_keep_the_journal_s_order(
    stack: Stack, lab: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Worker A's call is inside the server when worker B applies and records another call of
    the same conversation. A's record is refused (its session's order is no longer the
    journal's), A's session is retired, and the call runs again in a session rebuilt in the
    journal's order."""
    monkeypatch.setenv("MCP_LAB_GATE_DIR", str(tmp_path))
    conversation = _conversation()
    workers = [McpConnections(root=ROOT), McpConnections(root=ROOT)]
    try:
        first, second = [await _tally_append(connections) for connections in workers]

        def context(call_id: str) -> ToolContext:
            return ToolContext(
                call_id=call_id,
                conversation_id=conversation,
                namespace=LAB.namespace,
                task_queue=LAB.task_queue,
                client=stack.client(LAB.namespace),
            )

        await first.invoke({"item": "a"}, context("call-a"))
        held = asyncio.create_task(first.invoke({"item": "x", "hold": True}, context("call-x")))
        await wait_for_file(tmp_path / "entered-x")
        first_pid = int((tmp_path / "entered-x").read_text())
        await second.invoke({"item": "y"}, context("call-y"))  # rebuilds [a], records y
        (tmp_path / "release-x").write_text("go")
        answered = await held
        # A's record was refused, its session retired, and the call applied once to a new
        # session rebuilt in the journal's order.
        assert answered["items"] == ["a", "y", "x"]
        assert answered["pid"] != first_pid
        journal = await _journal(stack.client(LAB.namespace), conversation)
        assert [entry.call_id for entry in journal] == ["call-a", "call-y", "call-x"]
    finally:
        for connections in workers:
            await connections.close()


async def _tally_append(connections: McpConnections) -> McpTool:
    tally = next(source for source in LAB.mcp_servers if source.name == "tally")
    probe, _ = await connections.connection(tally, "listing", "")
    [append] = [tool for tool in await probe.list_tools() if tool.name == "append"]
    return mcp_tool(tally, append, connections, LAB.service)
