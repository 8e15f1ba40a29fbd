"""The gateway's `/mcp`: our tools and `ask_agent` over MCP's streamable HTTP transport.

The same server `agent mcp` serves over stdio (orchestrator.mcp_server), behind the gateway's own
key check: `Authorization: Bearer agk_...`, answered 401 like every /v1 route when missing, bad or
revoked, and every call acts as the key's user (conversations they own, their tools conversation,
their name in the tool calls' signed caller token). Stateless: any gateway replica answers any
request, and a gateway restart costs an MCP client nothing. No DNS-rebinding host check: a
browser page cannot attach the bearer key, and the gateway is reached by other host names behind
a proxy or in compose.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mcp.server.context import ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from orchestrator.gateway.auth import verify_key
from orchestrator.gateway.errors import error_response
from orchestrator.gateway.services import Services
from orchestrator.mcp_server import AgentMcp, McpSettings

MCP_PATH = "/mcp"
_USER = "agent.user"  # the ASGI scope key the key check leaves the user under


class McpEndpoint:
    """The ASGI app at /mcp: the key check, then the MCP session manager."""

    def __init__(self, services: Services, settings: McpSettings) -> None:
        self._services = services
        agent = AgentMcp(
            conversations=services.conversations,
            settings=settings,
            owners=services.store,
        )
        self._manager = StreamableHTTPSessionManager(
            app=agent.server(_user_of),
            stateless=True,
            security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )

    def route(self) -> Route:
        return Route(MCP_PATH, endpoint=self, methods=["GET", "POST", "DELETE"])

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The session manager's task group: run it for the gateway's lifetime."""
        async with self._manager.run():
            yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        header = Headers(scope=scope).get("authorization", "")
        scheme, _, key = header.partition(" ")
        if not key.strip() or scheme.lower() != "bearer":
            await _unauthenticated("missing API key: send `Authorization: Bearer agk_...`")(
                scope, receive, send
            )
            return
        record = await verify_key(self._services.store, key.strip())
        if record is None:
            await _unauthenticated("invalid or revoked API key")(scope, receive, send)
            return
        await self._manager.handle_request({**scope, _USER: record.user}, receive, send)


def _unauthenticated(message: str) -> Any:
    return error_response(
        401, "unauthenticated", message, {"WWW-Authenticate": 'Bearer realm="agent"'}
    )


def _user_of(ctx: ServerRequestContext[Any, Any]) -> str:
    request = ctx.request
    user = request.scope.get(_USER) if request is not None else None
    if not isinstance(user, str):  # never reached: every request passed the key check
        raise RuntimeError("no authenticated user on this MCP request")
    return user
