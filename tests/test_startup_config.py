"""A wrong setting stops a worker at start-up with one clear line, not a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import Stack


def _start(module: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module],
        env={**os.environ, "LOG_FORMAT": "json", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("module", "env", "expected"),
    [
        ("it_service.worker", {"TEMPORAL_TLS": "maybe"}, "TEMPORAL_TLS"),
        (
            "finance_service.worker",
            {"TEMPORAL_API_KEY": "k", "TEMPORAL_TLS": "false"},
            "an API key or client certificate needs TLS",
        ),
        ("it_service.worker", {"TEMPORAL_TLS_CERT_PATH": "/nonexistent.pem"}, "set together"),
        ("it_service.worker", {"NEXUS_AUTH_REQUIRED": "true"}, "NEXUS_AUTH_VERIFY_KEYS is empty"),
        ("orchestrator.worker", {"ORCHESTRATOR_MAX_STEPS": "0"}, "ORCHESTRATOR_MAX_STEPS"),
        ("orchestrator.worker", {"NEXUS_AUTH_SIGNING_KEYS": "{oops"}, "NEXUS_AUTH_SIGNING_KEYS"),
        ("it_service.worker", {"METRICS_BIND_ADDRESS": "9464"}, "METRICS_BIND_ADDRESS must be"),
        (
            "orchestrator.worker",
            {"ORCHESTRATOR_BUDGET_USER_DAY_USD": "-1"},
            "ORCHESTRATOR_BUDGET_USER_DAY_USD",
        ),
    ],
)
def test_bad_settings_fail_fast(module: str, env: dict[str, str], expected: str) -> None:
    result = _start(module, **env)
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_a_metrics_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = _start("finance_service.worker", METRICS_BIND_ADDRESS=address)
    assert result.returncode == 2
    assert f"cannot serve metrics on METRICS_BIND_ADDRESS={address}" in result.stderr
    assert "Address already in use" in result.stderr
    assert "Traceback" not in result.stderr


async def test_missing_namespace_is_one_line(stack: Stack) -> None:
    import asyncio

    result = await asyncio.to_thread(
        _start,
        "it_service.worker",
        TEMPORAL_ADDRESS=stack.env.client.service_client.config.target_host,
        TEMPORAL_NAMESPACE="no-such-namespace",
    )
    assert result.returncode == 2
    assert "namespace 'no-such-namespace' does not exist" in result.stderr
    assert "Traceback" not in result.stderr
