"""`make compose-rehearsal` for real: docker-compose.yml's services as local processes (a real
PostgreSQL from Debian's packages, the embedded dev server, the setup job, the three workers and
the HTTP gateway with their compose env files), a conversation over both teams with the CLI and one
through the gateway (an API key from `agent keys create`, a message streamed over SSE), every
worker and the gateway restarted, and the whole history still there. Skipped only when PostgreSQL
cannot be installed or started here."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from infrastructure.compose_file import compose_env, image_command, load_compose, start_order
from infrastructure.compose_http import (
    health_path,
    is_http_service,
    listen_variables,
    published_ports,
)
from infrastructure.compose_local import Overrides, RehearsalError
from infrastructure.compose_rehearsal import AFTER_RESTART, BEFORE_RESTART, rehearse
from infrastructure.postgres import PostgresUnavailable

ROOT = Path(__file__).resolve().parents[1]


def test_overrides_map_compose_hosts_and_mounts_only() -> None:
    overrides = Overrides(
        addresses={"temporal:7233": "127.0.0.1:40001", "postgresql:5432": "127.0.0.1:40002"},
        mounts={"it-worker": {"/var/lib/agent/it": Path("/tmp/v/it-data")}},
    )
    assert overrides.apply("x", "temporal:7233") == "127.0.0.1:40001"
    assert (
        overrides.apply("x", "postgresql://orchestrator@postgresql:5432/orchestrator")
        == "postgresql://orchestrator@127.0.0.1:40002/orchestrator"
    )
    # Other hosts and ports, and look-alikes, are left alone.
    assert overrides.apply("x", "temporal:72330") == "temporal:72330"
    assert overrides.apply("x", "my-temporal:7233") == "my-temporal:7233"
    assert overrides.apply("x", "https://quotes.example/v1") == "https://quotes.example/v1"
    # Mounts are per service.
    assert overrides.apply("it-worker", "/var/lib/agent/it/ledger.db") == "/tmp/v/it-data/ledger.db"
    assert overrides.apply("it-worker", "sqlite:////var/lib/agent/it/s.db") == (
        "sqlite:////tmp/v/it-data/s.db"
    )
    assert overrides.apply("it-worker", "/var/lib/agent/iterate") == "/var/lib/agent/iterate"
    assert overrides.apply("finance-worker", "/var/lib/agent/it/x") == "/var/lib/agent/it/x"


def test_rehearsal_runs_what_the_compose_file_runs() -> None:
    compose = load_compose()
    services = compose["services"]
    order = start_order(services)
    assert order.index("postgresql") < order.index("setup") < order.index("orchestrator-worker")
    assert order.index("temporal") < order.index("setup")
    commands = {
        name: image_command(service, ROOT / service["build"]["dockerfile"])
        for name, service in services.items()
        if "build" in service
    }
    assert commands["setup"] == ["python", "-m", "infrastructure.setup"]
    assert commands["orchestrator-worker"] == ["python", "-m", "orchestrator.worker"]
    assert commands["it-worker"] == ["python", "-m", "it_service.worker"]
    assert commands["gateway"] == ["python", "-m", "orchestrator.gateway"]
    # The gateway is the one HTTP service: it publishes a port; the workers and the job do not.
    assert [name for name, s in services.items() if is_http_service(s)] == ["gateway"]
    assert order.index("setup") < order.index("gateway")


def test_http_services_listen_where_they_publish() -> None:
    """The rehearsal gives a published port a local port through the service's own
    <PREFIX>_HOST/<PREFIX>_PORT pair, and refuses a pair that would not listen on every interface
    of its container (the published port would reach nothing)."""
    gateway = load_compose()["services"]["gateway"]
    assert published_ports(gateway) == [8088]
    assert health_path(gateway) == "/healthz"
    env = compose_env(gateway, ROOT)
    assert listen_variables("gateway", env, 8088) == ["GATEWAY_PORT"]
    for host in ("127.0.0.1", ""):
        with pytest.raises(RehearsalError, match="reaches nothing"):
            listen_variables("gateway", {**env, "GATEWAY_HOST": host}, 8088)
    with pytest.raises(RehearsalError, match="no \\*_PORT"):
        listen_variables("gateway", {**env, "GATEWAY_PORT": "9000"}, 8088)
    assert published_ports({"ports": ["8080", "127.0.0.1:9000:9001/tcp", {"target": 7000}]}) == [
        8080,
        9001,
        7000,
    ]


def test_compose_rehearsal(tmp_path: Path) -> None:
    began = time.monotonic()
    try:
        summary = rehearse(tmp_path)
    except PostgresUnavailable as err:
        pytest.skip(f"PostgreSQL is not available here: {err}")
    took = time.monotonic() - began
    assert summary["turns"] == [*BEFORE_RESTART, AFTER_RESTART]
    calls = summary["tool_calls"]
    assert any(call.startswith("finance.") for call in calls[:2])
    assert any(call.startswith("it.") for call in calls[:2])
    assert summary["container_files"] == {}, "state written inside a container is lost"
    assert "orchestrator-secrets/orchestrator_store_password" in summary["volume_files"]
    assert "it-data/ledger.db" in summary["volume_files"]
    # Through the gateway: a Finance tool before every service restarted, an IT tool after.
    gateway = summary["http"]["gateway"]
    assert gateway["conversation_id"].startswith("c-")
    assert [tools.split(".")[0] for tools in gateway["tools"]] == ["finance", "it"]
    assert took < 120, f"the rehearsal took {took:.0f}s"
