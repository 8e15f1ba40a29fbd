"""Our tools as an MCP server (`agent mcp` over stdio, the gateway's `/mcp` over streamable HTTP),
driven by the official MCP client (`mcp.Client`) against the real stack: the session's dev
server, Nexus endpoints, team workers and orchestrator worker, and a real gateway process. The
only stand-in is the fake model at its HTTP boundary (and Finance's demo quotes).
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from orchestrator.mcp_server import AgentMcp, McpSettings
from orchestrator.models import Decision
from orchestrator.workflows import ConversationWorkflow
from tests.conftest import (
    IT_ENDPOINT,
    ORCHESTRATOR_TASK_QUEUE,
    Orchestrator,
    Stack,
    custom_orchestrator,
)
from tests.support.fake_llm import FakeModelServer, completion
from tests.support.gateway import GatewayServer, gateway_fixture  # noqa: F401
from tests.support.histories import record_if_requested
from tests.test_cli import AGENT
from tests.test_faults import FLAKY_ENDPOINT, FlakyService, flaky_finance  # noqa: F401


def _user(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


@asynccontextmanager
async def _over_http(gateway: GatewayServer, key: str) -> AsyncIterator[Client]:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=120)
    async with http:
        transport = streamable_http_client(f"{gateway.url}/mcp", http_client=http)
        async with Client(transport) as client:
            yield client


def _stdio(stack: Stack, user: str) -> StdioServerParameters:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TEMPORAL_", "ORCHESTRATOR_", "AGENT_"))
    }
    env.update(
        TEMPORAL_ADDRESS=str(stack.env.client.service_client.config.target_host),
        TEMPORAL_NAMESPACE="orchestrator",
        TEMPORAL_TASK_QUEUE=ORCHESTRATOR_TASK_QUEUE,
        AGENT_USER=user,
        LOG_LEVEL=os.environ.get("LOG_LEVEL", "WARNING"),
    )
    return StdioServerParameters(command=AGENT, args=["mcp"], env=env)


def _text(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


def _tools(listed: types.ListToolsResult) -> dict[str, types.Tool]:
    return {tool.name: tool for tool in listed.tools}


async def test_stdio_lists_real_schemas_and_calls_stock_price(
    stack: Stack, orchestrator: Orchestrator
) -> None:
    """`agent mcp` as an MCP client runs it: team tools with their real JSON schemas plus
    ask_agent; stock_price answered by Finance over Nexus; bad arguments and an unknown tool are
    clear tool errors, never a traceback."""
    user = _user("stdio")
    async with Client(_stdio(stack, user)) as client:
        tools = _tools(await client.list_tools())
        assert {"stock_price", "calculate_roi", "submit_expense", "ask_agent"} <= set(tools)
        ticker = tools["stock_price"].input_schema["properties"]["ticker"]
        assert ticker["type"] == "string" and "BRK.B" in ticker["description"]
        assert tools["stock_price"].input_schema["required"] == ["ticker"]
        centre = tools["submit_expense"].input_schema["properties"]["cost_centre"]
        assert centre["pattern"] == r"^CC-\d{3,6}$"
        assert tools["stock_price"].description == "Latest price for a stock ticker."
        assert "approval" in (tools["submit_expense"].description or "")
        assert tools["ask_agent"].input_schema["required"] == ["message"]

        quote = await client.call_tool("stock_price", {"ticker": "aapl"})
        assert not quote.is_error, _text(quote)
        assert json.loads(_text(quote))["ticker"] == "AAPL"
        assert quote.structured_content is not None
        assert quote.structured_content["ticker"] == "AAPL"

        bad = await client.call_tool("stock_price", {"ticker": "not a ticker"})
        assert bad.is_error
        assert "bad_request" in _text(bad) and "ticker" in _text(bad)
        assert "Traceback" not in _text(bad)

        unknown = await client.call_tool("no_such_tool", {})
        assert unknown.is_error and "unknown tool 'no_such_tool'" in _text(unknown)


async def test_gateway_mcp_calls_stock_price_as_the_key_user(
    gateway: GatewayServer, orchestrator: Orchestrator
) -> None:
    """Over the gateway's /mcp with an API key: the call runs in the key user's tools
    conversation, recorded there as a turn like any other."""
    user = _user("http")
    key = gateway.create_key(user)
    async with _over_http(gateway, key) as client:
        tools = _tools(await client.list_tools())
        assert "stock_price" in tools and "ask_agent" in tools
        quote = await client.call_tool("stock_price", {"ticker": "msft"})
        assert not quote.is_error, _text(quote)
        assert quote.structured_content is not None
        assert quote.structured_content["ticker"] == "MSFT"
        missing = await client.call_tool("stock_price", {})
        assert missing.is_error and "ticker" in _text(missing)

    turns = await orchestrator.conversations.recent_turns(f"mcp-tools-{user}")
    calls = [call for turn in turns for call in turn.tool_calls]
    assert [(c.name, c.service, c.ok) for c in calls] == [
        ("stock_price", "finance", True),
        ("stock_price", "finance", False),
    ]
    assert calls[0].args == {"ticker": "msft"}


async def test_ask_agent_runs_a_turn_and_continues_it(
    gateway: GatewayServer, fake_model: FakeModelServer
) -> None:
    user = _user("ask")
    key = gateway.create_key(user)
    fake_model.script(
        completion(tool_calls=[("stock_price", {"ticker": "NVDA"})]),
        completion("NVDA is quoted."),
        completion("You asked about NVDA."),
    )
    async with _over_http(gateway, key) as client:
        first = await client.call_tool("ask_agent", {"message": "What is NVDA at?"})
        assert not first.is_error, _text(first)
        assert first.structured_content is not None
        conversation_id = first.structured_content["conversation_id"]
        assert first.structured_content["answer"] == "NVDA is quoted."
        assert [c["name"] for c in first.structured_content["tool_calls"]] == ["stock_price"]
        assert conversation_id in _text(first)

        second = await client.call_tool(
            "ask_agent", {"message": "What did I ask?", "conversation_id": conversation_id}
        )
        assert not second.is_error, _text(second)
        assert second.structured_content is not None
        assert second.structured_content["conversation_id"] == conversation_id
        assert second.structured_content["answer"] == "You asked about NVDA."
    # The second turn's model step saw the first turn: the same conversation.
    last = fake_model.chat_requests()[-1]["messages"]
    assert any(m["role"] == "user" and m["content"] == "What is NVDA at?" for m in last)

    # The conversation is the key user's: it is in their list, and nobody else can continue it.
    async with gateway.client(key) as http:
        listed = (await http.get("/v1/conversations")).json()["conversations"]
    assert conversation_id in [c["conversation_id"] for c in listed]
    other = gateway.create_key(_user("other"))
    async with _over_http(gateway, other) as client:
        refused = await client.call_tool(
            "ask_agent", {"message": "hi", "conversation_id": conversation_id}
        )
        assert refused.is_error and "no conversation" in _text(refused)
        empty = await client.call_tool("ask_agent", {"message": "  "})
        assert empty.is_error and "empty" in _text(empty)


async def test_gated_call_waits_for_a_decision(
    gateway: GatewayServer, orchestrator: Orchestrator
) -> None:
    """submit_expense over 500 waits for a person's approval, as a model's call would; the
    client is told which command decides it, and gets the result once approved."""
    user = _user("gated")
    key = gateway.create_key(user)
    conversation_id = f"mcp-tools-{user}"
    told: list[str] = []
    asked = asyncio.Event()

    async def progress(_: float, __: float | None, message: str | None) -> None:
        told.append(message or "")
        asked.set()

    async def approve() -> None:
        # The client is told first (a progress notification naming the command), then decides.
        await asyncio.wait_for(asked.wait(), timeout=120)
        status = await orchestrator.conversations.status(conversation_id)
        pending = status.pending_approvals
        assert [p.tool for p in pending] == ["submit_expense"]
        assert f"agent approve {conversation_id} {pending[0].call_id}" in told[0]
        await orchestrator.conversations.decide(
            conversation_id,
            Decision(call_id=pending[0].call_id, verdict="approve", approver="boss", reason="ok"),
        )

    async with _over_http(gateway, key) as client:
        await client.list_tools()  # starts the tools conversation
        args = {"amount": "750", "currency": "EUR", "cost_centre": "CC-1001", "reason": "offsite"}
        call = asyncio.ensure_future(
            client.call_tool("submit_expense", args, progress_callback=progress)
        )
        await approve()
        result = await call
    assert not result.is_error, _text(result)
    assert json.loads(_text(result))["amount"] in ("750", "750.00", 750)
    turns = await orchestrator.conversations.recent_turns(conversation_id)
    approval = turns[-1].tool_calls[0].approval
    assert approval is not None and approval.approver == "boss"
    # The direct calls' path replays deterministically (and is kept for the replay suite).
    await orchestrator.conversations.end(conversation_id)
    handle = orchestrator.conversations.handle(conversation_id)
    await handle.result()
    await record_if_requested(handle, "conversation_direct_calls")
    history = await handle.fetch_history()
    replayer = Replayer(workflows=[ConversationWorkflow], data_converter=pydantic_data_converter)
    assert (await replayer.replay_workflow(history)).replay_failure is None


async def test_mcp_without_a_valid_key_is_401(gateway: GatewayServer) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    key = gateway.create_key(_user("revoked"))
    gateway.revoke_key(key)
    async with httpx.AsyncClient(base_url=gateway.url, trust_env=False) as http:
        for headers in (
            {},
            {"Authorization": "Bearer agk_000000000000_" + "A" * 43},
            {"Authorization": f"Bearer {key}"},
            {"Authorization": "Basic dXNlcjpwYXNz"},
        ):
            response = await http.post("/mcp", json=body, headers=headers)
            assert response.status_code == 401, (headers, response.text)
            assert response.json()["error"]["code"] == "unauthenticated"
            assert response.headers["www-authenticate"].startswith("Bearer")


async def test_a_team_that_is_down_is_unavailable_then_its_breaker_opens(
    stack: Stack,
    fake_model: FakeModelServer,
    flaky_finance: FlakyService,  # noqa: F811
) -> None:
    """The official client in-process on the same server the gateway mounts: a tool whose team
    went down after discovery is a clear "unavailable" error, and the endpoint's breaker opens
    for MCP calls as it does for the model's."""
    async with custom_orchestrator(
        stack,
        fake_model,
        tool_endpoints=[IT_ENDPOINT, FLAKY_ENDPOINT],
        tool_timeout_seconds=3,
        breaker_failures=1,
        breaker_cooldown_seconds=600,
    ) as conversations:
        agent = AgentMcp(
            conversations=conversations,
            settings=McpSettings(),
        )
        user = _user("down")
        async with Client(agent.server(lambda _: user)) as client:
            assert "stock_price" in _tools(await client.list_tools())
            await flaky_finance.stop()
            down = await client.call_tool("stock_price", {"ticker": "AAPL"})
            assert down.is_error and _text(down).startswith("unavailable: "), _text(down)
            skipped = await client.call_tool("stock_price", {"ticker": "AAPL"})
            assert skipped.is_error and "not calling it for another" in _text(skipped)
            assert _text(skipped).startswith("unavailable: ")
