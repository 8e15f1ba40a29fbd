"""The tool SDK and both team services, end to end through real Nexus endpoints."""

from __future__ import annotations

import uuid
from decimal import Decimal

from temporalio.service import RPCError, RPCStatusCode

from finance_service.tools import registry as finance_registry
from it_service.tools import registry as it_registry
from shared.tools import ToolCall, tool_workflow_id
from tests.conftest import (
    CANARY_ENDPOINT,
    FINANCE_ENDPOINT,
    IT_ENDPOINT,
    Stack,
    eventually,
)


async def test_list_tools_returns_both_catalogs(stack: Stack) -> None:
    result = await stack.list_tools([IT_ENDPOINT, FINANCE_ENDPOINT])
    by_service = {catalog.service: catalog for catalog in result.catalogs}
    assert set(by_service) == {"it", "finance"}
    # IT publishes its Python registry and its MCP servers' tools (tests/test_mcp_sources.py).
    mcp_tools = {"get_current_time", "convert_time", "add_note", "list_notes", "clear_notes"}
    # ... and its triage agent (shared.agents), a tool whose calls run the team's own loop.
    assert {t.name for t in by_service["it"].tools} == set(it_registry.names()) | mcp_tools | {
        "it_triage"
    }
    triage = next(t for t in by_service["it"].tools if t.name == "it_triage")
    assert triage.kind == "agent" and triage.parameters["required"] == ["task"]
    assert triage.output_schema is not None and "answer" in triage.output_schema["properties"]
    assert {t.name for t in by_service["finance"].tools} == set(finance_registry.names())
    roi = next(t for t in by_service["finance"].tools if t.name == "calculate_roi")
    assert roi.parameters["required"] == ["principal", "rate", "years"]
    assert roi.description.startswith("Compound growth")
    assert roi.timeout_seconds == 5


async def test_every_tool_round_trips(stack: Stack) -> None:
    conversation = f"conv-{uuid.uuid4()}"
    arguments = {
        "get_ip": {},
        "jira_metrics": {"project": "OPS"},
        "set_jira_project": {"project": "OPS"},
        "track_ip": {"ip": "192.0.2.7", "label": "vpn"},
        "get_ip_history": {},
        "stock_price": {"ticker": "aapl"},
        "calculate_roi": {"principal": "1000", "rate": 7, "years": 2},
        # Under its approval threshold; create_ticket always needs approval (tests/test_approvals
        # and tests/test_team_write_tools run it with one).
        "submit_expense": {
            "amount": "42.00",
            "currency": "EUR",
            "cost_centre": "CC-1001",
            "reason": "taxi",
        },
        "list_expenses": {},
    }
    assert set(arguments) | {"create_ticket"} == set(it_registry.names()) | set(
        finance_registry.names()
    )
    for tool, args in arguments.items():
        endpoint = IT_ENDPOINT if it_registry.get(tool) else FINANCE_ENDPOINT
        outcome = await stack.execute_one(endpoint, tool, _conversation_id=conversation, **args)
        assert outcome.ok, f"{tool}: {outcome.error}"
        assert outcome.output is not None

    history = await stack.execute_one(IT_ENDPOINT, "get_ip_history", _conversation_id=conversation)
    assert [a["ip"] for a in history.output["addresses"]] == ["192.0.2.7"]
    quote = await stack.execute_one(FINANCE_ENDPOINT, "stock_price", ticker="msft")
    assert quote.output["ticker"] == "MSFT"
    assert quote.output["source"] == "demo" and "demo data" in quote.output["note"]


async def test_calculate_roi_is_exact_decimal(stack: Stack) -> None:
    outcome = await stack.execute_one(
        FINANCE_ENDPOINT, "calculate_roi", principal="1000.10", rate="0.1", years=3
    )
    assert outcome.ok, outcome.error
    expected = Decimal("1000.10") * Decimal("1.001") ** 3
    assert outcome.output["final_value"] == str(expected.quantize(Decimal("0.01")))
    assert outcome.output["final_value"] == "1003.10"


async def test_bad_arguments_are_bad_request_and_start_nothing(stack: Stack) -> None:
    call = ToolCall(
        call_id=f"bad-{uuid.uuid4()}",
        tool="calculate_roi",
        args={"principal": -5, "rate": 7, "years": 500},
        conversation_id="conv-bad",
    )
    outcome = (await stack.execute(FINANCE_ENDPOINT, call)).outcomes[0]
    assert not outcome.ok
    assert outcome.error_kind == "bad_request"
    assert "'principal'" in (outcome.error or "") and "greater than 0" in (outcome.error or "")
    assert "'years'" in (outcome.error or "")
    await _assert_no_workflow(stack, "finance", tool_workflow_id(call.call_id))


async def test_wrong_types_and_unknown_fields_name_the_field(stack: Stack) -> None:
    outcome = await stack.execute_one(IT_ENDPOINT, "track_ip", ip="not-an-ip", colour="red")
    assert outcome.error_kind == "bad_request"
    assert "'ip'" in (outcome.error or "") and "'colour'" in (outcome.error or "")


async def test_unknown_tool_is_not_found(stack: Stack) -> None:
    call = ToolCall(call_id=f"nf-{uuid.uuid4()}", tool="format_disk", args={})
    outcome = (await stack.execute(IT_ENDPOINT, call)).outcomes[0]
    assert outcome.error_kind == "not_found"
    assert "format_disk" in (outcome.error or "")
    await _assert_no_workflow(stack, "it", tool_workflow_id(call.call_id))


async def test_same_call_id_runs_once(stack: Stack) -> None:
    conversation = f"conv-{uuid.uuid4()}"
    call = ToolCall(
        call_id=f"dup-{uuid.uuid4()}",
        tool="track_ip",
        args={"ip": "198.51.100.1"},
        conversation_id=conversation,
    )
    # Twice in one caller, then again from a different caller: one execution in total.
    result = await stack.execute(IT_ENDPOINT, call, call)
    again = await stack.execute(CANARY_ENDPOINT, call)
    outcomes = [*result.outcomes, *again.outcomes]
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    assert outcomes[0].output == outcomes[1].output == outcomes[2].output

    history = await stack.execute_one(IT_ENDPOINT, "get_ip_history", _conversation_id=conversation)
    assert [a["ip"] for a in history.output["addresses"]] == ["198.51.100.1"]

    query = f"WorkflowId = '{tool_workflow_id(call.call_id)}'"
    count = await eventually(lambda: stack.client("it").count_workflows(query))
    assert count.count == 1


async def test_new_tool_in_registry_is_discovered(stack: Stack) -> None:
    result = await stack.list_tools([IT_ENDPOINT, CANARY_ENDPOINT])
    current, canary = ({t.name for t in c.tools} for c in result.catalogs)
    assert canary - current == {"service_status", "bulk_report", "hold", "grant_access"}
    outcome = await stack.execute_one(CANARY_ENDPOINT, "service_status")
    assert outcome.ok and outcome.output == {"service": "it", "status": "ok"}


async def test_session_state_persists_and_is_isolated(stack: Stack) -> None:
    alice, bob = f"conv-{uuid.uuid4()}", f"conv-{uuid.uuid4()}"
    for ip in ("192.0.2.1", "192.0.2.2"):
        assert (await stack.execute_one(IT_ENDPOINT, "track_ip", ip=ip, _conversation_id=alice)).ok
    assert (
        await stack.execute_one(IT_ENDPOINT, "track_ip", ip="2001:db8::1", _conversation_id=bob)
    ).ok
    await stack.execute_one(
        IT_ENDPOINT, "set_jira_project", project="ALPHA", _conversation_id=alice
    )

    alice_history = await stack.execute_one(IT_ENDPOINT, "get_ip_history", _conversation_id=alice)
    bob_history = await stack.execute_one(IT_ENDPOINT, "get_ip_history", _conversation_id=bob)
    assert [a["ip"] for a in alice_history.output["addresses"]] == ["192.0.2.1", "192.0.2.2"]
    assert [a["ip"] for a in bob_history.output["addresses"]] == ["2001:db8::1"]

    # jira_metrics without a project uses the conversation's project; Bob has none.
    metrics = await stack.execute_one(IT_ENDPOINT, "jira_metrics", _conversation_id=alice)
    assert metrics.ok and metrics.output["project"] == "ALPHA"
    missing = await stack.execute_one(IT_ENDPOINT, "jira_metrics", _conversation_id=bob)
    assert missing.error_kind == "failed" and "set_jira_project" in (missing.error or "")


async def test_slow_path_completes_asynchronously(stack: Stack) -> None:
    """The canary endpoint has the fast path off: the plain workflow-run operation must work too."""
    outcome = await stack.execute_one(CANARY_ENDPOINT, "calculate_roi_missing")
    assert outcome.error_kind == "not_found"
    ok = await stack.execute_one(CANARY_ENDPOINT, "jira_metrics", project="OPS")
    assert ok.ok and ok.output["source"] == "demo"


async def _assert_no_workflow(stack: Stack, namespace: str, workflow_id: str) -> None:
    try:
        await stack.client(namespace).get_workflow_handle(workflow_id).describe()
    except RPCError as err:
        assert err.status == RPCStatusCode.NOT_FOUND
    else:
        raise AssertionError(f"workflow {workflow_id} exists but should not")
