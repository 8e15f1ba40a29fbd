"""Our tools as an MCP server: every tool the orchestrator discovers, plus `ask_agent`.

One `mcp` low-level `Server`, served over stdio by `agent mcp` (orchestrator.mcp_commands) and
over streamable HTTP by the gateway at `/mcp` (orchestrator.gateway.mcp). It never calls a team
itself: every MCP call is a Temporal update on a conversation workflow, so it takes the path a
model's call takes (Nexus, the signed caller token naming the user, approval gates, circuit
breakers), and it is recorded there.

- `tools/list`: the `tool_catalog` update of the user's *tools conversation* (`mcp-tools-<user>`,
  started on first use): the routes it discovered from the teams' Nexus endpoints, with their
  real JSON schemas and descriptions, plus `ask_agent`.
- `tools/call` of a team's (or a local) tool: the `call_tool` update on that conversation, a
  turn of its own with no model step (orchestrator.direct_call). A call that needs approval waits
  for a decision (`agent approve`, the gateway) at most `AGENT_MCP_APPROVAL_WAIT_SECONDS`, then is
  denied as timed out; meanwhile the client gets progress notifications naming the command.
- `tools/call ask_agent`: `send_message` on a conversation (a new one, or the one named), which
  runs a whole turn; the result names the conversation so the client can continue it.

Failures are MCP tool errors (`isError`) with one readable message, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import mcp_types as types
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from temporalio.client import (
    WithStartWorkflowOperation,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from orchestrator.client import (
    ConversationClient,
    ConversationEndedError,
    InvalidMessageError,
    check_conversation_id,
    check_message,
    check_user,
    collect_start_error,
    continued_as_new,
)
from orchestrator.gateway.auth import now_iso
from orchestrator.mcp_results import (
    ASK_AGENT,
    ASK_AGENT_TOOL,
    ask_result,
    describe_failure,
    direct_result,
    error_result,
    mcp_tool,
    waiting_message,
)
from orchestrator.models import (
    CALL_TOOL_UPDATE,
    CONVERSATION_WORKFLOW,
    STATUS_QUERY,
    TOOL_CATALOG_UPDATE,
    ConversationInput,
    ConversationStatus,
    DirectCall,
    PendingApproval,
    ToolRoute,
    TurnResult,
    Usage,
)
from orchestrator.store_accounts import Accounts, OwnedConversation
from shared.log import get_logger

log = get_logger("mcp")

R = TypeVar("R")

SERVER_NAME = "agent"
TOOLS_CONVERSATION_PREFIX = "mcp-tools-"
# How often a waiting call looks for a pending approval to tell the client about.
APPROVAL_POLL_SECONDS = 1.0
STATUS_QUERY_TIMEOUT = timedelta(seconds=2)
MAX_CONTINUED_RETRIES = 10
INSTRUCTIONS = (
    "The tools of a durable agent platform: each team's tools (run on Temporal, in the team's "
    "own namespace, with approvals and circuit breakers), and ask_agent, which asks the agent "
    "itself (it picks and calls tools). A call that needs a person's approval waits for it."
)


class McpSettings(BaseSettings):
    """`AGENT_MCP_*`: how `agent mcp` and the gateway's `/mcp` serve MCP clients."""

    model_config = SettingsConfigDict(env_prefix="AGENT_MCP_", env_file=".env", extra="ignore")

    approval_wait_seconds: float = Field(
        default=300.0,
        gt=0,
        le=30 * 86400,
        description="How long an MCP client's direct tool call waits for a person's decision "
        "before it is denied as timed out (at most ORCHESTRATOR_APPROVAL_TIMEOUT_SECONDS).",
    )
    catalog_max_age_seconds: float = Field(
        default=60.0,
        ge=0,
        le=86400,
        description="tools/list asks the teams' endpoints again when the catalog it last "
        "discovered is older than this (0: every time).",
    )


class McpCallError(Exception):
    """A call that cannot be answered: its message is the MCP tool error's text."""


UserOf = Callable[[ServerRequestContext[Any, Any]], str]
Notify = Callable[[str], Awaitable[None]]  # a progress notification to the waiting client


@dataclass
class AgentMcp:
    """What the MCP server reaches: conversations on Temporal, and (in the gateway) the store
    that says who owns which conversation."""

    conversations: ConversationClient
    settings: McpSettings
    owners: Accounts | None = None  # the gateway's store: conversations belong to the key's user

    def server(self, user_of: UserOf) -> Server[Any]:
        """An MCP server whose calls act as `user_of(request context)`."""

        async def list_tools(
            ctx: ServerRequestContext[Any, Any], _: types.PaginatedRequestParams | None
        ) -> types.ListToolsResult:
            try:
                routes = await self.catalog(user_of(ctx))
            except McpCallError as error:
                raise MCPError(types.INTERNAL_ERROR, str(error)) from None
            except Exception as error:  # one readable line for the client, not a traceback
                raise MCPError(types.INTERNAL_ERROR, describe_failure(error)) from None
            tools = [mcp_tool(route) for route in routes if route.model_name != ASK_AGENT]
            return types.ListToolsResult(tools=[*tools, ASK_AGENT_TOOL])

        async def call_tool(
            ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
        ) -> types.CallToolResult:
            try:
                user = user_of(ctx)
                arguments = dict(params.arguments or {})
                notify = _notifier(ctx)
                if params.name == ASK_AGENT:
                    return await self.ask_agent(user, arguments, notify)
                return await self.call(user, params.name, arguments, notify)
            except McpCallError as error:
                return error_result(str(error))
            except Exception as error:
                return error_result(describe_failure(error))

        return Server(
            SERVER_NAME,
            title="Durable agent platform",
            instructions=INSTRUCTIONS,
            on_list_tools=list_tools,
            on_call_tool=call_tool,
        )

    # ---- tools/list ---------------------------------------------------------------------------
    async def catalog(self, user: str) -> list[ToolRoute]:
        """The tools the user's tools conversation discovered, with their specs."""
        conversation_id = await self.tools_conversation(user)
        routes: list[ToolRoute] = await self._update(
            conversation_id,
            user,
            TOOL_CATALOG_UPDATE,
            self.settings.catalog_max_age_seconds,
            list[ToolRoute],
        )
        return routes

    # ---- tools/call ---------------------------------------------------------------------------
    async def call(
        self, user: str, tool: str, arguments: dict[str, Any], notify: Notify
    ) -> types.CallToolResult:
        """One direct call of a discovered tool, through the user's tools conversation."""
        conversation_id = await self.tools_conversation(user)
        call = DirectCall(
            tool=tool,
            arguments=json.dumps(arguments, ensure_ascii=False),
            approval_timeout_seconds=self.settings.approval_wait_seconds,
        )
        result: TurnResult = await self._watching_approvals(
            conversation_id,
            notify,
            self._update(conversation_id, user, CALL_TOOL_UPDATE, call, TurnResult),
            only=lambda pending: pending.tool == tool or tool.endswith(f"__{pending.tool}"),
        )
        return direct_result(conversation_id, result)

    async def ask_agent(
        self, user: str, arguments: dict[str, Any], notify: Notify
    ) -> types.CallToolResult:
        """One whole turn of a conversation (new, or the one named) as the user."""
        message = arguments.get("message")
        given = arguments.get("conversation_id")
        extra = sorted(set(arguments) - {"message", "conversation_id"})
        if extra:
            raise McpCallError(f"ask_agent: unknown argument {extra[0]!r}")
        if not isinstance(message, str):
            raise McpCallError("ask_agent: message is required and must be a string")
        if given is not None and (not isinstance(given, str) or not given.strip()):
            raise McpCallError("ask_agent: conversation_id must be a non-empty string")
        try:
            check_message(message)
            if given is not None:
                check_conversation_id(given)
        except InvalidMessageError as error:
            raise McpCallError(f"ask_agent: {error}") from None
        if given is not None:
            conversation_id = await self._continuing(given, user)
        else:
            conversation_id = await self._new_conversation(user, message)
        send = self.conversations.send(conversation_id, message, user=user)
        try:
            result = await self._watching_approvals(conversation_id, notify, send)
        except (ConversationEndedError, WorkflowAlreadyStartedError):
            raise McpCallError(
                f"conversation {conversation_id} has ended; omit conversation_id to start a new one"
            ) from None
        return ask_result(conversation_id, result)

    # ---- conversations ------------------------------------------------------------------------
    async def tools_conversation(self, user: str) -> str:
        """The conversation that holds a user's direct tool calls (their `agent history`)."""
        try:
            check_user(user)
        except InvalidMessageError as error:
            raise McpCallError(str(error)) from None
        conversation_id = f"{TOOLS_CONVERSATION_PREFIX}{user}"
        if self.owners is not None:
            title = "MCP tool calls"
            owner = await self.owners.claim_conversation(_owned(conversation_id, user, title))
            if owner != user:
                raise McpCallError(f"conversation {conversation_id} belongs to someone else")
        return conversation_id

    async def _new_conversation(self, user: str, message: str) -> str:
        if self.owners is None:
            return f"conv-{uuid.uuid4().hex[:12]}"
        conversation_id = f"c-{uuid.uuid4().hex}"
        title = " ".join(message.split())[:80]
        await self.owners.claim_conversation(_owned(conversation_id, user, title))
        return conversation_id

    async def _continuing(self, conversation_id: str, user: str) -> str:
        if self.owners is not None:  # the gateway: only the key user's own conversations
            owned = await self.owners.owned_conversation(conversation_id[:200])
            if owned is None or owned.user != user:
                raise McpCallError(f"no conversation {conversation_id[:200]!r}")
        return conversation_id

    async def _update(
        self, conversation_id: str, user: str, update: str, arg: Any, result_type: type[R]
    ) -> R:
        """Execute `update` on the conversation, starting it if it is not running (a tools
        conversation that ended is started again), following a continue-as-new."""
        update_id = uuid.uuid4().hex
        for tries in range(1, MAX_CONTINUED_RETRIES + 2):
            start: WithStartWorkflowOperation[object, Usage] = WithStartWorkflowOperation(
                CONVERSATION_WORKFLOW,
                ConversationInput(conversation_id=conversation_id, user=user),
                id=conversation_id,
                task_queue=self.conversations.task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            )
            try:
                result: R = await self.conversations.client.execute_update_with_start_workflow(
                    update,
                    arg,
                    start_workflow_operation=start,
                    result_type=result_type,
                    id=update_id,
                )
                return result
            except WorkflowUpdateFailedError as error:
                if tries > MAX_CONTINUED_RETRIES or not continued_as_new(error):
                    raise
            finally:
                await collect_start_error(start)
            await asyncio.sleep(min(0.05 * tries, 0.5))
        raise AssertionError("unreachable")

    async def _watching_approvals(
        self,
        conversation_id: str,
        notify: Notify,
        work: Awaitable[R],
        only: Callable[[PendingApproval], bool] = lambda _: True,
    ) -> R:
        """Await `work`; meanwhile, tell the client once about each call of the conversation that
        waits for a decision (progress notifications)."""

        async def watch() -> None:
            told: set[str] = set()
            while True:
                await asyncio.sleep(APPROVAL_POLL_SECONDS)
                for pending in await self._pending(conversation_id):
                    if pending.call_id not in told and only(pending):
                        told.add(pending.call_id)
                        await notify(waiting_message(conversation_id, pending))

        watcher = asyncio.ensure_future(watch())
        try:
            return await work
        finally:
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await watcher

    async def _pending(self, conversation_id: str) -> list[PendingApproval]:
        try:
            status: ConversationStatus = await self.conversations.handle(conversation_id).query(
                STATUS_QUERY, result_type=ConversationStatus, rpc_timeout=STATUS_QUERY_TIMEOUT
            )
        except Exception:  # a courtesy (not started yet, or busy in a model step): try again
            return []
        return status.pending_approvals


# ---- what the client reads -------------------------------------------------------------------


def _notifier(ctx: ServerRequestContext[Any, Any]) -> Notify:
    async def notify(message: str) -> None:
        log.info("mcp call waits", detail=message)
        with contextlib.suppress(Exception):  # no progress token, or the client left
            await ctx.session.report_progress(0, None, message)

    return notify


def _owned(conversation_id: str, user: str, title: str) -> OwnedConversation:
    return OwnedConversation(
        conversation_id=conversation_id, user=user, title=title, created_at=now_iso("microseconds")
    )
