"""Cost you can act on: per-step usage rows, unpriced steps, budgets and `agent usage`.

Real stack: the dev server, real workers, the real SQLite store, LiteLLM over HTTP to the fake
model server (the only stand-in). Each test has its own store, so totals are its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import ActivityEnvironment

from orchestrator.activities import OrchestratorActivities
from orchestrator.client import ConversationClient
from orchestrator.config import LLMSettings, OrchestratorSettings
from orchestrator.models import (
    BUDGET_EXCEEDED_ERROR,
    ChatMessage,
    LlmRequest,
    StoredMessage,
    Usage,
)
from orchestrator.render import describe_usage_cost
from orchestrator.store import ConversationStore, ToolUse, UsageStep, UsageTotal, open_store
from orchestrator.store_backup import restore_store
from orchestrator.tools import openai_tool
from orchestrator.usage_commands import roll_up
from orchestrator.worker import build_orchestrator_worker
from shared.config import ConfigError, load_settings
from shared.llm import litellm
from tests.conftest import (
    ORCHESTRATOR_TASK_QUEUE,
    STORE_URL,
    Orchestrator,
    Stack,
    fake_llm_settings,
    orchestrator_settings,
)
from tests.support.fake_http import RecordedRequest, Reply
from tests.support.fake_llm import FakeModelServer, completion, error

# A real PostgreSQL and a store on each backend, as the store suite runs them.
from tests.test_store import postgres_url, store  # noqa: F401

AGENT = str(Path(sys.executable).parent / "agent")
PRICED_MODEL = "gpt-4o-mini"  # in LiteLLM's bundled price map


def _store_url() -> str:
    return f"sqlite:///{tempfile.mkdtemp(prefix='usage-store-')}/conversations.db"


def _rows(store_url: str, conversation_id: str | None = None) -> list[dict[str, Any]]:
    """The usage rows as the database holds them (read with sqlite3, not through the store)."""
    with sqlite3.connect(store_url.removeprefix("sqlite:///")) as db:
        db.row_factory = sqlite3.Row
        query = "SELECT * FROM usage_steps"
        params: tuple[str, ...] = ()
        if conversation_id is not None:
            query += " WHERE conversation_id = ?"
            params = (conversation_id,)
        rows = [dict(row) for row in db.execute(query + " ORDER BY reply_seq", params)]
    for row in rows:
        row["tool_calls"] = json.loads(row["tool_calls"])
    return rows


@asynccontextmanager
async def _orchestrator(
    stack: Stack,
    fake_model: FakeModelServer,
    store_url: str,
    task_queue: str,
    llm: LLMSettings | None = None,
    **overrides: Any,
) -> AsyncIterator[ConversationClient]:
    client = stack.client("orchestrator")
    worker = build_orchestrator_worker(
        client,
        task_queue=task_queue,
        settings=orchestrator_settings(store_url=store_url, **overrides),
        llm_settings=llm or fake_llm_settings(fake_model),
    )
    async with worker:
        yield ConversationClient(client, task_queue)


def _priced_llm(fake_model: FakeModelServer) -> LLMSettings:
    """A model LiteLLM has a price for, answered by the fake server over HTTP."""
    return fake_llm_settings(fake_model).model_copy(update={"model": f"openai/{PRICED_MODEL}"})


def _expected_cost(prompt: int, completion_tokens: int) -> float:
    price = litellm.model_cost[PRICED_MODEL]
    return float(
        prompt * price["input_cost_per_token"] + completion_tokens * price["output_cost_per_token"]
    )


def _agent_env(stack: Stack, store_url: str, task_queue: str = ORCHESTRATOR_TASK_QUEUE) -> Any:
    return {
        **os.environ,
        "TEMPORAL_ADDRESS": stack.env.client.service_client.config.target_host,
        "TEMPORAL_NAMESPACE": "orchestrator",
        "TEMPORAL_TASK_QUEUE": task_queue,
        "ORCHESTRATOR_STORE_URL": store_url,
        "COLUMNS": "200",
    }


async def _agent(stack: Stack, store_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [AGENT, *args],
        env=_agent_env(stack, store_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _usage_json(stack: Stack, store_url: str, *args: str) -> dict[str, Any]:
    result = await _agent(stack, store_url, "usage", "--json", *args)
    assert result.returncode == 0, result.stderr
    payload: dict[str, Any] = json.loads(result.stdout)
    return payload


# ---- budgets ---------------------------------------------------------------------------------
async def test_conversation_token_budget_stops_before_the_model_and_lifts_when_raised(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    store_url, task_queue = _store_url(), f"usage-budget-{uuid.uuid4().hex[:8]}"
    cid = f"budget-{uuid.uuid4().hex[:8]}"
    async with _orchestrator(
        stack, fake_model, store_url, task_queue, budget_conversation_tokens=25
    ) as conversations:
        fake_model.script(completion("first answer"))  # 20 + 5 tokens: the budget, exactly
        first = await conversations.send(cid, "hello", user="alice")
        assert first.ok and first.answer == "first answer"
        asked = len(fake_model.chat_requests())

        refused = await conversations.send(cid, "and another thing", user="alice")
        assert not refused.ok
        assert refused.error == (
            "this conversation has used 25 of its 25-token budget; raise "
            "ORCHESTRATOR_BUDGET_CONVERSATION_TOKENS or start a new conversation"
        )
        assert len(fake_model.chat_requests()) == asked, "the model was not called"
        assert len(_rows(store_url, cid)) == 1

    # The setting raised (a worker restarted with it): the same conversation answers again.
    async with _orchestrator(
        stack, fake_model, store_url, task_queue, budget_conversation_tokens=1000
    ) as conversations:
        fake_model.script(completion("back again"))
        again = await conversations.send(cid, "are you there?", user="alice")
        assert again.ok and again.answer == "back again"
        sent = [m["content"] for m in fake_model.chat_requests()[-1]["messages"]]
        assert "and another thing" in sent and "are you there?" in sent
    assert [row["reply_seq"] for row in _rows(store_url, cid)] == [2, 5]


async def test_user_day_budget_counts_every_conversation_of_the_user_only(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    store_url, task_queue = _store_url(), f"usage-user-{uuid.uuid4().hex[:8]}"
    suffix = uuid.uuid4().hex[:8]
    alice, bob = f"alice-{suffix}", f"bob-{suffix}"
    async with _orchestrator(
        stack, fake_model, store_url, task_queue, budget_user_day_tokens=40
    ) as conversations:
        fake_model.script(completion("one"), completion("two"))
        assert (await conversations.send(f"a1-{suffix}", "hi", user=alice)).ok  # 25
        assert (await conversations.send(f"a2-{suffix}", "hi", user=alice)).ok  # 50 >= 40
        asked = len(fake_model.chat_requests())
        for cid in (f"a1-{suffix}", f"a2-{suffix}"):
            refused = await conversations.send(cid, "more", user=alice)
            assert not refused.ok
            assert refused.error == (
                f"user {alice} has used 50 of the 40-token daily budget; raise "
                "ORCHESTRATOR_BUDGET_USER_DAY_TOKENS or wait: it resets at 00:00 UTC"
            )
        assert len(fake_model.chat_requests()) == asked, "the model was not called"

        fake_model.script(completion("bob is fine"))
        other = await conversations.send(f"b1-{suffix}", "hi", user=bob)
        assert other.ok and other.answer == "bob is fine"
    today = datetime.now(UTC).date().isoformat()
    assert {(row["user_name"], row["day"]) for row in _rows(store_url)} == {
        (alice, today),
        (bob, today),
    }


async def test_usd_budget_counts_priced_steps(stack: Stack, fake_model: FakeModelServer) -> None:
    store_url, task_queue = _store_url(), f"usage-usd-{uuid.uuid4().hex[:8]}"
    cid = f"usd-{uuid.uuid4().hex[:8]}"
    cost = _expected_cost(1000, 500)
    async with _orchestrator(
        stack,
        fake_model,
        store_url,
        task_queue,
        llm=_priced_llm(fake_model),
        budget_conversation_usd=cost,
    ) as conversations:
        fake_model.script(completion("priced", prompt_tokens=1000, completion_tokens=500))
        assert (await conversations.send(cid, "hello", user="gina")).ok
        refused = await conversations.send(cid, "again", user="gina")
        assert not refused.ok and refused.error is not None
        assert refused.error.startswith(f"this conversation has used ${cost:.2g} of its ")
        assert "ORCHESTRATOR_BUDGET_CONVERSATION_USD" in refused.error
        assert "priced model steps only" in refused.error


def test_budget_settings_must_be_positive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_BUDGET_USER_DAY_USD", "0")
    with pytest.raises(ConfigError) as raised:
        load_settings(OrchestratorSettings)
    assert "ORCHESTRATOR_BUDGET_USER_DAY_USD" in str(raised.value)
    assert "must be greater than 0" in str(raised.value)
    monkeypatch.setenv("ORCHESTRATOR_BUDGET_USER_DAY_USD", "")  # empty: no limit
    monkeypatch.setenv("ORCHESTRATOR_BUDGET_CONVERSATION_TOKENS", "1000")
    settings = load_settings(OrchestratorSettings)
    assert settings.budget_user_day_usd is None and settings.budget_conversation_tokens == 1000


# ---- prices --------------------------------------------------------------------------------
async def test_an_unpriced_model_is_reported_as_unpriced_with_rows_and_cli_rollups(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    store_url, task_queue = _store_url(), f"usage-unpriced-{uuid.uuid4().hex[:8]}"
    cid, priced_cid = f"unpriced-{uuid.uuid4().hex[:8]}", f"priced-{uuid.uuid4().hex[:8]}"
    async with _orchestrator(stack, fake_model, store_url, task_queue) as conversations:
        fake_model.script(
            completion(
                tool_calls=[
                    ("calculator", {"expression": "2 + 2"}),
                    ("calculate_roi", {"principal": 100, "rate": 10, "years": 2}),
                ],
                prompt_tokens=100,
                completion_tokens=10,
            ),
            completion("4, and 121.00", prompt_tokens=200, completion_tokens=20),
        )
        result = await conversations.send(cid, "2+2 and ROI?", user="carol")
    assert result.ok, result.error
    assert result.usage == Usage(
        prompt_tokens=300, completion_tokens=30, cost_usd=0.0, unpriced_steps=2
    )
    assert describe_usage_cost(result.usage) == "unpriced (2 steps)"
    rows = _rows(store_url, cid)
    assert [(r["reply_seq"], r["user_name"], r["priced"], r["cost_usd"]) for r in rows] == [
        (2, "carol", 0, None),
        (5, "carol", 0, None),
    ]
    assert rows[0]["model"] == "openai/fake-model"
    # The local tool is placed by the step; the team tool is resolved when rolled up.
    assert rows[0]["tool_calls"] == [
        {"service": "local", "tool": "calculator"},
        {"service": None, "tool": "calculate_roi"},
    ]
    assert rows[1]["tool_calls"] == []

    # A priced step, another user's, in the same store.
    async with _orchestrator(
        stack, fake_model, store_url, task_queue, llm=_priced_llm(fake_model)
    ) as conversations:
        fake_model.script(completion("priced", prompt_tokens=1000, completion_tokens=500))
        priced = await conversations.send(priced_cid, "hello", user="dave")
    cost = _expected_cost(1000, 500)
    assert priced.usage.unpriced_steps == 0
    assert priced.usage.cost_usd == pytest.approx(cost)
    [row] = _rows(store_url, priced_cid)
    assert row["priced"] == 1 and row["cost_usd"] == pytest.approx(cost)
    assert row["model"] == f"openai/{PRICED_MODEL}"

    by_tool = await _usage_json(stack, store_url, "--by", "team,tool", "--user", "carol")
    assert by_tool["rows"] == [
        {
            "team": "-",
            "tool": "(answer)",
            "prompt_tokens": 200,
            "completion_tokens": 20,
            "total_tokens": 220,
            "cost_usd": None,
            "steps": 1,
            "priced_steps": 0,
            "unpriced_steps": 1,
            "tool_calls": 0,
        },
        {
            "team": "finance",
            "tool": "calculate_roi",
            "prompt_tokens": 50,
            "completion_tokens": 5,
            "total_tokens": 55,
            "cost_usd": None,
            "steps": 1,
            "priced_steps": 0,
            "unpriced_steps": 1,
            "tool_calls": 1,
        },
        {
            "team": "local",
            "tool": "calculator",
            "prompt_tokens": 50,
            "completion_tokens": 5,
            "total_tokens": 55,
            "cost_usd": None,
            "steps": 1,
            "priced_steps": 0,
            "unpriced_steps": 1,
            "tool_calls": 1,
        },
    ]
    assert by_tool["total"]["unpriced_steps"] == 2 and by_tool["total"]["cost_usd"] is None

    today = datetime.now(UTC).date().isoformat()
    by_user = await _usage_json(stack, store_url, "--by", "user", "--days", "1")
    assert by_user["since"] == today
    assert [(r["user"], r["total_tokens"], r["unpriced_steps"]) for r in by_user["rows"]] == [
        ("carol", 330, 2),
        ("dave", 1500, 0),
    ]
    assert by_user["rows"][1]["cost_usd"] == pytest.approx(cost)
    assert by_user["total"]["cost_usd"] == pytest.approx(cost)
    assert by_user["total"]["unpriced_steps"] == 2

    by_day = await _usage_json(stack, store_url, "--by", "day", "--since", today)
    assert [(r["day"], r["steps"], r["total_tokens"]) for r in by_day["rows"]] == [(today, 3, 1830)]
    by_model = await _usage_json(stack, store_url, "--by", "model")
    assert [(r["model"], r["steps"], r["priced_steps"]) for r in by_model["rows"]] == [
        ("openai/fake-model", 2, 0),
        (f"openai/{PRICED_MODEL}", 1, 1),
    ]
    by_team = await _usage_json(stack, store_url, "--by", "team")
    assert [(r["team"], r["total_tokens"]) for r in by_team["rows"]] == [
        ("-", 1720),
        ("finance", 55),
        ("local", 55),
    ]
    # The priced answer step lands in team "-" with its cost, beside carol's unpriced answer.
    assert by_team["rows"][0]["cost_usd"] == pytest.approx(cost)
    assert by_team["rows"][0]["unpriced_steps"] == 1

    table = await _agent(stack, store_url, "usage", "--by", "user")
    assert table.returncode == 0, table.stderr
    assert "unpriced (2 steps)" in table.stdout and "$0.0000" not in table.stdout


async def test_the_offline_model_is_unpriced_not_free(stack: Stack) -> None:
    store_url, task_queue = _store_url(), f"usage-offline-{uuid.uuid4().hex[:8]}"
    client = stack.client("orchestrator")
    worker = build_orchestrator_worker(
        client,
        task_queue=task_queue,
        settings=orchestrator_settings(store_url=store_url),
        llm_settings=LLMSettings(model=None),
    )
    cid = f"offline-{uuid.uuid4().hex[:8]}"
    async with worker:
        result = await ConversationClient(client, task_queue).send(cid, "hello", user="olga")
    assert result.usage.unpriced_steps >= 1 and result.usage.cost_usd == 0.0
    rows = _rows(store_url, cid)
    assert rows and all(row["priced"] == 0 and row["cost_usd"] is None for row in rows)


# ---- retries -------------------------------------------------------------------------------
async def test_a_step_retried_by_temporal_writes_one_row(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    store_url, task_queue = _store_url(), f"usage-retry-{uuid.uuid4().hex[:8]}"
    cid = f"retry-{uuid.uuid4().hex[:8]}"
    async with _orchestrator(stack, fake_model, store_url, task_queue) as conversations:
        fake_model.script(error(503, "overloaded"), completion("after a retry"))
        result = await conversations.send(cid, "hello", user="hank")
    assert result.ok and result.answer == "after a retry"
    assert len(fake_model.chat_requests()) == 2
    assert [row["reply_seq"] for row in _rows(store_url, cid)] == [2]


async def test_two_attempts_of_one_step_write_one_row_for_the_kept_reply(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    """Two attempts of the same step (the first presumed dead) both call the model; the reply
    stored first is kept, and one usage row describes it. A third attempt finds the stored reply
    and calls nothing."""
    store_url = _store_url()
    store = open_store(store_url)  # noqa: F811  (this test's own store, not the fixture)
    activities = OrchestratorActivities(
        stack.client("orchestrator"),
        orchestrator_settings(store_url=store_url),
        fake_llm_settings(fake_model),
        store,
    )
    both_asked = threading.Barrier(2)

    def answer(reply: Reply) -> Any:
        def respond(_: RecordedRequest) -> Reply:
            both_asked.wait(timeout=30)  # neither attempt is answered before both have asked
            return reply

        return respond

    fake_model.script(
        answer(completion(tool_calls=[("calculator", {"expression": "1 + 1"})])),
        answer(completion("no tools", prompt_tokens=7, completion_tokens=3)),
    )
    cid = f"race-{uuid.uuid4().hex[:8]}"
    request = LlmRequest(
        conversation_id=cid,
        new_messages=[
            StoredMessage(seq=0, message=ChatMessage(role="system", content="be brief")),
            StoredMessage(seq=1, message=ChatMessage(role="user", content="1 + 1?")),
        ],
        reply_seq=2,
        tools=[openai_tool("calculator", "Evaluate arithmetic.", {"type": "object"})],
        tools_digest=f"digest-{cid}",
        user="ivan",
    )
    env = ActivityEnvironment()
    try:
        first, second = await asyncio.gather(
            env.run(activities.llm_step, request), env.run(activities.llm_step, request)
        )
        # Both return the kept reply.
        assert first.tool_calls == second.tool_calls and first.content == second.content
        [row] = _rows(store_url, cid)
        kept = (await store.messages(cid, after_seq=1, limit=1))[0].message
        assert row["user_name"] == "ivan" and row["priced"] == 0
        expected = [{"service": "local", "tool": "calculator"}] if kept.tool_calls else []
        assert row["tool_calls"] == expected
        assert len(fake_model.chat_requests()) == 2

        third = await env.run(activities.llm_step, request)
        assert third.tool_calls == first.tool_calls
        assert len(fake_model.chat_requests()) == 2, "the stored reply answered"
        assert len(_rows(store_url, cid)) == 1
    finally:
        await store.close()


# ---- the CLI -------------------------------------------------------------------------------
async def test_the_cli_passes_the_user_and_refuses_bad_usage_options(
    stack: Stack, orchestrator: Orchestrator, fake_model: FakeModelServer
) -> None:
    fake_model.script(completion("hello frank"))
    asked = await _agent(stack, STORE_URL, "ask", "hi", "--as", "frank", "--json")
    assert asked.returncode == 0, asked.stderr
    payload = json.loads(asked.stdout)
    assert payload["usage"]["unpriced_steps"] == 1
    [row] = _rows(STORE_URL, payload["conversation_id"])
    assert row["user_name"] == "frank"
    mine = await _usage_json(stack, STORE_URL, "--user", "frank", "--by", "user,model")
    assert [(r["user"], r["model"]) for r in mine["rows"]] == [("frank", "openai/fake-model")]

    for args, message in [
        (["--by", "colour"], "unknown --by value 'colour'"),
        (["--since", "2024-13-01"], "--since '2024-13-01' is not a date"),
        (["--since", "yesterday"], "is not a date: use YYYY-MM-DD"),
        (["--days", "0"], "--days must be between 1"),
        (["--days", "two"], "is not a whole number of days"),
        (["--days", "2", "--since", "2024-01-01"], "give --since or --days, not both"),
        (["--user", " "], "--user is empty"),
    ]:
        result = await _agent(stack, STORE_URL, "usage", *args)
        assert result.returncode == 2, (args, result.stderr)
        errors = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(errors) == 1 and errors[0].startswith("error:"), errors
        assert message in errors[0], errors
        assert "Traceback" not in result.stderr

    missing = await _agent(stack, "sqlite:////nonexistent/agent/store.db", "usage")
    assert missing.returncode == 1 and "there is no conversation store" in missing.stderr


# ---- the store, both backends ------------------------------------------------------------
async def test_usage_rows_on_both_backends(
    store: ConversationStore,  # noqa: F811  (the store suite's fixture: each backend)
    request: pytest.FixtureRequest,
) -> None:
    cid = f"u-{request.node.name}-{uuid.uuid4().hex[:6]}"
    user = f"user-{uuid.uuid4().hex[:6]}"

    def step(seq: int, day: str, cost: float | None, tokens: int = 10) -> UsageStep:
        return UsageStep(
            conversation_id=cid,
            reply_seq=seq,
            day=day,
            recorded_at=f"{day}T12:00:00+00:00",
            user=user,
            model="m",
            prompt_tokens=tokens,
            completion_tokens=1,
            cost_usd=cost,
            tool_calls=[ToolUse(service="it", tool="status"), ToolUse(tool="get_ip")],
        )

    await store.put_usage_step(step(2, "2026-01-01", 0.25))
    await store.put_usage_step(step(2, "2026-01-01", 9.0, tokens=999))  # a retry: first stands
    await store.put_usage_step(step(5, "2026-01-02", None))
    total = await store.conversation_usage(cid)
    assert total == UsageTotal(tokens=22, cost_usd=0.25, steps=2, unpriced_steps=1)
    assert await store.user_day_usage(user, "2026-01-02") == UsageTotal(
        tokens=11, cost_usd=0.0, steps=1, unpriced_steps=1
    )
    assert await store.user_day_usage("nobody", "2026-01-02") == UsageTotal()
    rows = await store.usage_steps(user=user)
    assert [(r.reply_seq, r.cost_usd, r.priced) for r in rows] == [
        (2, 0.25, True),
        (5, None, False),
    ]
    assert rows[0].tool_calls == [ToolUse(service="it", tool="status"), ToolUse(tool="get_ip")]
    later = await store.usage_steps(since_day="2026-01-02", user=user)
    assert [r.reply_seq for r in later] == [5]


def test_restoring_a_backup_from_before_usage_rows_adds_the_table(tmp_path: Path) -> None:
    old = tmp_path / "old-backup.db"
    with sqlite3.connect(old) as db:
        for table, key in (("messages", "seq"), ("summaries", "upto_seq"), ("turns", "turn")):
            db.execute(
                f"CREATE TABLE {table} (conversation_id TEXT NOT NULL, {key} BIGINT NOT NULL, "
                f"body TEXT NOT NULL, PRIMARY KEY (conversation_id, {key}))"
            )
    live = tmp_path / "live.db"
    restore_store(f"sqlite:///{live}", old)
    with sqlite3.connect(live) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(usage_steps)")}
    assert {"conversation_id", "reply_seq", "user_name", "cost_usd", "tool_calls"} <= columns


# ---- the roll-up rule ----------------------------------------------------------------------
def test_a_step_is_split_evenly_between_its_calls() -> None:
    step = UsageStep(
        conversation_id="c",
        reply_seq=2,
        day="2026-01-01",
        recorded_at="2026-01-01T00:00:00+00:00",
        user="u",
        model="m",
        prompt_tokens=90,
        completion_tokens=9,
        cost_usd=0.03,
        tool_calls=[
            ToolUse(service="it", tool="a"),
            ToolUse(service="it", tool="a"),
            ToolUse(service=None, tool="b"),
        ],
    )
    by_team = roll_up([step], ["team"], {"c": {"b": "finance"}})
    assert [(g.key, g.prompt_tokens, round(g.cost_usd, 6), g.tool_calls) for g in by_team] == [
        (("finance",), 30.0, 0.01, 1),
        (("it",), 60.0, 0.02, 2),
    ]
    whole = roll_up([step], ["day"], {})
    assert [(g.key, g.prompt_tokens, len(g.steps)) for g in whole] == [(("2026-01-01",), 90, 1)]
    unresolved = roll_up([step], ["team"], {})
    assert [g.key for g in unresolved] == [("it",), ("unknown",)]


@pytest.mark.parametrize(
    ("usage", "shown"),
    [
        (Usage(cost_usd=0.0123), "$0.0123"),
        (Usage(cost_usd=0.0123, unpriced_steps=2), "$0.0123 + 2 unpriced steps"),
        (Usage(unpriced_steps=1), "unpriced (1 step)"),
    ],
)
def test_cost_is_shown_with_its_unpriced_steps(usage: Usage, shown: str) -> None:
    assert describe_usage_cost(usage) == shown


def test_budget_error_type_is_exported() -> None:
    assert BUDGET_EXCEEDED_ERROR == "BudgetExceeded"
