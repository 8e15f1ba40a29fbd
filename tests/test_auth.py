"""Authenticated Nexus callers: each kind of bad token is refused before anything runs."""

from __future__ import annotations

import asyncio
import base64
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
from pydantic import ValidationError
from temporalio.worker import Worker

from infrastructure.probe import ExecuteToolProbe, ExecuteToolProbeInput
from infrastructure.setup import EndpointDefinition, ensure_endpoint
from it_service.tools import registry as it_registry
from it_service.workflows import ITSessionWorkflow, session_workflow_id
from shared.auth import (
    TOKEN_HEADER,
    CallerClaims,
    CallerTokenInterceptor,
    NexusAuthSettings,
    SigningKey,
    sign_token,
)
from shared.caller import ToolOutcome
from shared.tools import ToolCall, tool_workflow_id
from shared.worker import build_team_worker
from tests.conftest import Stack

SECURE_ENDPOINT = "it-tools-secure"
SECRET = os.urandom(32)
SECRET_B64 = base64.b64encode(SECRET).decode()
OTHER_SECRET = os.urandom(32)


@dataclass
class SecureTeam:
    stack: Stack
    signed_queue: str
    unsigned_queue: str

    async def call(
        self, queue: str, headers: dict[str, str] | None = None
    ) -> tuple[ToolOutcome, ToolCall]:
        call = ToolCall(
            call_id=f"auth-{uuid.uuid4()}",
            tool="track_ip",
            args={"ip": "192.0.2.44"},
            conversation_id=f"conv-{uuid.uuid4()}",
        )
        result = await self.stack.client("orchestrator").execute_workflow(
            ExecuteToolProbe.run,
            ExecuteToolProbeInput(endpoint=SECURE_ENDPOINT, calls=[call], headers=headers),
            id=f"auth-probe-{uuid.uuid4()}",
            task_queue=queue,
        )
        return result.outcomes[0], call

    async def executions(self, call: ToolCall) -> int:
        """Tool workflows plus session workflows this call could have created."""
        query = (
            f"WorkflowId = '{tool_workflow_id(call.call_id)}' OR "
            f"WorkflowId = '{session_workflow_id(call.conversation_id)}'"
        )
        return (await self.stack.client("it").count_workflows(query)).count


@pytest.fixture(scope="module")
async def secure(stack: Stack) -> AsyncIterator[SecureTeam]:
    await ensure_endpoint(
        stack.client("it"),
        EndpointDefinition(name=SECURE_ENDPOINT, namespace="it", task_queue=SECURE_ENDPOINT),
    )
    team_auth = NexusAuthSettings(audience=SECURE_ENDPOINT, verify_keys={"k1": SECRET_B64})
    caller_keys = {SECURE_ENDPOINT: SigningKey(kid="k1", secret=SECRET)}
    suffix = uuid.uuid4().hex[:6]
    team = SecureTeam(stack, f"probe-signed-{suffix}", f"probe-unsigned-{suffix}")
    workers = [
        build_team_worker(
            stack.client("it"),
            it_registry,
            task_queue=SECURE_ENDPOINT,
            fast_path_budget=timedelta(milliseconds=500),
            workflows=[ITSessionWorkflow],
            auth=team_auth,
        ),
        Worker(
            stack.client("orchestrator"),
            task_queue=team.signed_queue,
            workflows=[ExecuteToolProbe],
            interceptors=[CallerTokenInterceptor(caller_keys, "orchestrator")],
        ),
        Worker(
            stack.client("orchestrator"),
            task_queue=team.unsigned_queue,
            workflows=[ExecuteToolProbe],
        ),
    ]
    for worker in workers:
        await worker.__aenter__()
    try:
        yield team
    finally:
        for worker in reversed(workers):
            await worker.__aexit__(None, None, None)


def _token(
    *, secret: bytes = SECRET, aud: str = SECURE_ENDPOINT, expires_in: int = 300, kid: str = "k1"
) -> str:
    now = int(time.time())
    claims = CallerClaims(
        iss="orchestrator", aud=aud, cid="c", iat=now, exp=now + expires_in, kid=kid
    )
    return sign_token(claims, secret)


async def test_signed_caller_is_served(secure: SecureTeam) -> None:
    outcome, _ = await secure.call(secure.signed_queue)
    assert outcome.ok, outcome.error
    assert outcome.output["addresses"][0]["ip"] == "192.0.2.44"


@pytest.mark.parametrize(
    ("case", "headers", "reason"),
    [
        ("missing", None, "missing caller token"),
        ("forged", {TOKEN_HEADER: _token(secret=OTHER_SECRET)}, "signature is invalid"),
        ("expired", {TOKEN_HEADER: _token(expires_in=-5)}, "expired"),
        ("wrong audience", {TOKEN_HEADER: _token(aud="finance-tools")}, "not 'it-tools-secure'"),
        ("unknown key", {TOKEN_HEADER: _token(kid="k9")}, "unknown key 'k9'"),
        ("garbage", {TOKEN_HEADER: "not-a-token"}, "malformed"),
    ],
)
async def test_bad_callers_are_unauthenticated_and_run_nothing(
    secure: SecureTeam, case: str, headers: dict[str, str] | None, reason: str
) -> None:
    outcome, call = await secure.call(secure.unsigned_queue, headers)
    assert not outcome.ok, case
    assert outcome.error_kind == "unauthenticated", outcome
    assert reason in (outcome.error or "")
    await asyncio.sleep(0.5)  # visibility lag: give a wrongly started workflow time to show up
    assert await secure.executions(call) == 0


async def test_key_material_is_not_in_histories_or_logs(
    secure: SecureTeam, capfd: pytest.CaptureFixture[str]
) -> None:
    outcome, call = await secure.call(secure.signed_queue)
    assert outcome.ok
    forms = [SECRET_B64, SECRET.hex(), base64.urlsafe_b64encode(SECRET).decode().rstrip("=")]
    histories = []
    async for execution in secure.stack.client("orchestrator").list_workflows(
        "WorkflowType = 'ExecuteToolProbe'"
    ):
        histories.append(
            (
                await secure.stack.client("orchestrator")
                .get_workflow_handle(execution.id)
                .fetch_history()
            ).to_json()
        )
    tool_history = (
        await secure.stack.client("it")
        .get_workflow_handle(tool_workflow_id(call.call_id))
        .fetch_history()
    )
    histories.append(tool_history.to_json())
    assert any(TOKEN_HEADER in h for h in histories), "the token itself is expected in history"
    logs = capfd.readouterr()
    for text in [*histories, logs.out, logs.err]:
        for form in forms:
            assert form not in text


def test_settings_refuse_weak_or_incomplete_keys() -> None:
    with pytest.raises(ValidationError, match="at least 32 bytes"):
        NexusAuthSettings(verify_keys={"k1": base64.b64encode(b"short").decode()})
    with pytest.raises(ValidationError, match="kid:base64secret"):
        NexusAuthSettings(signing_keys={"it-tools": SECRET_B64})
    with pytest.raises(ValueError, match="NEXUS_AUTH_AUDIENCE"):
        NexusAuthSettings(verify_keys={"k1": SECRET_B64}).check_team_side("it")
    with pytest.raises(ValueError, match="NEXUS_AUTH_REQUIRED"):
        NexusAuthSettings(required=True).check_team_side("it")
