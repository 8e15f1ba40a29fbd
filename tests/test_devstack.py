"""`make up` / `make down` as a user runs them, on spare ports and a throw-away run directory.

One stack for the module (starting it costs seconds on two cores); the tests run in file order and
the last one stops it. `up` runs with umask 0 and a run directory left loose by an earlier version,
and with canary secrets in its environment, to show that each process sees only its own.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client as McpClient
from mcp.client.streamable_http import streamable_http_client

from infrastructure.dev_server import temporal_binary
from infrastructure.stack_processes import BASE_ENV_NAMES, BASE_ENV_PREFIXES
from shared.manifest import discover_teams
from tests.support.fake_http import FakeHttpServer, Reply

# Secrets in `make up`'s environment, each meant for exactly one process (or none).
OPENAI_CANARY = "sk-canary-openai-7f3a"
LLM_CANARY = "sk-canary-llm-91c2"
JIRA_CANARY = "canary-jira-token-5d0e"
QUOTE_CANARY = "canary-quote-key-b81f"
STORE_CANARY = "canary-store"  # ORCHESTRATOR_STORE_URL's path: the orchestrator's setting only
FOREIGN_NEXUS_KEY = base64.b64encode(b"canary-nexus-key-from-the-shell!").decode()
FOREIGN_TEMPORAL = "canary-temporal-setting"
# An IT key made by "an earlier `up`": it must be kept, and its file made private.
EARLIER_IT_KEY = base64.b64encode(b"k" * 32).decode()

# Every team the manifests declare runs, the orchestrator too; the canaries above concern IT and
# Finance, and a team added with `make new-service` is simply one more worker here.
TEAMS = discover_teams()
WORKER_NAMESPACES = {
    **{team.service: team.namespace for team in TEAMS},
    "orchestrator": "orchestrator",
}


@dataclass
class RunningStack:
    env: dict[str, str]
    run_dir: Path
    port: int
    pids: dict[str, int]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _devstack(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infrastructure.devstack", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        umask=0,  # the most careless umask: modes must not depend on it
    )


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (entry.decode().partition("=") for entry in raw.split(b"\0") if entry)
    return {name: value for name, _, value in pairs}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _leave_loose_run_dir(run_dir: Path) -> None:
    """What an earlier version and umask 022 left: readable keys and a stale secret file."""
    run_dir.mkdir(mode=0o755)
    (run_dir / "nexus-keys.json").write_text(json.dumps({"it-tools": EARLIER_IT_KEY}))
    (run_dir / "nexus-keys.json").chmod(0o644)
    stale_dir = run_dir / "secrets" / "it"
    stale_dir.mkdir(parents=True, mode=0o755)
    (stale_dir / "llm_api_key").write_text("sk-stale-from-an-earlier-up")
    (stale_dir / "llm_api_key").chmod(0o644)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    root = tmp_path_factory.mktemp("devstack")
    run_dir = root / "run"
    _leave_loose_run_dir(run_dir)
    port = _free_port()
    # The quote API Finance's stock_price calls: its HTTP request is the last span of a trace.
    quotes = FakeHttpServer().start()
    quotes.script(*[Reply(200, {"price": 187.5, "currency": "USD"}) for _ in range(20)])
    parent = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "NEXUS_AUTH_"))}
    env = {
        **parent,
        "DEVSTACK_RUN_DIR": str(run_dir),
        "DEVSTACK_PORT": str(port),
        "DEVSTACK_HTTP_PORT": str(_free_port()),
        "DEVSTACK_UI_PORT": str(_free_port()),
        "DEVSTACK_WORKER_METRICS_PORT": "0",  # free ports, not a running `make up`'s
        "DEVSTACK_GATEWAY_PORT": str(_free_port()),
        "LOG_LEVEL": "WARNING",
        "OPENAI_API_KEY": OPENAI_CANARY,
        "LLM_API_KEY": LLM_CANARY,
        "JIRA_API_TOKEN": JIRA_CANARY,
        "QUOTE_API_KEY": QUOTE_CANARY,
        "QUOTE_API_URL": quotes.url + "/v1/quote/{ticker}",
        "NO_PROXY": "127.0.0.1",
        "ORCHESTRATOR_STORE_URL": f"sqlite:///{root / STORE_CANARY}.db",
        "NEXUS_AUTH_VERIFY_KEYS": json.dumps({"shell": FOREIGN_NEXUS_KEY}),
        "NEXUS_AUTH_SIGNING_KEYS": json.dumps({"it-tools": f"shell:{FOREIGN_NEXUS_KEY}"}),
        "TEMPORAL_CANARY_SETTING": FOREIGN_TEMPORAL,
    }
    try:
        first = _devstack("up", env)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "Temporal UI: http://127.0.0.1:" in first.stdout
        records = (run_dir / "pids").glob("*.json")
        pids = {r.stem: int(json.loads(r.read_text())["pid"]) for r in records}
        yield RunningStack(env=env, run_dir=run_dir, port=port, pids=pids)
    finally:
        _devstack("down", env)
        quotes.stop()


def test_up_is_idempotent(stack: RunningStack) -> None:
    assert {"it", "finance"} <= set(WORKER_NAMESPACES)
    assert set(stack.pids) == {"temporal", "gateway", *WORKER_NAMESPACES}
    assert all(_alive(pid) for pid in stack.pids.values())
    assert (stack.run_dir / "temporal.db").exists()
    assert (stack.run_dir / "logs" / "it.log").exists()

    second = _devstack("up", stack.env)
    assert second.returncode == 0
    assert "already up" in second.stdout

    endpoints = subprocess.run(
        [temporal_binary(), "operator", "nexus", "endpoint", "list"],
        env={**os.environ, "TEMPORAL_ADDRESS": f"127.0.0.1:{stack.port}"},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert all(team.endpoint in endpoints.stdout for team in TEAMS)


def test_every_team_runs_through_the_one_worker_entry_point(stack: RunningStack) -> None:
    for team in TEAMS:
        cmdline = Path(f"/proc/{stack.pids[team.service]}/cmdline").read_bytes().split(b"\0")
        assert [part.decode() for part in cmdline[1:4]] == ["-m", "shared.worker", team.package]


def test_each_process_gets_only_its_own_settings_and_secrets(stack: RunningStack) -> None:
    environs = {name: _environ(pid) for name, pid in stack.pids.items()}
    owners = {
        OPENAI_CANARY: {"orchestrator"},
        LLM_CANARY: {"orchestrator"},
        # The gateway reads the same store (API keys, conversation owners, token deltas).
        STORE_CANARY: {"orchestrator", "gateway"},
        JIRA_CANARY: {"it"},
        QUOTE_CANARY: {"finance"},
        FOREIGN_NEXUS_KEY: set(),
        FOREIGN_TEMPORAL: set(),
    }
    for canary, expected in owners.items():
        holders = {name for name, env in environs.items() if any(canary in v for v in env.values())}
        assert holders == expected, f"{canary} reached {sorted(holders)}"

    for name, env in environs.items():
        keys = [var for var in env if var.startswith("NEXUS_AUTH_") and "KEYS" in var]
        assert not keys, f"{name} has {keys} in its environment"

    # The server reads no settings of ours: the base list and nothing else.
    server = environs["temporal"]
    assert server, "the server's environment is empty: /proc not readable?"
    assert all(var in BASE_ENV_NAMES or var.startswith(BASE_ENV_PREFIXES) for var in server)

    for name, namespace in WORKER_NAMESPACES.items():
        env = environs[name]
        assert env["TEMPORAL_NAMESPACE"] == namespace
        assert env["TEMPORAL_ADDRESS"] == f"127.0.0.1:{stack.port}"
        assert env["SECRETS_DIR"] == str(stack.run_dir.resolve() / "secrets" / name)
        assert "TEMPORAL_CANARY_SETTING" not in env
    assert environs["it"]["NEXUS_AUTH_AUDIENCE"] == "it-tools"
    assert environs["it"]["NEXUS_AUTH_REQUIRED"] == "true"


def test_keys_are_files_each_process_holds_only_its_own(stack: RunningStack) -> None:
    secrets = stack.run_dir / "secrets"
    keys = json.loads((stack.run_dir / "nexus-keys.json").read_text())
    assert keys["it-tools"] == EARLIER_IT_KEY  # an earlier `up`'s key is kept
    assert set(keys) == {team.endpoint for team in TEAMS}
    assert {d.name for d in secrets.iterdir()} == set(WORKER_NAMESPACES)
    for team, endpoint in ((team.service, team.endpoint) for team in TEAMS):
        files = {f.name: f.read_text() for f in (secrets / team).iterdir()}
        # The stale llm_api_key left in it/ is gone: nothing but this team's verify key.
        assert set(files) == {"nexus_auth_verify_keys"}
        assert json.loads(files["nexus_auth_verify_keys"]) == {"dev1": keys[endpoint]}
    files = {f.name: f.read_text() for f in (secrets / "orchestrator").iterdir()}
    assert set(files) == {"nexus_auth_signing_keys"}
    signing = json.loads(files["nexus_auth_signing_keys"])
    assert signing == {endpoint: f"dev1:{key}" for endpoint, key in keys.items()}


def test_run_dir_and_key_files_are_private_whatever_the_umask(stack: RunningStack) -> None:
    assert _mode(stack.run_dir) == 0o700
    assert _mode(stack.run_dir / "nexus-keys.json") == 0o600
    secrets = stack.run_dir / "secrets"
    assert _mode(secrets) == 0o700
    for directory in secrets.iterdir():
        assert _mode(directory) == 0o700, directory
        for secret in directory.iterdir():
            assert _mode(secret) == 0o600, secret


def test_signed_nexus_round_trip_through_the_stack(stack: RunningStack) -> None:
    # The orchestrator signs with the key from its secrets file; IT requires and verifies it.
    # LLM_MODEL is unset for the orchestrator, so its built-in offline model picks the tool.
    cli_env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "TEMPORAL_"))}
    cli_env.update(TEMPORAL_ADDRESS=f"127.0.0.1:{stack.port}", TEMPORAL_NAMESPACE="orchestrator")
    result = _agent(stack, "ask", "--json", "What is my IP address?")
    assert result.returncode == 0, result.stdout + result.stderr
    turn = json.loads(result.stdout)
    calls = [(c["service"], c["name"], c["ok"]) for c in turn["tool_calls"]]
    assert ("it", "get_ip", True) in calls, turn


def _agent(stack: RunningStack, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it beside the stack; it appends its spans to the stack's file."""
    cli_env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "TEMPORAL_"))}
    cli_env.update(
        TEMPORAL_ADDRESS=f"127.0.0.1:{stack.port}",
        TEMPORAL_NAMESPACE="orchestrator",
        TELEMETRY_TRACES_FILE=str(stack.run_dir / "traces.jsonl"),
    )
    return subprocess.run(
        [str(Path(sys.executable).parent / "agent"), *args],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_agent_trace_shows_where_the_turn_went_from_cli_to_tool(stack: RunningStack) -> None:
    ip = _agent(stack, "ask", "--json", "What is my IP address?")
    assert ip.returncode == 0, ip.stdout + ip.stderr
    conversation_id = json.loads(ip.stdout)["conversation_id"]
    asked = _agent(stack, "ask", "--json", "What is the stock price of AAPL?")
    assert asked.returncode == 0, asked.stdout + asked.stderr
    stock = json.loads(asked.stdout)
    assert [(c["name"], c["ok"]) for c in stock["tool_calls"]] == [("stock_price", True)], stock
    assert stock["tool_calls"][0]["result"]["source"] == "quote_api"
    first = _trace_when(
        stack,
        conversation_id,
        lambda spans: {"agent-cli", "orchestrator", "it"} <= {s["service"] for s in spans},
    )
    names = {span["name"] for span in first}
    for expected in (
        "agent message",
        "agent turn",
        "model step 1",
        "tool it.get_ip",
        "handle it.get_ip",
        "tool workflow it.get_ip",
        "run it.get_ip",
    ):
        assert expected in names, sorted(names)
    assert len({span["trace_id"] for span in first}) == 1
    # The IT team's spans are made by its own worker, across the signed Nexus hop (`make up`
    # runs with caller authentication on): the trace context travels beside the token.
    by_name = {span["name"]: span for span in first}
    assert by_name["handle it.get_ip"]["service"] == "it"
    assert by_name["run it.get_ip"]["service"] == "it"
    assert by_name["agent message"]["service"] == "agent-cli"
    tree = _agent(stack, "trace", conversation_id)
    assert tree.returncode == 0, tree.stderr
    assert "tool it.get_ip" in tree.stdout and " ms" in tree.stdout

    # The whole way, from the CLI to the team's HTTP call, for the stock price.
    spans = _trace_when(
        stack, stock["conversation_id"], lambda spans: any(s["name"] == "GET" for s in spans)
    )
    by_id = {span["span_id"]: span for span in spans}
    [http] = [span for span in spans if span["name"] == "GET"]
    chain = [http]
    while chain[-1]["parent_id"] in by_id:
        chain.append(by_id[chain[-1]["parent_id"]])
    assert [(s["name"], s["service"]) for s in chain] == [
        ("GET", "finance"),
        ("run finance.stock_price", "finance"),
        ("tool workflow finance.stock_price", "finance"),
        ("handle finance.stock_price", "finance"),
        ("tool finance.stock_price", "orchestrator"),
        ("agent turn", "orchestrator"),
        ("agent message", "agent-cli"),
    ]

    missing = _agent(stack, "trace", "no-such-conversation")
    assert missing.returncode == 1
    assert "no spans of conversation no-such-conversation" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_prometheus_scrapes_the_workers_metrics(stack: RunningStack, tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("Debian's prometheus package is not installed (`make test` installs it)")
    targets = {
        name: _environ(pid)["METRICS_BIND_ADDRESS"]
        for name, pid in stack.pids.items()
        if name not in {"temporal", "gateway"}
    }
    assert set(targets) == set(WORKER_NAMESPACES)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n"
        + "".join(
            f"  - job_name: {name}\n    static_configs:\n      - targets: ['{address}']\n"
            for name, address in targets.items()
        )
    )
    port = _free_port()
    server = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # One more conversation while Prometheus scrapes: a Finance tool this time.
        asked = _agent(stack, "ask", "--json", "What is the stock price of AAPL?")
        assert asked.returncode == 0, asked.stdout + asked.stderr
        query = "sum by (service, outcome) (agent_tool_calls_total)"
        by_service = _eventually_queried(
            port,
            query,
            lambda rows: {"it", "finance"} <= {r["metric"].get("service") for r in rows},
        )
        counts = {
            (r["metric"]["service"], r["metric"]["outcome"]): float(r["value"][1])
            for r in by_service
        }
        assert counts[("it", "ok")] >= 1 and counts[("finance", "ok")] >= 1, counts
        # The teams' own side, from their workers, and the SDK's metrics beside ours.
        executed = _eventually_queried(
            port, "sum by (job, service) (agent_tool_executions_total)", lambda rows: len(rows) >= 2
        )
        assert {(r["metric"]["job"], r["metric"]["service"]) for r in executed} >= {
            ("it", "it"),
            ("finance", "finance"),
        }
        turns = _eventually_queried(
            port, 'agent_turns_total{job="orchestrator",outcome="ok"}', bool
        )
        assert sum(float(r["value"][1]) for r in turns) >= 2
        sdk = _eventually_queried(port, 'temporal_workflow_completed_total{job="it"}', bool)
        assert sdk
        asked_in = json.loads(asked.stdout)["conversation_id"]
        for row in _eventually_queried(port, '{__name__=~"agent_.*"}', bool):
            labels = row["metric"]
            assert not any("conversation" in name for name in labels), labels
            assert asked_in not in labels.values(), labels
    finally:
        server.terminate()
        server.wait(timeout=30)


def _trace_when(
    stack: RunningStack, conversation_id: str, done: Any, timeout: float = 30.0
) -> list[dict[str, Any]]:
    """`agent trace --json`'s spans of the conversation's latest turn, once `done` says they are
    all there: workers export spans in batches (every 0.5 s under `make up`)."""
    deadline = time.monotonic() + timeout
    while True:
        shown = _agent(stack, "trace", "--json", conversation_id)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        trace = json.loads(shown.stdout)
        assert trace["turn"] == 1, trace["turn"]
        spans: list[dict[str, Any]] = trace["spans"]
        if done(spans) or time.monotonic() > deadline:
            return spans
        time.sleep(0.5)


def _eventually_queried(
    port: int, query: str, done: Any, timeout: float = 30.0
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            answer = httpx.get(
                f"http://127.0.0.1:{port}/api/v1/query", params={"query": query}, timeout=5
            )
            rows = answer.json()["data"]["result"] if answer.status_code == 200 else []
        except httpx.HTTPError:
            rows = []
        if done(rows):
            return rows
        time.sleep(1)
    raise AssertionError(f"Prometheus never answered {query!r} as expected; last: {rows}")


def _printed_key(output: str) -> str:
    [line] = [line for line in output.splitlines() if "demo API key:" in line]
    return line.split("demo API key:")[1].split()[0]


def test_up_starts_the_gateway_with_a_demo_key(stack: RunningStack) -> None:
    up = _devstack("up", stack.env)  # the stack is up: prints the gateway and the same key
    assert up.returncode == 0, up.stdout + up.stderr
    key = _printed_key(up.stdout)
    assert key.startswith("agk_")
    url = f"http://127.0.0.1:{stack.env['DEVSTACK_GATEWAY_PORT']}"
    assert f"gateway {url}" in up.stdout
    key_file = stack.run_dir / "gateway-demo-key"
    assert key_file.read_text().strip() == key and _mode(key_file) == 0o600
    assert _printed_key(_devstack("up", stack.env).stdout) == key  # the same key every time

    with httpx.Client(base_url=url, timeout=10, trust_env=False) as http:
        assert http.get("/healthz").json() == {"ok": True}
        assert http.get("/v1/me", headers={"Authorization": f"Bearer {key}"}).json() == {
            "user": "demo"
        }
        refused = http.get("/v1/me", headers={"Authorization": "Bearer agk_nope"})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthenticated"

    # The gateway is not a worker: it gets the store URL, never the model's keys or Nexus keys.
    env = _environ(stack.pids["gateway"])
    assert env["TEMPORAL_NAMESPACE"] == "orchestrator"
    assert env["GATEWAY_HOST"] == "127.0.0.1"
    assert "SECRETS_DIR" not in env and "OPENAI_API_KEY" not in env


async def test_an_mcp_client_calls_stock_price_and_ask_agent_on_the_stack(
    stack: RunningStack,
) -> None:
    """The official MCP client, against `make up`'s gateway with its demo key: every call goes
    through the orchestrator's workflows and the teams' signed Nexus endpoints."""
    key = (stack.run_dir / "gateway-demo-key").read_text().strip()
    url = f"http://127.0.0.1:{stack.env['DEVSTACK_GATEWAY_PORT']}/mcp"
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=120, trust_env=False) as http,
        McpClient(streamable_http_client(url, http_client=http)) as mcp,
    ):
        tools = {tool.name: tool for tool in (await mcp.list_tools()).tools}
        assert {"stock_price", "ask_agent", "get_current_time", "add_note"} <= set(tools)
        assert tools["stock_price"].input_schema["required"] == ["ticker"]
        quote = await mcp.call_tool("stock_price", {"ticker": "AAPL"})
        assert not quote.is_error, quote.content
        assert quote.structured_content is not None
        assert quote.structured_content["source"] == "quote_api"
        asked = await mcp.call_tool(
            "ask_agent", {"message": "What is the current time in Asia/Tokyo?"}
        )
        assert not asked.is_error, asked.content
        answer = asked.structured_content
        assert answer is not None and answer["ok"], answer
        assert [call["name"] for call in answer["tool_calls"]] == ["get_current_time"]


def test_down_stops_exactly_what_up_started(stack: RunningStack) -> None:
    down = _devstack("down", stack.env)
    assert down.returncode == 0 and "Stopped:" in down.stdout
    assert stack.pids and not any(_alive(pid) for pid in stack.pids.values())
    assert not list((stack.run_dir / "pids").glob("*.json"))


def test_up_starts_a_new_spans_file_once_it_is_large(tmp_path: Path) -> None:
    from infrastructure.devstack import TRACES_ROTATE_BYTES, DevStack, DevStackSettings

    stack = DevStack(DevStackSettings.throwaway(tmp_path / "run", traces=True), teams=[])
    stack.run_dir.mkdir()
    spans = stack.traces_path
    spans.write_text('{"small": true}\n')
    stack._rotate_traces()
    assert spans.read_text() == '{"small": true}\n'  # under the limit: kept as is
    with spans.open("r+b") as grown:
        grown.truncate(TRACES_ROTATE_BYTES + 1)
    stack._rotate_traces()
    assert not spans.exists()
    assert (spans.parent / "traces.jsonl.1").stat().st_size == TRACES_ROTATE_BYTES + 1
