"""The real Jira and quote-API clients against a local fake server, end to end through Nexus.

Every call goes through the real endpoint, the team's tool workflow and its retry policy; only the
upstream is fake (127.0.0.1, see tests/support/fake_http.py). Settings are read from the
environment at each tool execution, and the workers run in this process, so `monkeypatch.setenv`
configures the integration for one test.
"""

from __future__ import annotations

import asyncio
import base64
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from finance_service.quotes import QuoteSettings, demo_quote, fetch_quote
from it_service.jira import JiraSettings, demo_metrics, fetch_metrics
from shared.http import request_json
from shared.tools import ToolError
from tests.conftest import FINANCE_ENDPOINT, IT_ENDPOINT, Stack
from tests.support.fake_http import FakeHttpServer, RecordedRequest, Reply, serve

JIRA_COUNT_PATH = "/rest/api/3/search/approximate-count"
JIRA_EMAIL = "bot@example.com"
JIRA_TOKEN = "jira-token-123"
OPEN_JQL = 'project = "OPS" AND statusCategory != Done'
CREATED_JQL = 'project = "OPS" AND created >= -7d'
RESOLVED_JQL = 'project = "OPS" AND resolved >= -7d'
JIRA_COUNTS = {OPEN_JQL: 42, CREATED_JQL: 7, RESOLVED_JQL: 5}
JIRA_METRICS = {"open_issues": 42, "created_last_7_days": 7, "resolved_last_7_days": 5}

QUOTE_KEY = "quote-key-456"


@pytest.fixture(autouse=True)
def isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No integration settings leak in from the shell or a developer's .env; no proxy is used."""
    for name in list(os.environ):
        if name.upper().startswith(("JIRA_", "QUOTE_API_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1")


@pytest.fixture
def upstream() -> Iterator[FakeHttpServer]:
    yield from serve()


def configure_jira(
    monkeypatch: pytest.MonkeyPatch, server: FakeHttpServer, timeout: float = 5.0
) -> None:
    monkeypatch.setenv("JIRA_BASE_URL", server.url + "/")
    monkeypatch.setenv("JIRA_EMAIL", JIRA_EMAIL)
    monkeypatch.setenv("JIRA_API_TOKEN", JIRA_TOKEN)
    monkeypatch.setenv("JIRA_TIMEOUT_SECONDS", str(timeout))


def jira_count(request: RecordedRequest) -> Reply:
    """Answers an approximate-count request the way Jira Cloud does, by its JQL."""
    jql = request.json().get("jql")
    if jql not in JIRA_COUNTS:
        return Reply(400, {"errorMessages": [f"unexpected JQL: {jql}"], "errors": {}})
    return Reply(200, {"count": JIRA_COUNTS[jql]})


def configure_quotes(
    monkeypatch: pytest.MonkeyPatch,
    server: FakeHttpServer,
    timeout: float = 5.0,
    **extra: str,
) -> None:
    monkeypatch.setenv("QUOTE_API_URL", server.url + "/v1/quote/{ticker}")
    monkeypatch.setenv("QUOTE_API_KEY", QUOTE_KEY)
    monkeypatch.setenv("QUOTE_API_TIMEOUT_SECONDS", str(timeout))
    for name, value in extra.items():
        monkeypatch.setenv(f"QUOTE_API_{name.upper()}", value)


def quote(price: object = 187.5, currency: str = "EUR") -> Reply:
    return Reply(200, {"price": price, "currency": currency})


# --- IT: jira_metrics -----------------------------------------------------------------------


async def test_jira_metrics_reads_live_counts(
    stack: Stack, upstream: FakeHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_jira(monkeypatch, upstream)
    upstream.script(jira_count, jira_count, jira_count)

    outcome = await stack.execute_one(IT_ENDPOINT, "jira_metrics", project="OPS")

    assert outcome.ok, outcome.error
    assert outcome.output == {"project": "OPS", "source": "jira", "note": "", **JIRA_METRICS}
    requests = upstream.requests
    assert [(r.method, r.path) for r in requests] == [("POST", JIRA_COUNT_PATH)] * 3
    assert {r.json()["jql"] for r in requests} == set(JIRA_COUNTS)
    expected_auth = "Basic " + base64.b64encode(f"{JIRA_EMAIL}:{JIRA_TOKEN}".encode()).decode()
    for request in requests:
        assert request.header("Authorization") == expected_auth
        assert request.header("Accept") == "application/json"
        assert request.header("Content-Type") == "application/json"


async def test_jira_server_error_is_retried(
    stack: Stack, upstream: FakeHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_jira(monkeypatch, upstream)
    upstream.script(Reply(503, {"message": "busy"}), jira_count, jira_count, jira_count)

    outcome = await stack.execute_one(IT_ENDPOINT, "jira_metrics", project="OPS")

    assert outcome.ok, outcome.error
    assert outcome.output["source"] == "jira"
    assert {k: outcome.output[k] for k in JIRA_METRICS} == JIRA_METRICS
    # Attempt 1 stopped at the 503; attempt 2 asked all three counts again.
    jqls = [r.json()["jql"] for r in upstream.requests]
    assert len(jqls) == 4
    assert jqls[0] == jqls[1] == OPEN_JQL


async def test_jira_hanging_request_times_out_and_is_retried(
    stack: Stack, upstream: FakeHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_jira(monkeypatch, upstream, timeout=0.5)
    upstream.script(Reply(200, {"count": 999}, delay=2.0), jira_count, jira_count, jira_count)

    outcome = await stack.execute_one(IT_ENDPOINT, "jira_metrics", project="OPS")

    assert outcome.ok, outcome.error
    # The late answer of the hung request (999) is never used.
    assert {k: outcome.output[k] for k in JIRA_METRICS} == JIRA_METRICS
    assert len(upstream.requests) == 4


async def test_jira_rejected_credentials_fail_without_retry(
    stack: Stack, upstream: FakeHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_jira(monkeypatch, upstream)
    upstream.script(Reply(401, {"message": "Client must be authenticated"}))

    outcome = await stack.execute_one(IT_ENDPOINT, "jira_metrics", project="OPS")

    assert not outcome.ok
    assert outcome.error_kind == "failed"
    assert "Jira" in (outcome.error or "") and "credentials" in (outcome.error or "")
    assert "401" in (outcome.error or "")
    assert len(upstream.requests) == 1


async def test_jira_client_error_reports_jiras_message(
    stack: Stack, upstream: FakeHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_jira(monkeypatch, upstream)
    message = "The value 'OPS' does not exist for the field 'project'."
    upstream.script(Reply(400, {"errorMessages": [message], "errors": {}}))

    outcome = await stack.execute_one(IT_ENDPOINT, "jira_metrics", project="OPS")

    assert outcome.error_kind == "failed"
    assert "400" in (outcome.error or "") and message in (outcome.error or "")
    assert len(upstream.requests) == 1


async def test_jira_non_json_answer_fails_clearly(
    stack: Stack, upstream: FakeHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_jira(monkeypatch, upstream)
    upstream.script(Reply(200, "<html>Log in to Atlassian</html>"))

    outcome = await stack.execute_one(IT_ENDPOINT, "jira_metrics", project="OPS")

    assert outcome.error_kind == "failed"
    assert "Jira" in (outcome.error or "") and "not JSON" in (outcome.error or "")
    assert len(upstream.requests) == 1


async def test_jira_answer_without_count_fails_clearly(
    stack: Stack, upstream: FakeHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_jira(monkeypatch, upstream)
    upstream.script(Reply(200, {"total": 42}))

    outcome = await stack.execute_one(IT_ENDPOINT, "jira_metrics", project="OPS")

    assert outcome.error_kind == "failed", outcome.output
    assert "without a numeric 'count'" in (outcome.error or "")
    assert len(upstream.requests) == 1


@pytest.mark.parametrize(
    "body",
    [{"count": "many"}, {"count": None}, {"count": -1}, {"count": True}, {"count": 1.5}, [1]],
    ids=["text", "null", "negative", "bool", "float", "list"],
)
async def test_fetch_metrics_rejects_malformed_counts(
    upstream: FakeHttpServer, body: object
) -> None:
    """The same check without the stack: every malformed count is a final, clear ToolError."""
    upstream.script(Reply(200, body))
    settings = JiraSettings(base_url=upstream.url, email=JIRA_EMAIL, api_token=JIRA_TOKEN)
    with pytest.raises(ToolError) as caught:
        await fetch_metrics("OPS", settings)
    assert not caught.value.retryable
    assert "count" in caught.value.message
    assert len(upstream.requests) == 1


async def test_jira_unconfigured_returns_labelled_demo_data(
    stack: Stack, upstream: FakeHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcome = await stack.execute_one(IT_ENDPOINT, "jira_metrics", project="OPS")
    assert outcome.ok, outcome.error
    assert outcome.output == demo_metrics("OPS").model_dump()
    assert outcome.output["source"] == "demo"
    assert "demo data" in outcome.output["note"] and "JIRA_API_TOKEN" in outcome.output["note"]

    # Half a configuration (no token) is still unconfigured: demo data, no request sent.
    monkeypatch.setenv("JIRA_BASE_URL", upstream.url)
    monkeypatch.setenv("JIRA_EMAIL", JIRA_EMAIL)
    partial = await stack.execute_one(IT_ENDPOINT, "jira_metrics", project="OPS")
    assert partial.ok and partial.output["source"] == "demo"
    assert upstream.requests == []


# --- Finance: stock_price -------------------------------------------------------------------


async def test_stock_price_reads_live_quote(
    stack: Stack, upstream: FakeHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_quotes(monkeypatch, upstream)
    upstream.script(quote(price=187.5, currency="EUR"))

    outcome = await stack.execute_one(FINANCE_ENDPOINT, "stock_price", ticker="aapl")

    assert outcome.ok, outcome.error
    assert outcome.output == {
        "ticker": "AAPL",
        "price": "187.5",
        "currency": "EUR",
        "source": "quote_api",
        "note": "",
    }
    [request] = upstream.requests
    assert (request.method, request.path) == ("GET", "/v1/quote/AAPL")
    assert request.header("X-API-Key") == QUOTE_KEY
    assert request.header("Accept") == "application/json"


async def test_stock_price_follows_configured_fields_and_key_header(
    stack: Stack, upstream: FakeHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_quotes(
        monkeypatch,
        upstream,
        key_header="X-Finance-Token",
        price_field="data.0.last",
        currency_field="data.0.meta.ccy",
    )
    monkeypatch.setenv("QUOTE_API_URL", upstream.url + "/quotes?symbol={ticker}&fmt=json")
    upstream.script(Reply(200, {"data": [{"last": "412.35", "meta": {"ccy": "USD"}}]}))

    outcome = await stack.execute_one(FINANCE_ENDPOINT, "stock_price", ticker="brk.b")

    assert outcome.ok, outcome.error
    assert outcome.output["ticker"] == "BRK.B"
    assert outcome.output["price"] == "412.35"
    assert outcome.output["currency"] == "USD"
    assert outcome.output["source"] == "quote_api"
    [request] = upstream.requests
    assert request.path == "/quotes?symbol=BRK.B&fmt=json"
    assert request.header("X-Finance-Token") == QUOTE_KEY
    assert request.header("X-API-Key") is None


async def test_stock_price_without_key_or_currency(
    stack: Stack, upstream: FakeHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUOTE_API_URL", upstream.url + "/v1/quote/{ticker}")
    upstream.script(Reply(200, {"price": "0.0123"}))

    outcome = await stack.execute_one(FINANCE_ENDPOINT, "stock_price", ticker="PENNY")

    assert outcome.ok, outcome.error
    assert outcome.output["price"] == "0.0123" and outcome.output["currency"] == "USD"
    [request] = upstream.requests
    assert request.header("X-API-Key") is None


async def test_stock_price_server_errors_are_retried(
    stack: Stack, upstream: FakeHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_quotes(monkeypatch, upstream)
    upstream.script(Reply(500), Reply(502, "Bad Gateway"), quote(price="99.10"))

    outcome = await stack.execute_one(FINANCE_ENDPOINT, "stock_price", ticker="MSFT")

    assert outcome.ok, outcome.error
    assert outcome.output["price"] == "99.10" and outcome.output["source"] == "quote_api"
    assert [r.path for r in upstream.requests] == ["/v1/quote/MSFT"] * 3


async def test_stock_price_rate_limit_is_retried(
    stack: Stack, upstream: FakeHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_quotes(monkeypatch, upstream)
    upstream.script(Reply(429, {"message": "slow down"}), quote(price="1.5"))

    outcome = await stack.execute_one(FINANCE_ENDPOINT, "stock_price", ticker="MSFT")

    assert outcome.ok, outcome.error
    assert outcome.output["price"] == "1.5"
    assert len(upstream.requests) == 2


async def test_stock_price_hanging_request_times_out_and_is_retried(
    stack: Stack, upstream: FakeHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_quotes(monkeypatch, upstream, timeout=0.5)
    upstream.script(Reply(200, {"price": "1.00"}, delay=2.0), quote(price="250.25"))

    outcome = await stack.execute_one(FINANCE_ENDPOINT, "stock_price", ticker="IBM")

    assert outcome.ok, outcome.error
    assert outcome.output["price"] == "250.25"
    assert len(upstream.requests) == 2


@pytest.mark.parametrize("status", [401, 403])
async def test_stock_price_rejected_key_fails_without_retry(
    stack: Stack, upstream: FakeHttpServer, monkeypatch: pytest.MonkeyPatch, status: int
) -> None:
    configure_quotes(monkeypatch, upstream)
    upstream.script(Reply(status, {"message": "invalid API key"}))

    outcome = await stack.execute_one(FINANCE_ENDPOINT, "stock_price", ticker="AAPL")

    assert not outcome.ok
    assert outcome.error_kind == "failed"
    assert "quote API" in (outcome.error or "") and "credentials" in (outcome.error or "")
    assert str(status) in (outcome.error or "")
    assert len(upstream.requests) == 1


async def test_stock_price_unknown_ticker_fails_without_retry(
    stack: Stack, upstream: FakeHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_quotes(monkeypatch, upstream)
    upstream.script(Reply(404, {"message": "unknown symbol ZZZZ"}))

    outcome = await stack.execute_one(FINANCE_ENDPOINT, "stock_price", ticker="ZZZZ")

    assert outcome.error_kind == "failed"
    assert "404" in (outcome.error or "") and "unknown symbol ZZZZ" in (outcome.error or "")
    assert len(upstream.requests) == 1


async def test_stock_price_non_json_answer_fails_clearly(
    stack: Stack, upstream: FakeHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_quotes(monkeypatch, upstream)
    upstream.script(Reply(200, "price: 187.50"))

    outcome = await stack.execute_one(FINANCE_ENDPOINT, "stock_price", ticker="AAPL")

    assert outcome.error_kind == "failed"
    assert "quote API" in (outcome.error or "") and "not JSON" in (outcome.error or "")
    assert len(upstream.requests) == 1


async def test_stock_price_answer_without_price_fails_clearly(
    stack: Stack, upstream: FakeHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_quotes(monkeypatch, upstream)
    upstream.script(Reply(200, {"currency": "USD", "last": 187.5}))

    outcome = await stack.execute_one(FINANCE_ENDPOINT, "stock_price", ticker="AAPL")

    assert outcome.error_kind == "failed", outcome.output
    assert "no numeric 'price' for AAPL" in (outcome.error or "")
    assert len(upstream.requests) == 1


@pytest.mark.parametrize(
    "body",
    [{"price": None}, {"price": "n/a"}, {"price": "NaN"}, {"price": "-Infinity"}, ["187.5"]],
    ids=["null", "text", "nan", "infinity", "list"],
)
async def test_fetch_quote_rejects_malformed_prices(upstream: FakeHttpServer, body: object) -> None:
    """The same check without the stack: every malformed price is a final, clear ToolError."""
    upstream.script(Reply(200, body))
    settings = QuoteSettings(url=upstream.url + "/v1/quote/{ticker}")
    with pytest.raises(ToolError) as caught:
        await fetch_quote("AAPL", settings)
    assert not caught.value.retryable
    assert "no numeric 'price' for AAPL" in caught.value.message
    assert len(upstream.requests) == 1


async def test_stock_price_url_without_ticker_placeholder_fails_clearly(
    stack: Stack, upstream: FakeHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUOTE_API_URL", upstream.url + "/v1/quote/AAPL")

    outcome = await stack.execute_one(FINANCE_ENDPOINT, "stock_price", ticker="AAPL")

    assert outcome.error_kind == "failed"
    assert "{ticker}" in (outcome.error or "")
    assert upstream.requests == []


async def test_stock_price_unconfigured_returns_labelled_demo_data(stack: Stack) -> None:
    outcome = await stack.execute_one(FINANCE_ENDPOINT, "stock_price", ticker="nvda")
    assert outcome.ok, outcome.error
    assert outcome.output == demo_quote("NVDA").model_dump()
    assert outcome.output["source"] == "demo"
    assert "demo data" in outcome.output["note"] and "QUOTE_API_URL" in outcome.output["note"]


# --- shared/http.py classification, without the stack -----------------------------------------


async def _classify(status: int, body: bytes = b"{}") -> Any:
    """What request_json makes of one answer: the parsed JSON, or the ToolError it raised."""
    transport = httpx.MockTransport(lambda request: httpx.Response(status, content=body))
    async with httpx.AsyncClient(transport=transport) as client:
        try:
            return await request_json(client, "GET", "http://upstream.test/x", upstream="Up")
        except ToolError as err:
            return err


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
async def test_transient_statuses_are_retryable(status: int) -> None:
    err = await _classify(status)
    assert isinstance(err, ToolError) and err.retryable
    assert str(status) in err.message


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_statuses_are_final_and_name_credentials(status: int) -> None:
    err = await _classify(status)
    assert isinstance(err, ToolError) and not err.retryable
    assert "credentials" in err.message and str(status) in err.message


@pytest.mark.parametrize(
    ("status", "body", "detail"),
    [
        (400, b'{"errorMessages": ["bad JQL"], "errors": {}}', "bad JQL"),
        (404, b'{"message": "no such symbol"}', "no such symbol"),
        (422, b"plain text reason", "plain text reason"),
        (400, b'{"errors": {"jql": "invalid"}}', "invalid"),
    ],
)
async def test_other_client_errors_are_final_with_detail(
    status: int, body: bytes, detail: str
) -> None:
    err = await _classify(status, body)
    assert isinstance(err, ToolError) and not err.retryable
    assert str(status) in err.message and detail in err.message


async def test_success_returns_json_and_non_json_is_final() -> None:
    assert await _classify(200, b'{"count": 3}') == {"count": 3}
    err = await _classify(200, b"<html></html>")
    assert isinstance(err, ToolError) and not err.retryable and "not JSON" in err.message


@pytest.mark.parametrize(
    "exc",
    [httpx.ReadTimeout("slow"), httpx.ConnectTimeout("slow"), httpx.ConnectError("refused")],
)
async def test_transport_failures_are_retryable(exc: Exception) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise exc

    async with httpx.AsyncClient(transport=httpx.MockTransport(fail)) as client:
        with pytest.raises(ToolError) as caught:
            await request_json(client, "GET", "http://upstream.test/x", upstream="Up")
    assert caught.value.retryable
    assert "Up" in caught.value.message


async def test_real_timeout_against_the_fake_server(upstream: FakeHttpServer) -> None:
    upstream.script(Reply(200, {"late": True}, delay=2.0))
    async with httpx.AsyncClient(timeout=0.2) as client:
        with pytest.raises(ToolError) as caught:
            await request_json(client, "GET", upstream.url + "/slow", upstream="Up")
    assert caught.value.retryable and "did not answer in time" in caught.value.message
    assert [r.path for r in upstream.requests] == ["/slow"]


async def test_fake_server_stops_promptly_with_a_request_pending() -> None:
    """The fixture's server cuts a pending delay short on stop and leaves no thread behind."""
    arrived = threading.Event()

    def hang(request: RecordedRequest) -> Reply:
        arrived.set()
        return Reply(200, {}, delay=30.0)

    before = set(threading.enumerate())  # other servers (the session's fake model) may be up
    server = FakeHttpServer().start()
    server.script(hang)
    async with httpx.AsyncClient(timeout=10.0) as client:
        pending = asyncio.create_task(client.get(server.url + "/hang"))
        assert await asyncio.to_thread(arrived.wait, 5.0)
        started = time.monotonic()
        await asyncio.to_thread(server.stop)
        assert time.monotonic() - started < 2.0
        with pytest.raises(httpx.TransportError):
            await pending
    leftovers = [
        t.name
        for t in set(threading.enumerate()) - before
        if t.name == "fake-http" or "process_request" in t.name
    ]
    assert leftovers == []
