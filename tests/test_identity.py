"""The user's identity travels with the turn: a team's tool sees who asked, and the caller's signed
token binds it, so nobody can call as (or read the recorded answers of) another user.

Real dev server, real workers, real Nexus with token verification on; the fake model is the only
stand-in. The team here is test-only: one tool that reports the context it was given.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from infrastructure.probe import ExecuteToolProbe, ExecuteToolProbeInput
from infrastructure.setup import EndpointDefinition, ensure_endpoint
from orchestrator.client import ConversationClient
from orchestrator.worker import build_orchestrator_worker
from shared.auth import (
    TOKEN_HEADER,
    CallerClaims,
    NexusAuthSettings,
    TokenError,
    bind_call,
    check_call,
    sign_token,
    verify_token,
)
from shared.caller import ToolOutcome
from shared.contract import ListToolsRequest
from shared.tools import ToolCall, ToolContext, ToolRegistry, tool_workflow_id
from shared.worker import build_team_worker
from tests.conftest import Stack, fake_llm_settings, orchestrator_settings
from tests.support.fake_llm import FakeModelServer, completion, last_tool_messages

ENDPOINT = "it-tools-identity"
SECRET = os.urandom(32)
SECRET_B64 = base64.b64encode(SECRET).decode()


# ---- the test-only team: one tool that says what its context holds -----------------------------
class SeenContext(BaseModel):
    user: str
    conversation_id: str
    call_id: str


async def whoami(context: ToolContext) -> SeenContext:
    """Say who asked for this call, as the team's tool sees it."""
    return SeenContext(
        user=context.user, conversation_id=context.conversation_id, call_id=context.call_id
    )


def identity_registry() -> ToolRegistry:
    registry = ToolRegistry(service="identity")
    registry.add(whoami, timeout=timedelta(seconds=5))
    return registry


@dataclass
class IdentityStack:
    stack: Stack
    conversations: ConversationClient
    probe_queue: str  # an unsigned caller: sends whatever headers it is given

    async def call(self, call: ToolCall, token: str) -> ToolOutcome:
        """`call` with `token` in its header, from a workflow holding no signing key."""
        result = await self.stack.client("orchestrator").execute_workflow(
            ExecuteToolProbe.run,
            ExecuteToolProbeInput(endpoint=ENDPOINT, calls=[call], headers={TOKEN_HEADER: token}),
            id=f"identity-probe-{uuid.uuid4()}",
            task_queue=self.probe_queue,
        )
        return result.outcomes[0]

    async def signed_tool_call(self, conversation_id: str) -> tuple[ToolCall, str]:
        """The execute_tool call a conversation made, and its token, as its history holds them."""
        client = self.stack.client("orchestrator")
        history = await client.get_workflow_handle(conversation_id).fetch_history()
        for event in history.events:
            if event.event_type != EventType.EVENT_TYPE_NEXUS_OPERATION_SCHEDULED:
                continue
            attributes = event.nexus_operation_scheduled_event_attributes
            if attributes.operation == "execute_tool":
                (call,) = await client.data_converter.decode([attributes.input], [ToolCall])
                return call, attributes.nexus_header[TOKEN_HEADER]
        raise AssertionError(f"{conversation_id} made no tool call")


@pytest.fixture(scope="module")
async def identity(
    stack: Stack, fake_model_server: FakeModelServer
) -> AsyncIterator[IdentityStack]:
    await ensure_endpoint(
        stack.client("it"), EndpointDefinition(name=ENDPOINT, namespace="it", task_queue=ENDPOINT)
    )
    orchestrator = stack.client("orchestrator")
    suffix = uuid.uuid4().hex[:6]
    orchestrator_queue, probe_queue = f"identity-orch-{suffix}", f"identity-probe-{suffix}"
    workers = [
        build_team_worker(
            stack.client("it"),
            identity_registry(),
            task_queue=ENDPOINT,
            fast_path_budget=timedelta(milliseconds=500),
            auth=NexusAuthSettings(audience=ENDPOINT, verify_keys={"k1": SECRET_B64}),
        ),
        build_orchestrator_worker(
            orchestrator,
            task_queue=orchestrator_queue,
            settings=orchestrator_settings(tool_endpoints=[ENDPOINT]),
            llm_settings=fake_llm_settings(fake_model_server),
            auth=NexusAuthSettings(signing_keys={ENDPOINT: f"k1:{SECRET_B64}"}),
        ),
        Worker(orchestrator, task_queue=probe_queue, workflows=[ExecuteToolProbe]),
    ]
    for worker in workers:
        await worker.__aenter__()
    try:
        yield IdentityStack(
            stack, ConversationClient(orchestrator, orchestrator_queue), probe_queue
        )
    finally:
        for worker in reversed(workers):
            await worker.__aexit__(None, None, None)


async def _ask_whoami(
    identity: IdentityStack, fake_model: FakeModelServer, user: str
) -> tuple[str, dict[str, Any]]:
    """One turn of a new conversation for `user` that calls `whoami`: its id and the tool's output."""
    cid = f"identity-{uuid.uuid4()}"
    fake_model.script(completion(tool_calls=[("whoami", {})]), completion("Noted."))
    turn = await identity.conversations.send(cid, "Who am I?", user=user)
    assert turn.ok, turn.error
    [record] = turn.tool_calls
    assert record.ok, record.result
    assert isinstance(record.result, dict)
    return cid, record.result


async def _tool_run_exists(client: Client, call: ToolCall) -> bool:
    try:
        await client.get_workflow_handle(tool_workflow_id(call.call_id)).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


# ---- end to end ----------------------------------------------------------------------------------
async def test_the_team_tool_sees_who_asked_and_the_token_carries_it(
    identity: IdentityStack, fake_model: FakeModelServer
) -> None:
    cid, seen = await _ask_whoami(identity, fake_model, "alice")

    assert seen["user"] == "alice"
    assert seen["conversation_id"] == cid
    # The model read the same thing the record holds.
    chat = [r for r in fake_model.requests if r.path.endswith("/chat/completions")]
    [tool_message] = last_tool_messages(chat[-1])
    assert json.loads(tool_message["content"])["user"] == "alice"

    call, token = await identity.signed_tool_call(cid)
    assert call.user == "alice"
    claims = verify_token(token, {"k1": SECRET}, audience=ENDPOINT, now=datetime.now().astimezone())
    assert claims.sub == "alice"
    assert claims.cid == cid
    await identity.conversations.end(cid)


async def test_a_conversation_without_a_user_names_nobody(
    identity: IdentityStack, fake_model: FakeModelServer
) -> None:
    cid, seen = await _ask_whoami(identity, fake_model, "")
    assert seen["user"] == ""
    _, token = await identity.signed_tool_call(cid)
    claims = verify_token(token, {"k1": SECRET}, audience=ENDPOINT, now=datetime.now().astimezone())
    assert claims.sub == ""
    await identity.conversations.end(cid)


async def test_a_stolen_token_cannot_claim_another_user(
    identity: IdentityStack, fake_model: FakeModelServer
) -> None:
    """Alice's call, copied from the history with its token and sent as mallory's: refused. Not
    refused, the handler would answer it from alice's recorded result."""
    cid, _ = await _ask_whoami(identity, fake_model, "alice")
    call, token = await identity.signed_tool_call(cid)

    as_mallory = call.model_copy(update={"user": "mallory"})
    outcome = await identity.call(as_mallory, token)

    assert not outcome.ok
    assert outcome.error_kind == "unauthenticated", outcome
    assert "issued for user 'alice', not 'mallory'" in (outcome.error or ""), outcome.error
    await identity.conversations.end(cid)


async def test_a_token_minted_for_another_user_is_refused_and_runs_nothing(
    identity: IdentityStack,
) -> None:
    """A validly signed token for the same call but another user: nothing starts."""
    call = ToolCall(
        call_id=f"identity-{uuid.uuid4()}", tool="whoami", conversation_id="c1", user="mallory"
    )
    token = _signed(call.model_copy(update={"user": "alice"}))

    outcome = await identity.call(call, token)

    assert outcome.error_kind == "unauthenticated", outcome
    assert "issued for user 'alice', not 'mallory'" in (outcome.error or "")
    assert not await _tool_run_exists(identity.stack.client("it"), call)
    # The same token with the request it was minted for is served.
    minted_for = call.model_copy(update={"user": "alice", "call_id": f"{call.call_id}-ok"})
    outcome = await identity.call(minted_for, _signed(minted_for))
    assert outcome.ok, outcome.error
    assert outcome.output["user"] == "alice"


async def test_no_raw_secret_in_the_histories(
    identity: IdentityStack, fake_model: FakeModelServer
) -> None:
    cid, _ = await _ask_whoami(identity, fake_model, "alice")
    call, _ = await identity.signed_tool_call(cid)
    histories = [
        (await identity.conversations.handle(cid).fetch_history()).to_json(),
        (
            await identity.stack.client("it")
            .get_workflow_handle(tool_workflow_id(call.call_id))
            .fetch_history()
        ).to_json(),
    ]
    assert TOKEN_HEADER in histories[0], "the token itself is expected in the caller's history"
    forms = [SECRET_B64, SECRET.hex(), base64.urlsafe_b64encode(SECRET).decode().rstrip("=")]
    for text in histories:
        for form in forms:
            assert form not in text
    await identity.conversations.end(cid)


# ---- the token's user claim, unit level -----------------------------------------------------------
def _signed(call: ToolCall, secret: bytes = SECRET) -> str:
    now = int(time.time())
    claims = CallerClaims(
        **bind_call("execute_tool", call).model_dump(),
        iss="orchestrator",
        aud=ENDPOINT,
        iat=now,
        exp=now + 300,
        kid="k1",
    )
    return sign_token(claims, secret)


def _legacy_token(call: ToolCall) -> str:
    """A token as the caller signed it before the user was bound: no `sub` claim at all."""
    now = int(time.time())
    binding = bind_call("execute_tool", call).model_dump(exclude={"sub"})
    claims = {**binding, "iss": "orchestrator", "aud": ENDPOINT, "iat": now, "exp": now + 300}
    claims["kid"] = "k1"
    payload = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    signature = hmac.new(SECRET, payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{_b64(signature)}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _verify(token: str) -> CallerClaims:
    return verify_token(token, {"k1": SECRET}, audience=ENDPOINT, now=datetime.now().astimezone())


def test_the_user_is_bound_like_the_conversation_id() -> None:
    call = ToolCall(call_id="c1", tool="whoami", conversation_id="conv", user="alice")
    claims = _verify(_signed(call))
    assert claims.sub == "alice"
    check_call(claims, bind_call("execute_tool", call))
    for other in ["mallory", "", "Alice", "alice "]:
        served = bind_call("execute_tool", call.model_copy(update={"user": other}))
        with pytest.raises(TokenError, match=f"user 'alice', not '{other}'"):
            check_call(claims, served)


def test_a_token_from_before_the_user_claim_verifies_only_for_no_user() -> None:
    anonymous = ToolCall(call_id="c1", tool="whoami", conversation_id="conv")
    claims = _verify(_legacy_token(anonymous))
    assert claims.sub == ""
    check_call(claims, bind_call("execute_tool", anonymous))
    named = anonymous.model_copy(update={"user": "alice"})
    with pytest.raises(TokenError, match="user '', not 'alice'"):
        check_call(claims, bind_call("execute_tool", named))


def test_list_tools_binds_no_user_and_the_user_has_a_limit() -> None:
    assert bind_call("list_tools", ListToolsRequest(caller="orchestrator")).sub == ""
    ToolCall(call_id="c1", tool="whoami", user="u" * 200)
    with pytest.raises(ValidationError, match="at most 200 characters"):
        ToolCall(call_id="c1", tool="whoami", user="u" * 201)
    # An old payload (no `user`) still decodes, as nobody.
    assert ToolCall.model_validate({"call_id": "c1", "tool": "whoami"}).user == ""
