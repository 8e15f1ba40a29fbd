"""Authenticated Nexus callers: short-lived signed tokens, never raw secrets, in Nexus headers.

Nexus headers are recorded in the caller's history in clear text, so the caller sends a token:
claims (caller identity, audience = the endpoint, expiry, key id) signed with HMAC-SHA256 under a
key shared with that one team. The team's worker verifies it before any handler code runs and
answers UNAUTHENTICATED otherwise, so a rejected call starts nothing.

Anyone who can read the caller's history can copy the token, so a token authorizes exactly one
call: the claims also bind the operation, the tool, the call id, a hash of the arguments, the
conversation id and the user the call is made for (`sub`, ToolCall.user: asserted by the
orchestrator, which signs it), and the team compares each with the request it serves. A copied
token can only repeat that same call, for the same user, which the handler answers from the
call's recorded result (the tool workflow id comes from the call id), so it neither runs a tool
nor reveals anything the history did not already hold.

Keys are per team and carry an id (`kid`), so a team can accept an old and a new key while the
orchestrator moves to the new one (see README, "Rotating keys").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import pydantic_core
from nexusrpc import HandlerError, HandlerErrorType
from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from temporalio import workflow
from temporalio.nexus import WorkflowHandle
from temporalio.worker import (
    ExecuteNexusOperationCancelInput,
    ExecuteNexusOperationStartInput,
    Interceptor,
    NexusOperationInboundInterceptor,
    StartNexusOperationInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

from shared.tools import ToolCall, tool_workflow_id

TOKEN_HEADER = "x-agent-caller-token"
MIN_SECRET_BYTES = 32
# A token lives for the operation's schedule-to-close timeout plus this allowance, no longer: the
# server retries the start request (same headers) only until schedule-to-close, so nothing
# legitimate arrives later. The allowance covers the gap between `iat` (the caller's workflow task
# start) and the operation's scheduling when that task completes, plus clock skew between the
# Temporal server, whose clock `iat` comes from, and the team worker's host (NTP keeps both well
# inside a few seconds). Every extra second is a second in which a copied token still verifies.
TOKEN_CLOCK_SKEW = timedelta(seconds=10)
DEFAULT_OPERATION_WINDOW = timedelta(minutes=10)


class TokenError(Exception):
    """Why a token was refused; the message goes back to the caller."""


class CallBinding(BaseModel):
    """The one call a token authorizes, as both sides derive it from the operation's input."""

    op: str = Field(description="Nexus operation name: list_tools or execute_tool.")
    tool: str = Field(description="Tool name; empty for operations that run no tool.")
    call_id: str = Field(description="ToolCall.call_id; empty for operations that run no tool.")
    args_sha256: str = Field(description="sha256 of the canonical JSON of the tool arguments.")
    cid: str = Field(description="Conversation id; empty when the input names none.")
    # A default, unlike the fields above: a token minted before the user was bound has no `sub`,
    # and reads as "no user", so it verifies for a request naming no user (user "") and for no
    # other. Such tokens live minutes (their operation's timeout), so only calls in flight across
    # the upgrade meet this rule.
    sub: str = Field(
        default="", description="ToolCall.user, who the call is made for; empty: nobody named."
    )
    approval_sha256: str = Field(
        default="", description="sha256 of the call's approval (who decided what); empty: none."
    )


# Field -> how a refusal names it. Ordered: the first mismatch is the one reported.
BOUND_FIELDS = {
    "op": "operation",
    "tool": "tool",
    "call_id": "call id",
    "args_sha256": "arguments",
    "cid": "conversation id",
    "sub": "user",
    "approval_sha256": "approval",
}


class CallerClaims(CallBinding):
    iss: str = Field(description="Caller identity, e.g. the orchestrator namespace.")
    aud: str = Field(description="The Nexus endpoint the token is for.")
    iat: int
    exp: int
    kid: str


def canonical_sha256(value: Any) -> str:
    """Hash of a JSON-able value that is the same before and after the payload converter.

    `to_json` first, so values the converter turns into JSON (dates, models, tuples) hash as the
    JSON the handler will decode; then one fixed serialization of that JSON.
    """
    plain = json.loads(pydantic_core.to_json(value))
    text = json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def bind_call(operation: str, request: Any) -> CallBinding:
    """What a token for `operation` with this input must carry. Used by signer and verifier alike."""
    if isinstance(request, ToolCall):
        return CallBinding(
            op=operation,
            tool=request.tool,
            call_id=request.call_id,
            args_sha256=canonical_sha256(request.args),
            cid=request.conversation_id,
            sub=request.user,
            approval_sha256=(
                canonical_sha256(request.approval.model_dump(mode="json"))
                if request.approval is not None
                else ""
            ),
        )
    # Inputs that run no tool (ListToolsRequest) are bound as a whole.
    return CallBinding(
        op=operation,
        tool="",
        call_id="",
        args_sha256=canonical_sha256(request),
        cid=str(getattr(request, "conversation_id", "") or ""),
        sub=str(getattr(request, "user", "") or ""),
    )


def check_call(claims: CallBinding, served: CallBinding) -> None:
    """Raise TokenError naming the first bound field in which the served request differs."""
    for name, label in BOUND_FIELDS.items():
        signed, requested = getattr(claims, name), getattr(served, name)
        if signed == requested:
            continue
        if name == "args_sha256":
            raise TokenError("caller token was issued for different arguments")
        if name == "approval_sha256":
            raise TokenError("caller token was issued for a different approval (or none)")
        raise TokenError(f"caller token was issued for {label} '{signed}', not '{requested}'")


def check_cancel(claims: CallBinding, operation: str, operation_token: str) -> None:
    """A cancel request may only cancel the operation of the call its token was issued for."""
    if claims.op != operation:
        raise TokenError(f"caller token was issued for operation '{claims.op}', not '{operation}'")
    if not claims.call_id:
        return
    try:
        workflow_id = WorkflowHandle[Any].from_token(operation_token).workflow_id
    except (TypeError, ValueError):
        raise TokenError("caller token does not cover this operation token") from None
    if workflow_id != tool_workflow_id(claims.call_id):
        raise TokenError(
            f"caller token was issued for call id '{claims.call_id}', "
            f"not the operation of workflow '{workflow_id}'"
        )


class SigningKey(BaseModel):
    kid: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    secret: bytes

    @classmethod
    def parse(cls, text: str) -> SigningKey:
        """`kid:secret`, the secret as base64 (at least 32 bytes once decoded)."""
        kid, sep, encoded = text.partition(":")
        if not sep:
            raise ValueError("expected 'kid:base64secret'")
        return cls(kid=kid, secret=decode_secret(encoded))


def decode_secret(encoded: str) -> bytes:
    try:
        secret = base64.b64decode(encoded.strip(), validate=True)
    except ValueError:
        raise ValueError("the secret is not valid base64") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"the secret must be at least {MIN_SECRET_BYTES} bytes")
    return secret


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_token(claims: CallerClaims, secret: bytes) -> str:
    payload = _b64(json.dumps(claims.model_dump(), separators=(",", ":"), sort_keys=True).encode())
    signature = hmac.new(secret, payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{_b64(signature)}"


def verify_token(
    token: str | None, keys: Mapping[str, bytes], *, audience: str, now: datetime
) -> CallerClaims:
    if not token:
        raise TokenError("missing caller token")
    payload, sep, signature = token.partition(".")
    try:
        claims = CallerClaims.model_validate_json(_unb64(payload)) if sep else None
        given = _unb64(signature)
    except (ValidationError, ValueError):
        claims = None
    if claims is None:
        raise TokenError("malformed caller token")
    secret = keys.get(claims.kid)
    if secret is None:
        raise TokenError(f"caller token signed with unknown key '{claims.kid}'")
    expected = hmac.new(secret, payload.encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, given):
        raise TokenError("caller token signature is invalid")
    if claims.aud != audience:
        raise TokenError(f"caller token is for '{claims.aud}', not '{audience}'")
    if now.timestamp() >= claims.exp:
        raise TokenError("caller token has expired")
    return claims


class NexusAuthSettings(BaseSettings):
    """`NEXUS_AUTH_*`. Callers set SIGNING_KEYS; teams set AUDIENCE and VERIFY_KEYS."""

    model_config = SettingsConfigDict(env_prefix="NEXUS_AUTH_", env_file=".env", extra="ignore")

    caller: str = "orchestrator"
    signing_keys: dict[str, str] = Field(
        default_factory=dict,
        description='Caller side, JSON: {"hr-tools": "kid:base64secret", ...} per endpoint.',
    )
    audience: str | None = Field(default=None, description="Team side: this team's endpoint.")
    verify_keys: dict[str, str] = Field(
        default_factory=dict,
        description='Team side, JSON: {"kid": "base64secret"}; several during rotation.',
    )
    required: bool = Field(
        default=False, description="Team side: refuse to start without verify keys."
    )

    @field_validator("signing_keys")
    @classmethod
    def _check_signing(cls, value: dict[str, str]) -> dict[str, str]:
        for endpoint, text in value.items():
            try:
                SigningKey.parse(text)
            except ValueError as err:
                raise ValueError(f"signing key for '{endpoint}': {err}") from None
        return value

    @field_validator("verify_keys")
    @classmethod
    def _check_verify(cls, value: dict[str, str]) -> dict[str, str]:
        for kid, encoded in value.items():
            try:
                decode_secret(encoded)
            except ValueError as err:
                raise ValueError(f"verify key '{kid}': {err}") from None
        return value

    def signing(self) -> dict[str, SigningKey]:
        return {endpoint: SigningKey.parse(text) for endpoint, text in self.signing_keys.items()}

    def verifying(self) -> dict[str, bytes]:
        return {kid: decode_secret(encoded) for kid, encoded in self.verify_keys.items()}

    def check_team_side(self, service: str) -> None:
        """Raise ValueError for a team worker whose auth settings cannot work."""
        if self.verify_keys and not self.audience:
            raise ValueError(f"NEXUS_AUTH_AUDIENCE must name {service}'s Nexus endpoint")
        if self.required and not self.verify_keys:
            raise ValueError("NEXUS_AUTH_REQUIRED is set but NEXUS_AUTH_VERIFY_KEYS is empty")


# ---- caller side: attach a token to every Nexus operation a workflow starts -------------------
class CallerTokenInterceptor(Interceptor):
    """Worker interceptor for callers: signs a token for each Nexus operation's endpoint."""

    def __init__(self, keys: Mapping[str, SigningKey], caller: str) -> None:
        self._keys = dict(keys)
        self._caller = caller

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor] | None:
        keys, caller = self._keys, self._caller

        class _Inbound(WorkflowInboundInterceptor):
            def init(self, outbound: WorkflowOutboundInterceptor) -> None:
                super().init(_TokenOutbound(outbound, keys, caller))

        return _Inbound


class _TokenOutbound(WorkflowOutboundInterceptor):
    def __init__(
        self, next: WorkflowOutboundInterceptor, keys: Mapping[str, SigningKey], caller: str
    ) -> None:
        super().__init__(next)
        self._keys = keys
        self._caller = caller

    async def start_nexus_operation(self, input: StartNexusOperationInput[Any, Any]) -> Any:
        key = self._keys.get(input.endpoint)
        if key is not None:
            # workflow.now() keeps the token identical on replay.
            issued = workflow.now()
            window = input.schedule_to_close_timeout or DEFAULT_OPERATION_WINDOW
            claims = CallerClaims(
                **bind_call(input.operation_name, input.input).model_dump(),
                iss=self._caller,
                aud=input.endpoint,
                iat=int(issued.timestamp()),
                exp=int((issued + window + TOKEN_CLOCK_SKEW).timestamp()),
                kid=key.kid,
            )
            input.headers = {**(input.headers or {}), TOKEN_HEADER: sign_token(claims, key.secret)}
        return await self.next.start_nexus_operation(input)


# ---- team side: verify before any handler code runs --------------------------------------------
class CallerVerificationInterceptor(Interceptor):
    """Worker interceptor for teams: refuses Nexus requests without a valid token."""

    def __init__(self, keys: Mapping[str, bytes], audience: str) -> None:
        self._keys = dict(keys)
        self._audience = audience

    def intercept_nexus_operation(
        self, next: NexusOperationInboundInterceptor
    ) -> NexusOperationInboundInterceptor:
        return _VerifyingInbound(next, self._keys, self._audience)


class _VerifyingInbound(NexusOperationInboundInterceptor):
    def __init__(
        self, next: NexusOperationInboundInterceptor, keys: Mapping[str, bytes], audience: str
    ) -> None:
        super().__init__(next)
        self._keys = keys
        self._audience = audience

    def _claims(self, headers: Mapping[str, str]) -> CallerClaims:
        token = next((v for k, v in headers.items() if k.lower() == TOKEN_HEADER), None)
        return verify_token(
            token, self._keys, audience=self._audience, now=datetime.now().astimezone()
        )

    async def execute_nexus_operation_start(self, input: ExecuteNexusOperationStartInput) -> Any:
        try:
            claims = self._claims(input.ctx.headers)
            check_call(claims, bind_call(input.ctx.operation, input.input))
        except TokenError as err:
            raise HandlerError(str(err), type=HandlerErrorType.UNAUTHENTICATED) from None
        return await self.next.execute_nexus_operation_start(input)

    async def execute_nexus_operation_cancel(self, input: ExecuteNexusOperationCancelInput) -> None:
        # The server sends the start request's headers with the cancel request too.
        try:
            claims = self._claims(input.ctx.headers)
            check_cancel(claims, input.ctx.operation, input.token)
        except TokenError as err:
            raise HandlerError(str(err), type=HandlerErrorType.UNAUTHENTICATED) from None
        return await self.next.execute_nexus_operation_cancel(input)
