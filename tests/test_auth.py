"""Authenticated Nexus callers: each kind of bad token is refused before anything runs.

Tokens sit in clear text in the caller's history, so the replay tests steal a real token from the
real history of a signed call and replay it from another namespace, changing one thing at a time.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import NexusOperationError
from temporalio.nexus import WorkflowHandle
from temporalio.worker import Worker

from infrastructure.probe import (
    ExecuteToolProbe,
    ExecuteToolProbeInput,
    ListToolsProbe,
    ListToolsProbeInput,
)
from infrastructure.setup import (
    EndpointDefinition,
    ensure_endpoint,
    ensure_namespace,
    wait_for_namespace,
)
from it_service.tools import registry as it_registry
from it_service.workflows import ITSessionWorkflow, session_workflow_id
from shared.approval import ApprovalPolicy, Arg, CallApproval
from shared.auth import (
    TOKEN_CLOCK_SKEW,
    TOKEN_HEADER,
    CallBinding,
    CallerClaims,
    CallerTokenInterceptor,
    NexusAuthSettings,
    SigningKey,
    TokenError,
    bind_call,
    check_call,
    check_cancel,
    sign_token,
    verify_token,
)
from shared.caller import ToolOutcome, classify_nexus_error
from shared.contract import ListToolsRequest, ToolService
from shared.tools import ToolCall, ToolRegistry, tool_workflow_id
from shared.worker import build_team_worker
from tests.conftest import Stack, eventually
from tests.support.canary import ACCESS_APPROVERS, grant_access

SECURE_ENDPOINT = "it-tools-secure"
SECRET = os.urandom(32)
SECRET_B64 = base64.b64encode(SECRET).decode()
OTHER_SECRET = os.urandom(32)
INTRUDER_NAMESPACE = "intruder"
PROBE_TIMEOUT_SECONDS = 30.0


async def hold(seconds: float) -> str:
    """Wait, then answer: a tool slow enough to be cancelled while it runs."""
    await asyncio.sleep(seconds)
    return "held"


def _secure_registry() -> ToolRegistry:
    registry = it_registry.copy()
    registry.add(hold, timeout=timedelta(seconds=60), max_attempts=1)
    registry.add(
        grant_access,
        timeout=timedelta(seconds=5),
        approval=ApprovalPolicy.when(Arg("days") > 30, approvers=ACCESS_APPROVERS),
    )
    return registry


def _call(tool: str = "track_ip", **args: object) -> ToolCall:
    """A fresh call in a fresh conversation; by default the track_ip call the first tests make."""
    if tool == "track_ip" and not args:
        args = {"ip": "192.0.2.44"}
    return ToolCall(
        call_id=f"auth-{uuid.uuid4()}",
        tool=tool,
        args=args,
        conversation_id=f"conv-{uuid.uuid4()}",
    )


class ListToolsOutcome(BaseModel):
    ok: bool
    error_kind: str | None = None
    error: str | None = None


@workflow.defn(name="ListToolsWithHeaders", sandboxed=False)
class ListToolsWithHeaders:
    """list_tools with caller-chosen headers; the probe in infrastructure/ sends none.

    Unsandboxed so the sandbox does not re-import this test module (pytest and all).
    """

    @workflow.run
    async def run(self, headers: dict[str, str]) -> ListToolsOutcome:
        client = workflow.create_nexus_client(service=ToolService, endpoint=SECURE_ENDPOINT)
        try:
            await client.execute_operation(
                ToolService.list_tools,
                ListToolsRequest(caller="orchestrator"),
                schedule_to_close_timeout=timedelta(seconds=10),
                headers=headers,
            )
        except NexusOperationError as err:
            kind, message = classify_nexus_error(err)
            return ListToolsOutcome(ok=False, error_kind=kind, error=message)
        return ListToolsOutcome(ok=True)


@dataclass
class SecureTeam:
    stack: Stack
    signed_queue: str
    unsigned_queue: str
    intruder: Client
    intruder_queue: str

    async def call(
        self, queue: str, headers: dict[str, str] | None = None
    ) -> tuple[ToolOutcome, ToolCall]:
        call = _call()
        outcome, _ = await self.run(queue, call, headers)
        return outcome, call

    async def run(
        self, queue: str, call: ToolCall, headers: dict[str, str] | None = None
    ) -> tuple[ToolOutcome, str]:
        """One call from the orchestrator namespace; returns its outcome and probe workflow id."""
        probe_id = f"auth-probe-{uuid.uuid4()}"
        result = await self.stack.client("orchestrator").execute_workflow(
            ExecuteToolProbe.run,
            ExecuteToolProbeInput(
                endpoint=SECURE_ENDPOINT,
                calls=[call],
                headers=headers,
                timeout_seconds=PROBE_TIMEOUT_SECONDS,
            ),
            id=probe_id,
            task_queue=queue,
        )
        return result.outcomes[0], probe_id

    async def signed_list_tools(self) -> str:
        probe_id = f"auth-list-{uuid.uuid4()}"
        await self.stack.client("orchestrator").execute_workflow(
            ListToolsProbe.run,
            ListToolsProbeInput(endpoints=[SECURE_ENDPOINT]),
            id=probe_id,
            task_queue=self.signed_queue,
        )
        return probe_id

    async def token_from_history(self, probe_id: str) -> str:
        """What anyone with read access to the orchestrator namespace can copy."""
        history = (
            await self.stack.client("orchestrator").get_workflow_handle(probe_id).fetch_history()
        )
        for event in history.events:
            if event.event_type == EventType.EVENT_TYPE_NEXUS_OPERATION_SCHEDULED:
                return event.nexus_operation_scheduled_event_attributes.nexus_header[TOKEN_HEADER]
        raise AssertionError(f"{probe_id} scheduled no Nexus operation")

    async def replay(self, call: ToolCall, token: str) -> ToolOutcome:
        """`call` from a workflow in another namespace, with a stolen token and no signing key."""
        result = await self.intruder.execute_workflow(
            ExecuteToolProbe.run,
            ExecuteToolProbeInput(
                endpoint=SECURE_ENDPOINT, calls=[call], headers={TOKEN_HEADER: token}
            ),
            id=f"intruder-exec-{uuid.uuid4()}",
            task_queue=self.intruder_queue,
        )
        return result.outcomes[0]

    async def replay_list_tools(self, token: str) -> ListToolsOutcome:
        return await self.intruder.execute_workflow(
            ListToolsWithHeaders.run,
            {TOKEN_HEADER: token},
            id=f"intruder-list-{uuid.uuid4()}",
            task_queue=self.intruder_queue,
        )

    async def executions(self, *calls: ToolCall) -> int:
        """Tool workflows plus session workflows these calls could have created."""
        ids = sorted(
            {tool_workflow_id(c.call_id) for c in calls}
            | {session_workflow_id(c.conversation_id) for c in calls}
        )
        query = " OR ".join(f"WorkflowId = '{workflow_id}'" for workflow_id in ids)
        return (await self.stack.client("it").count_workflows(query)).count


@pytest.fixture(scope="module")
async def secure(stack: Stack) -> AsyncIterator[SecureTeam]:
    await ensure_endpoint(
        stack.client("it"),
        EndpointDefinition(name=SECURE_ENDPOINT, namespace="it", task_queue=SECURE_ENDPOINT),
    )
    orchestrator = stack.client("orchestrator")
    await ensure_namespace(orchestrator, INTRUDER_NAMESPACE, timedelta(days=1))
    await wait_for_namespace(orchestrator, INTRUDER_NAMESPACE)
    intruder = Client(
        orchestrator.service_client,
        namespace=INTRUDER_NAMESPACE,
        data_converter=orchestrator.data_converter,
    )
    team_auth = NexusAuthSettings(audience=SECURE_ENDPOINT, verify_keys={"k1": SECRET_B64})
    caller_keys = {SECURE_ENDPOINT: SigningKey(kid="k1", secret=SECRET)}
    suffix = uuid.uuid4().hex[:6]
    team = SecureTeam(
        stack,
        f"probe-signed-{suffix}",
        f"probe-unsigned-{suffix}",
        intruder,
        f"intruder-{suffix}",
    )
    workers = [
        build_team_worker(
            stack.client("it"),
            _secure_registry(),
            task_queue=SECURE_ENDPOINT,
            fast_path_budget=timedelta(milliseconds=500),
            workflows=[ITSessionWorkflow],
            auth=team_auth,
        ),
        Worker(
            orchestrator,
            task_queue=team.signed_queue,
            workflows=[ExecuteToolProbe, ListToolsProbe],
            interceptors=[CallerTokenInterceptor(caller_keys, "orchestrator")],
        ),
        Worker(
            orchestrator,
            task_queue=team.unsigned_queue,
            workflows=[ExecuteToolProbe],
        ),
        # The thief: no signing key, only what it copied from the orchestrator's history.
        Worker(
            intruder,
            task_queue=team.intruder_queue,
            workflows=[ExecuteToolProbe, ListToolsWithHeaders],
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
        **bind_call("execute_tool", _call()).model_dump(),
        iss="orchestrator",
        aud=aud,
        iat=now,
        exp=now + expires_in,
        kid=kid,
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


async def _no_new_executions(secure: SecureTeam, before: int, *calls: ToolCall) -> None:
    await asyncio.sleep(0.5)  # visibility lag: give a wrongly started workflow time to show up
    assert await secure.executions(*calls) == before


async def test_token_binds_one_call_and_lives_only_for_the_operation(secure: SecureTeam) -> None:
    call = _call("set_jira_project", project="OPS")
    outcome, probe_id = await secure.run(secure.signed_queue, call)
    assert outcome.ok, outcome.error
    token = await secure.token_from_history(probe_id)
    claims = verify_token(
        token, {"k1": SECRET}, audience=SECURE_ENDPOINT, now=datetime.now().astimezone()
    )
    signed = CallBinding.model_validate(claims.model_dump())
    assert signed == bind_call("execute_tool", call)
    # The operation's schedule-to-close timeout plus a 10 s clock-skew allowance, nothing more.
    assert TOKEN_CLOCK_SKEW == timedelta(seconds=10)
    assert claims.exp - claims.iat == PROBE_TIMEOUT_SECONDS + 10


# One field changed at a time, on a call made with a token stolen from the orchestrator's history.
FORGERIES: dict[str, tuple[dict[str, Any], str]] = {
    "tool": ({"tool": "jira_metrics"}, "tool 'set_jira_project', not 'jira_metrics'"),
    "arguments": ({"args": {"project": "SEC"}}, "different arguments"),
    "conversation id": ({"conversation_id": "conv-made-up"}, "conversation id 'conv-"),
    "call id": ({"call_id": "call-made-up"}, "call id 'auth-"),
    # Claiming to call for another user (the token binds who asked, here nobody).
    "user": ({"user": "mallory"}, "user '', not 'mallory'"),
}


@pytest.mark.parametrize("field", sorted(FORGERIES))
async def test_stolen_token_refuses_any_other_call(secure: SecureTeam, field: str) -> None:
    original = _call("set_jira_project", project="OPS")
    outcome, probe_id = await secure.run(secure.signed_queue, original)
    assert outcome.ok, outcome.error
    token = await secure.token_from_history(probe_id)
    changes, reason = FORGERIES[field]
    forged = original.model_copy(update=changes)
    before = await secure.executions(original, forged)

    replayed = await secure.replay(forged, token)

    assert not replayed.ok, replayed
    assert replayed.error_kind == "unauthenticated", replayed
    assert reason in (replayed.error or ""), replayed.error
    await _no_new_executions(secure, before, original, forged)


async def test_list_tools_token_never_starts_a_tool(secure: SecureTeam) -> None:
    token = await secure.token_from_history(await secure.signed_list_tools())
    call = _call("set_jira_project", project="OPS")

    replayed = await secure.replay(call, token)

    assert not replayed.ok, replayed
    assert replayed.error_kind == "unauthenticated", replayed
    assert "operation 'list_tools', not 'execute_tool'" in (replayed.error or "")
    await _no_new_executions(secure, 0, call)


async def test_execute_tool_token_does_not_list_tools(secure: SecureTeam) -> None:
    outcome, probe_id = await secure.run(secure.signed_queue, _call())
    assert outcome.ok, outcome.error

    listed = await secure.replay_list_tools(await secure.token_from_history(probe_id))

    assert not listed.ok
    assert listed.error_kind == "unauthenticated", listed
    assert "operation 'execute_tool', not 'list_tools'" in (listed.error or "")


async def test_identical_replay_returns_the_recorded_result_and_runs_nothing(
    secure: SecureTeam,
) -> None:
    original = _call("set_jira_project", project="OPS")
    outcome, probe_id = await secure.run(secure.signed_queue, original)
    assert outcome.ok, outcome.error
    token = await secure.token_from_history(probe_id)
    before = await secure.executions(original)
    assert before == 2, "one tool workflow and one session workflow"

    replayed = await secure.replay(original, token)

    assert replayed.ok, replayed.error
    assert replayed.output == outcome.output
    await _no_new_executions(secure, before, original)


async def test_signed_caller_can_cancel_its_own_call(secure: SecureTeam) -> None:
    """Cancel requests are verified too (same token, operation token of the signed call)."""
    call = _call("hold", seconds=30)
    client = secure.stack.client("orchestrator")
    probe = await client.start_workflow(
        ExecuteToolProbe.run,
        ExecuteToolProbeInput(endpoint=SECURE_ENDPOINT, calls=[call]),
        id=f"auth-cancel-{uuid.uuid4()}",
        task_queue=secure.signed_queue,
    )

    async def operation_started() -> bool:
        history = await probe.fetch_history()
        started = EventType.EVENT_TYPE_NEXUS_OPERATION_STARTED
        return any(event.event_type == started for event in history.events)

    assert await eventually(operation_started), "the hold call never went asynchronous"
    await probe.cancel()
    outcome = (await probe.result()).outcomes[0]
    assert not outcome.ok
    tool_run = secure.stack.client("it").get_workflow_handle(tool_workflow_id(call.call_id))
    # The handler's cancel reached the tool workflow (a refused cancel leaves it holding for 30 s).
    history = await tool_run.fetch_history()
    requested = EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED
    assert any(event.event_type == requested for event in history.events)
    assert (await tool_run.describe()).status != WorkflowExecutionStatus.RUNNING


def test_cancel_must_name_the_signed_operation_and_call() -> None:
    call = _call()
    signed = bind_call("execute_tool", call)
    own = WorkflowHandle[Any]("it", tool_workflow_id(call.call_id)).to_token()
    other = WorkflowHandle[Any]("it", tool_workflow_id("someone-else")).to_token()
    check_cancel(signed, "execute_tool", own)
    with pytest.raises(TokenError, match="operation 'execute_tool', not 'list_tools'"):
        check_cancel(signed, "list_tools", own)
    with pytest.raises(TokenError, match="call id"):
        check_cancel(signed, "execute_tool", other)
    with pytest.raises(TokenError, match="operation 'list_tools'"):
        check_cancel(bind_call("list_tools", ListToolsRequest()), "execute_tool", own)


async def test_argument_hash_survives_the_payload_converter(stack: Stack) -> None:
    """The handler hashes what the converter decoded; the caller hashed what it encoded."""
    call = ToolCall(
        call_id="c1",
        tool="t",
        args={"z": [1, 2.5, "ü"], "a": {"when": date(2024, 2, 29), "n": None}, "t": (1, 2)},
    )
    converter = stack.client("it").data_converter
    (decoded,) = await converter.decode(await converter.encode([call]), [ToolCall])
    assert decoded.args != call.args, "the date and the tuple arrive as JSON"
    assert bind_call("execute_tool", decoded) == bind_call("execute_tool", call)
    reordered = call.model_copy(update={"args": dict(reversed(list(call.args.items())))})
    assert bind_call("execute_tool", reordered) == bind_call("execute_tool", call)
    changed = call.model_copy(update={"args": {**call.args, "z": [1, 2.5, "u"]}})
    with pytest.raises(TokenError, match="different arguments"):
        check_call(bind_call("execute_tool", call), bind_call("execute_tool", changed))


def test_settings_refuse_weak_or_incomplete_keys() -> None:
    with pytest.raises(ValidationError, match="at least 32 bytes"):
        NexusAuthSettings(verify_keys={"k1": base64.b64encode(b"short").decode()})
    with pytest.raises(ValidationError, match="kid:base64secret"):
        NexusAuthSettings(signing_keys={"it-tools": SECRET_B64})
    with pytest.raises(ValueError, match="NEXUS_AUTH_AUDIENCE"):
        NexusAuthSettings(verify_keys={"k1": SECRET_B64}).check_team_side("it")
    with pytest.raises(ValueError, match="NEXUS_AUTH_REQUIRED"):
        NexusAuthSettings(required=True).check_team_side("it")


# ---- the approval gate, enforced by the team ------------------------------------------------------
LEAD = ACCESS_APPROVERS[0]


def _approval(call: ToolCall, **changes: Any) -> CallApproval:
    values: dict[str, Any] = {
        "call_id": call.call_id,
        "verdict": "approve",
        "approver": LEAD,
        "decided_at": "2026-11-23T09:00:00+00:00",
    }
    return CallApproval(**{**values, **changes})


GATE_REFUSALS: dict[str, tuple[dict[str, Any] | None, str]] = {
    "missing": (None, "needs approval (days > 30) and the call carries none; nothing was started"),
    "not an approver": ({"approver": "mallory"}, "mallory may not approve it (approvers: it-lead)"),
    "denied": ({"verdict": "deny"}, "the call was denied by it-lead"),
    "another call's": ({"call_id": "auth-some-other-call"}, "approval is for call 'auth-some-"),
}


@pytest.mark.parametrize("case", sorted(GATE_REFUSALS))
async def test_a_gated_call_without_its_approval_is_refused_by_the_team(
    secure: SecureTeam, case: str
) -> None:
    """Even from a caller with a valid signing key (an orchestrator with a bug, or one a prompt
    talked into skipping its gate), the team refuses and starts nothing."""
    changes, reason = GATE_REFUSALS[case]
    call = _call("grant_access", user="ada", system="vpn", days=90)
    if changes is not None:
        call = call.model_copy(update={"approval": _approval(call, **changes)})

    outcome, _ = await secure.run(secure.signed_queue, call)

    assert not outcome.ok and outcome.error_kind == "unauthenticated", outcome
    assert reason in (outcome.error or ""), outcome.error
    await _no_new_executions(secure, 0, call)


async def test_an_approved_call_runs_and_one_under_the_threshold_needs_none(
    secure: SecureTeam,
) -> None:
    approved = _call("grant_access", user="ada", system="vpn", days=90)
    approved = approved.model_copy(update={"approval": _approval(approved)})
    outcome, _ = await secure.run(secure.signed_queue, approved)
    assert outcome.ok, outcome.error
    assert outcome.output["call_id"] == approved.call_id

    short = _call("grant_access", user="ada", system="vpn", days=7)
    outcome, _ = await secure.run(secure.signed_queue, short)
    assert outcome.ok, outcome.error


async def test_a_stolen_token_cannot_carry_a_forged_approval(secure: SecureTeam) -> None:
    """The token binds the call's approval (or its absence) like its arguments: a thief holding
    the token of an ungated call can neither add an approval nor raise the stakes."""
    original = _call("grant_access", user="ada", system="vpn", days=5)
    outcome, probe_id = await secure.run(secure.signed_queue, original)
    assert outcome.ok, outcome.error
    token = await secure.token_from_history(probe_id)
    with_approval = original.model_copy(update={"approval": _approval(original)})
    bigger = with_approval.model_copy(update={"args": {**original.args, "days": 365}})
    before = await secure.executions(original)

    for forged, reason in [
        (with_approval, "different approval"),
        (bigger, "different arguments"),
    ]:
        replayed = await secure.replay(forged, token)
        assert not replayed.ok and replayed.error_kind == "unauthenticated", replayed
        assert reason in (replayed.error or ""), replayed.error
    await _no_new_executions(secure, before, original)
