"""The teams' two write tools that need approval, end to end through the real Nexus endpoints.

`create_ticket` (IT, always gated) files a Jira issue; `submit_expense` (Finance, gated over 500)
records an expense in the Finance ledger workflow. The tests check what the teams themselves
enforce: the published policy, the refusal of a call that carries no valid approval (with nothing
started), the idempotency of each effect by call id, and the Finance limits. Jira is a local fake
at the HTTP boundary (tests/support/fake_http.py); settings are read at each execution, and the
workers run in this process, so `monkeypatch.setenv` configures one test.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowExecutionStatus

from finance_service.ledger import ExpenseRequest, LedgerStart
from it_service.jira import (
    DEMO_TICKET_LABEL,
    JiraSettings,
    call_label,
    create_issue,
    demo_ticket,
)
from shared.approval import ApprovalPolicy, Verdict
from shared.caller import ToolOutcome
from shared.tools import ToolCall
from tests.conftest import FINANCE_ENDPOINT, IT_ENDPOINT, Stack
from tests.support.fake_http import FakeHttpServer, Reply, serve
from tests.support.write_tools import (
    approval,
    cost_centre,
    gated_call,
    ledger_entries,
    ledger_listing,
    record_directly,
    tool_workflow_exists,
)

SEARCH_PATH = "/rest/api/3/search/jql"
ISSUE_PATH = "/rest/api/3/issue"


@pytest.fixture(autouse=True)
def isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No Jira settings or tool ledger leak in from the shell or a developer's .env."""
    for name in list(os.environ):
        if name.upper().startswith(("JIRA_", "TOOL_LEDGER")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1")


@pytest.fixture
def jira() -> Iterator[FakeHttpServer]:
    yield from serve()


def configure_jira(monkeypatch: pytest.MonkeyPatch, server: FakeHttpServer) -> None:
    monkeypatch.setenv("JIRA_BASE_URL", server.url + "/")
    monkeypatch.setenv("JIRA_EMAIL", "bot@example.com")
    monkeypatch.setenv("JIRA_API_TOKEN", "jira-token-123")
    monkeypatch.setenv("JIRA_TIMEOUT_SECONDS", "5")


def expense(amount: str, decision: Verdict | None = None, centre: str = "") -> ToolCall:
    return gated_call(
        "submit_expense",
        decision,
        amount=amount,
        currency="EUR",
        cost_centre=centre or cost_centre(),
        reason="team offsite dinner",
    )


def ticket(decision: Verdict | None = "approve", **extra: Any) -> ToolCall:
    return gated_call(
        "create_ticket", decision, project="OPS", summary="VPN drops every hour", **extra
    )


async def run(stack: Stack, endpoint: str, *calls: ToolCall) -> list[ToolOutcome]:
    return (await stack.execute(endpoint, *calls)).outcomes


async def recorded(stack: Stack, call: ToolCall) -> list[dict[str, Any]]:
    return [
        e.model_dump(mode="json")
        for e in await ledger_entries(stack.client("finance"), call.call_id)
    ]


# --- the policies, as data in the catalogs ----------------------------------------------------


async def test_catalogs_publish_the_approval_policies(stack: Stack) -> None:
    result = await stack.list_tools([IT_ENDPOINT, FINANCE_ENDPOINT])
    specs = {tool.name: tool for catalog in result.catalogs for tool in catalog.tools}

    ticket, claim, listing = specs["create_ticket"], specs["submit_expense"], specs["list_expenses"]
    assert ticket.approval == ApprovalPolicy.always() and ticket.requires_approval
    assert claim.requires_approval
    assert claim.approval.model_dump(mode="json") == {
        "mode": "when",
        "conditions": [{"argument": "amount", "op": ">", "value": 500}],
        "approvers": [],
    }
    assert not listing.requires_approval and not listing.approval.gated
    # The arguments the team validates are published too: the gate's condition reads them.
    assert claim.parameters["properties"]["cost_centre"]["pattern"] == r"^CC-\d{3,6}$"
    assert claim.parameters["properties"]["currency"]["enum"] == ["EUR", "USD", "GBP", "CHF"]
    assert ticket.parameters["required"] == ["project", "summary"]


# --- submit_expense -----------------------------------------------------------------------------


@pytest.mark.parametrize("amount", ["120.50", "500.00"])
async def test_an_expense_up_to_the_threshold_runs_without_approval(
    stack: Stack, amount: str
) -> None:
    claim = expense(amount)

    [outcome] = await run(stack, FINANCE_ENDPOINT, claim)

    assert outcome.ok, outcome.error
    assert outcome.output["amount"] == amount and outcome.output["currency"] == "EUR"
    assert outcome.output["call_id"] == claim.call_id
    assert [e["reason"] for e in await recorded(stack, claim)] == ["team offsite dinner"]


async def test_an_approved_expense_over_the_threshold_runs(stack: Stack) -> None:
    claim = expense("750", decision="approve")

    [outcome] = await run(stack, FINANCE_ENDPOINT, claim)

    assert outcome.ok, outcome.error
    assert len(await recorded(stack, claim)) == 1


@pytest.mark.parametrize(
    ("decision", "reason"),
    [
        (None, "needs approval (amount > 500) and the call carries none; nothing was started"),
        ("deny", "needs approval (amount > 500); the call was denied by ada"),
    ],
    ids=["no-approval", "denied"],
)
async def test_an_expense_over_the_threshold_without_an_approve_is_refused(
    stack: Stack, decision: Verdict | None, reason: str
) -> None:
    claim = expense("500.01", decision=decision)

    [outcome] = await run(stack, FINANCE_ENDPOINT, claim)

    assert not outcome.ok
    assert outcome.error_kind == "unauthenticated"
    assert outcome.error == f"tool 'submit_expense' {reason}"
    assert not await tool_workflow_exists(stack.client("finance"), claim)
    assert await recorded(stack, claim) == []


async def test_an_approval_for_another_call_is_refused(stack: Stack) -> None:
    claim = expense("900")
    claim = claim.model_copy(update={"approval": approval("some-other-call")})

    [outcome] = await run(stack, FINANCE_ENDPOINT, claim)

    assert outcome.error_kind == "unauthenticated"
    assert "the approval is for call 'some-other-call'" in (outcome.error or "")
    assert not await tool_workflow_exists(stack.client("finance"), claim)


async def test_the_same_call_records_one_expense(stack: Stack) -> None:
    claim = expense("640", decision="approve")

    # Twice in one probe, then again: the repeats are answered from the first run.
    outcomes = [
        *await run(stack, FINANCE_ENDPOINT, claim, claim),
        *await run(stack, FINANCE_ENDPOINT, claim),
    ]

    assert all(o.ok for o in outcomes), outcomes
    assert len({o.output["recorded_at"] for o in outcomes}) == 1
    assert len(await recorded(stack, claim)) == 1


def ledger_request(centre: str, reason: str = "taxi") -> ExpenseRequest:
    return ExpenseRequest(
        call_id=f"call-{uuid.uuid4()}",
        amount=Decimal("42.00"),
        currency="EUR",
        cost_centre=centre,
        reason=reason,
    )


async def test_the_ledger_records_a_call_id_once_whatever_the_update_id(stack: Stack) -> None:
    """A retried activity reuses its update id; one landing on the ledger's next run (after
    continue-as-new) is no longer deduplicated by Temporal, so the ledger checks the call id."""
    request = ledger_request(cost_centre())
    client = stack.client("finance")

    answers = [
        (await record_directly(client, request, f"{update_id}-{request.call_id}"))[0]
        for update_id in ("record_expense-a", "record_expense-a", "record_expense-b")
    ]

    assert answers[0] == answers[1] == answers[2]
    assert len(await ledger_entries(client, request.call_id)) == 1


async def test_the_ledger_continues_as_new_with_its_expenses_and_totals(stack: Stack) -> None:
    client = stack.client("finance")
    ledger_id = f"test-ledger-{uuid.uuid4()}"  # its own ledger: the shared one runs long
    start = LedgerStart(expenses_per_run=2)
    centre = cost_centre()
    requests = [ledger_request(centre, f"item {n}") for n in range(3)]

    runs = [await record_directly(client, r, f"a-{r.call_id}", ledger_id, start) for r in requests]
    # The first call again, under a new update id, reaching the second run.
    again, latest = await record_directly(
        client, requests[0], f"b-{requests[0].call_id}", ledger_id, start
    )

    first_run = client.get_workflow_handle(ledger_id, run_id=runs[0][1].result_run_id)
    assert (await first_run.describe()).status == WorkflowExecutionStatus.CONTINUED_AS_NEW
    assert (await latest.describe()).status == WorkflowExecutionStatus.RUNNING
    assert again == runs[0][0]
    listing = await ledger_listing(client, ledger_id)
    assert [e.reason for e in listing.expenses] == ["item 2", "item 1", "item 0"]
    assert [(t.cost_centre, t.total, t.count) for t in listing.day_totals] == [
        (centre, Decimal("126.00"), 3)
    ]
    assert listing.recorded_total == 3
    await client.get_workflow_handle(ledger_id).terminate("test over")


async def test_the_per_expense_limit_is_a_clear_final_error(stack: Stack) -> None:
    claim = expense("10000.01", decision="approve")

    [outcome] = await run(stack, FINANCE_ENDPOINT, claim)

    assert not outcome.ok
    assert outcome.error_kind == "failed"
    assert "expense of 10000.01 EUR is over the limit of 10000 per expense" in (outcome.error or "")
    assert await recorded(stack, claim) == []


async def test_the_daily_limit_per_cost_centre_is_enforced(stack: Stack) -> None:
    centre = cost_centre()
    claims = [expense("9000", decision="approve", centre=centre) for _ in range(3)]

    outcomes = await run(stack, FINANCE_ENDPOINT, *claims)

    assert [o.ok for o in outcomes] == [True, True, False], outcomes
    assert f"cost centre {centre} has 18000 EUR recorded today (UTC)" in (outcomes[2].error or "")
    assert "daily limit of 25000" in (outcomes[2].error or "")
    listing = await run(stack, FINANCE_ENDPOINT, gated_call("list_expenses", None, limit=100))
    totals = [t for t in listing[0].output["day_totals"] if t["cost_centre"] == centre]
    assert [(t["total"], t["count"]) for t in totals] == [("18000", 2)]


async def test_list_expenses_shows_the_newest_first(stack: Stack) -> None:
    first, second = expense("10"), expense("20")
    await run(stack, FINANCE_ENDPOINT, first, second)

    [outcome] = await run(stack, FINANCE_ENDPOINT, gated_call("list_expenses", None, limit=2))

    assert outcome.ok, outcome.error
    assert [e["call_id"] for e in outcome.output["expenses"]] == [second.call_id, first.call_id]
    assert outcome.output["recorded_total"] >= 2


# --- create_ticket ------------------------------------------------------------------------------


async def test_a_ticket_is_filed_in_jira_once_with_the_call_label(
    stack: Stack, jira: FakeHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_jira(monkeypatch, jira)
    jira.script(Reply(200, {"issues": []}), Reply(201, {"id": "10001", "key": "OPS-17"}))
    filed = ticket(description="Since Monday.\n\nOnly on Wi-Fi.", priority="High")

    outcomes = [*await run(stack, IT_ENDPOINT, filed), *await run(stack, IT_ENDPOINT, filed)]

    assert outcomes[0] == outcomes[1]
    assert outcomes[0].output == {
        "key": "OPS-17",
        "url": f"{jira.url}/browse/OPS-17",
        "created": True,
        "source": "jira",
        "note": "",
    }
    label = call_label(filed.call_id)
    assert label.startswith("agent-call-") and len(label) == len("agent-call-") + 16
    search, create = jira.requests  # the second execution reached nobody
    assert (search.method, search.path, create.method, create.path) == (
        "POST",
        SEARCH_PATH,
        "POST",
        ISSUE_PATH,
    )
    assert search.json() == {"jql": f'labels = "{label}"', "fields": ["key"], "maxResults": 1}
    assert create.json() == {
        "fields": {
            "project": {"key": "OPS"},
            "summary": "VPN drops every hour",
            "description": {
                "type": "doc",
                "version": 1,
                "content": [
                    {"type": "paragraph", "content": [{"type": "text", "text": "Since Monday."}]},
                    {"type": "paragraph", "content": [{"type": "text", "text": "Only on Wi-Fi."}]},
                ],
            },
            "issuetype": {"name": "Task"},
            "labels": [label],
            "priority": {"name": "High"},
        }
    }


async def test_an_issue_already_labelled_for_the_call_is_returned_not_filed_again(
    jira: FakeHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a retried attempt sees when its first attempt filed the issue but died before
    answering: Jira already has an issue with the call's label."""
    configure_jira(monkeypatch, jira)
    jira.script(Reply(200, {"issues": [{"id": "10001", "key": "OPS-17"}]}))

    result = await create_issue(
        call_id="call-retried",
        project="OPS",
        summary="VPN drops every hour",
        description="",
        issue_type="Task",
        priority=None,
        settings=JiraSettings(),
    )

    assert (result.key, result.created, result.source) == ("OPS-17", False, "jira")
    assert [(r.method, r.path) for r in jira.requests] == [("POST", SEARCH_PATH)]
    assert jira.requests[0].json()["jql"] == f'labels = "{call_label("call-retried")}"'


async def test_unconfigured_jira_gives_a_labelled_demo_ticket_and_records_the_effect(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ledger = tmp_path / "effects.db"
    monkeypatch.setenv("TOOL_LEDGER_PATH", str(ledger))
    filed = ticket()

    [outcome] = await run(stack, IT_ENDPOINT, filed)

    assert outcome.ok, outcome.error
    expected = demo_ticket("OPS", filed.call_id)
    assert outcome.output == expected.model_dump(mode="json")
    assert outcome.output["source"] == "demo" and outcome.output["note"] == DEMO_TICKET_LABEL
    assert outcome.output["key"].startswith("OPS-")
    with sqlite3.connect(ledger) as connection:
        rows = connection.execute("SELECT call_id, tool, attempts FROM effects").fetchall()
    assert rows == [(filed.call_id, "create_ticket", 1)]


@pytest.mark.parametrize("decision", [None, "deny"], ids=["no-approval", "denied"])
async def test_a_ticket_without_an_approve_is_refused_and_reaches_no_jira(
    stack: Stack, jira: FakeHttpServer, monkeypatch: pytest.MonkeyPatch, decision: Verdict | None
) -> None:
    configure_jira(monkeypatch, jira)
    refused = ticket(decision)

    [outcome] = await run(stack, IT_ENDPOINT, refused)

    assert outcome.error_kind == "unauthenticated"
    assert (outcome.error or "").startswith("tool 'create_ticket' needs approval (always")
    assert not await tool_workflow_exists(stack.client("it"), refused)
    assert jira.requests == []


async def test_a_retried_attempt_looks_again_before_filing(
    jira: FakeHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jira's search index lags a create: a retry that does not find the issue at once looks
    again before it files, and finds the one its first attempt filed."""
    configure_jira(monkeypatch, jira)
    monkeypatch.setattr("it_service.jira.RETRY_LOOKUP_PAUSE_SECONDS", 0.01)
    jira.script(
        Reply(200, {"issues": []}),
        Reply(200, {"issues": [{"id": "10001", "key": "OPS-18"}]}),
    )

    result = await create_issue(
        call_id="call-retried-late",
        project="OPS",
        summary="VPN drops every hour",
        description="",
        issue_type="Task",
        priority=None,
        settings=JiraSettings(),
        retried=True,
    )

    assert (result.key, result.created) == ("OPS-18", False)
    assert [(r.method, r.path) for r in jira.requests] == [("POST", SEARCH_PATH)] * 2
