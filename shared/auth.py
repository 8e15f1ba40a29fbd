"""Authenticated Nexus callers: short-lived signed tokens, never raw secrets, in Nexus headers.

Nexus headers are recorded in the caller's history in clear text, so the caller sends a token:
claims (caller identity, audience = the endpoint, conversation id, expiry, key id) signed with
HMAC-SHA256 under a key shared with that one team. The team's worker verifies it before any
handler code runs and answers UNAUTHENTICATED otherwise, so a rejected call starts nothing.

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

from nexusrpc import HandlerError, HandlerErrorType
from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from temporalio import workflow
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

TOKEN_HEADER = "x-agent-caller-token"
MIN_SECRET_BYTES = 32
# Added to the operation's own schedule-to-close timeout: the server retries a start request with
# the same headers until then, so the token must outlive it.
TOKEN_GRACE = timedelta(seconds=60)
DEFAULT_OPERATION_WINDOW = timedelta(minutes=10)


class TokenError(Exception):
    """Why a token was refused; the message goes back to the caller."""


class CallerClaims(BaseModel):
    iss: str = Field(description="Caller identity, e.g. the orchestrator namespace.")
    aud: str = Field(description="The Nexus endpoint the token is for.")
    cid: str = Field(default="", description="Conversation id.")
    iat: int
    exp: int
    kid: str


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
        description='Caller side, JSON: {"it-tools": "kid:base64secret", ...} per endpoint.',
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
            conversation_id = (
                getattr(input.input, "conversation_id", "") or workflow.info().workflow_id
            )
            claims = CallerClaims(
                iss=self._caller,
                aud=input.endpoint,
                cid=conversation_id,
                iat=int(issued.timestamp()),
                exp=int((issued + window + TOKEN_GRACE).timestamp()),
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

    def _verify(self, headers: Mapping[str, str]) -> None:
        token = next((v for k, v in headers.items() if k.lower() == TOKEN_HEADER), None)
        try:
            verify_token(
                token, self._keys, audience=self._audience, now=datetime.now().astimezone()
            )
        except TokenError as err:
            raise HandlerError(str(err), type=HandlerErrorType.UNAUTHENTICATED) from None

    async def execute_nexus_operation_start(self, input: ExecuteNexusOperationStartInput) -> Any:
        self._verify(input.ctx.headers)
        return await self.next.execute_nexus_operation_start(input)

    async def execute_nexus_operation_cancel(self, input: ExecuteNexusOperationCancelInput) -> None:
        self._verify(input.ctx.headers)
        return await self.next.execute_nexus_operation_cancel(input)
