"""MCP servers' tools published as the team's own: discovered once at worker start, then run
like any registered tool (tool workflow per call id, retries, timeouts, approval, the Nexus path).

Arguments are checked against the server's own JSON schema before anything starts, so a bad call
is the same clear BAD_REQUEST as for a Python tool. A call of a stateful server's `rebuild` tool
is recorded in the conversation's session workflow (shared.mcp_session) after it succeeds; a
worker without the live session replays that journal into a new one first.
"""

from __future__ import annotations

import asyncio
import json
import re
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from mcp_types import CallToolResult, TextContent, Tool
from pydantic import BaseModel, ConfigDict
from pydantic_core import to_jsonable_python
from temporalio.client import (
    WithStartWorkflowOperation,
    WorkflowQueryRejectedError,
    WorkflowUpdateFailedError,
)
from temporalio.common import QueryRejectCondition, WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from shared.contract import TOOL_NAME_PATTERN, ToolSpec
from shared.log import get_logger
from shared.manifest import ManifestError, TeamManifest
from shared.mcp_client import McpConnection, McpConnections, McpUnavailableError, reason
from shared.mcp_config import McpServerSource
from shared.mcp_session import (
    JOURNAL_FULL,
    JOURNAL_QUERY,
    MAX_JOURNAL_ENTRIES,
    RECORD_UPDATE,
    SESSION_MOVED,
    JournalEntry,
    McpSessionWorkflow,
    SessionJournal,
    mcp_session_workflow_id,
)
from shared.tools import (
    RegisteredTool,
    ToolArgumentsError,
    ToolContext,
    ToolError,
    ToolRegistry,
)

log = get_logger(__name__)


class McpArguments(BaseModel):
    """Stands in for a Python tool's arguments model: an MCP tool's schema is the server's own
    JSON schema (`spec.parameters`), checked by `McpTool.validate_arguments`."""

    model_config = ConfigDict(extra="allow")


@dataclass(frozen=True)
class McpTool(RegisteredTool):
    source: McpServerSource | None = None
    mcp_name: str = ""
    connections: McpConnections | None = None
    validator: Draft202012Validator | None = None

    def validate_arguments(self, args: dict[str, Any]) -> dict[str, Any]:
        assert self.validator is not None
        problems = [
            f"'{'.'.join(str(p) for p in error.absolute_path) or '(arguments)'}': "
            + (error.message if len(error.message) <= 200 else error.message[:200] + "…")
            for error in sorted(self.validator.iter_errors(args), key=lambda e: list(e.path))
        ]
        if problems:
            raise ToolArgumentsError(
                f"invalid arguments for tool '{self.spec.name}': " + "; ".join(problems[:10])
            )
        return args

    async def invoke(self, args: dict[str, Any], context: ToolContext) -> Any:
        assert self.source is not None and self.connections is not None
        self.validate_arguments(args)
        source = self.source
        journaled = source.session == "conversation" and bool(context.conversation_id)
        try:
            try:
                result = await self._call_once(args, context, journaled)
            except McpUnavailableError as err:
                if err.timed_out or err.fresh:
                    raise
                # A session kept open here may have died since its last call (a stdio server
                # that exited): one fresh session before this attempt counts as failed.
                result = await self._call_once(args, context, journaled)
        except McpUnavailableError:
            self.connections.failed(source)
            raise
        self.connections.succeeded(source)
        return tool_output(source.name, self.mcp_name, result)

    async def _call_once(
        self, args: dict[str, Any], context: ToolContext, journaled: bool
    ) -> CallToolResult:
        assert self.source is not None and self.connections is not None
        connection, opened = await self.connections.connection(
            self.source, context.conversation_id, context.user
        )
        try:
            # Only a conversation's session orders its calls; a shared one serves them at once.
            async with connection.lock if journaled else nullcontext():
                if journaled:
                    return await self._call_in_session(connection, opened, args, context)
                return await connection.call(self.mcp_name, args)
        except McpUnavailableError as err:
            err.fresh = opened
            raise

    async def _call_in_session(
        self, connection: McpConnection, opened: bool, args: dict[str, Any], context: ToolContext
    ) -> CallToolResult:
        source = self.source
        assert source is not None
        records = self.mcp_name in source.rebuild
        position = await _catch_up(connection, context, replaying=opened, recording=records)
        result = connection.applied.get(context.call_id) if records else None
        if result is None:
            result = await connection.call(self.mcp_name, args)
        if records and not result.is_error:
            connection.applied[context.call_id] = result
            entry = JournalEntry(
                call_id=context.call_id, tool=self.mcp_name, arguments=args, after=position
            )
            await _record(connection, context, entry)
        return result


def tool_output(source: str, tool: str, result: CallToolResult) -> Any:
    """The MCP result as a tool output: structured content when the server gives it, else the
    text (parsed when it is JSON). An `isError` result is the tool's own refusal."""
    texts = [block.text for block in result.content if isinstance(block, TextContent)]
    text = "\n".join(texts)
    if result.is_error:
        raise ToolError(text or f"MCP tool '{tool}' on '{source}' reported an error")
    if result.structured_content is not None:
        return to_jsonable_python(result.structured_content)
    others = [block.type for block in result.content if not isinstance(block, TextContent)]
    if len(texts) == 1 and not others:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return {"text": text, **({"other_content": others} if others else {})}


async def _catch_up(
    connection: McpConnection, context: ToolContext, *, replaying: bool, recording: bool
) -> int:
    """Apply the journal's calls this live session has not applied yet, in order: all of them
    for a new session (a rebuild), those another worker applied for one kept open here.
    Returns the journal's length, which the session now reflects."""
    source = connection.source
    handle = context.client.get_workflow_handle(
        mcp_session_workflow_id(source.name, context.conversation_id)
    )
    try:
        entries: list[JournalEntry] = await handle.query(
            JOURNAL_QUERY,
            result_type=list[JournalEntry],
            reject_condition=QueryRejectCondition.NOT_OPEN,
        )
    except (RPCError, WorkflowQueryRejectedError) as err:
        if isinstance(err, RPCError) and err.status != RPCStatusCode.NOT_FOUND:
            raise
        # No session recorded, or it ended (idle past its lifetime): a session kept open here
        # holds state that no longer exists anywhere else, so the next attempt starts afresh.
        if connection.applied:
            connection.retire()
            raise McpUnavailableError(
                source.name, "its session ended; starting a new one"
            ) from None
        return 0
    if recording and len(entries) >= MAX_JOURNAL_ENTRIES:
        raise ToolError(
            f"this conversation's '{source.name}' session holds {len(entries)} recorded calls, "
            "the most it can rebuild; start a new conversation"
        )
    missing = [entry for entry in entries if entry.call_id not in connection.applied]
    if missing:
        log.info(
            "rebuilding MCP session" if replaying else "catching up MCP session",
            source=source.name,
            calls=len(missing),
        )
    for entry in missing:
        try:
            result = await connection.call(entry.tool, entry.arguments)
        except McpUnavailableError:
            raise
        except ToolError as err:  # the server refused it this time: the rebuild goes on
            result = CallToolResult(content=[TextContent(type="text", text=err.message)])
            result.is_error = True
        if result.is_error:
            log.warning("a replayed call failed", source=source.name, tool=entry.tool)
        connection.applied[entry.call_id] = result
    return len(entries)


async def _record(connection: McpConnection, context: ToolContext, entry: JournalEntry) -> None:
    """Record an applied call, unless the journal moved on since this session caught up (a call
    of the same conversation applied on another worker): then this session's order differs from
    the journal's, so it is retired, and the retry rebuilds it in the journal's order."""
    source = connection.source
    start = WithStartWorkflowOperation(
        McpSessionWorkflow.run,
        SessionJournal(source=source.name, conversation_id=context.conversation_id),
        id=mcp_session_workflow_id(source.name, context.conversation_id),
        task_queue=context.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    try:
        # No update id from the call id: the server would answer a retry with the earlier
        # attempt's refusal. The handler itself records a call id once.
        await context.client.execute_update_with_start_workflow(
            RECORD_UPDATE, entry, start_workflow_operation=start, result_type=int
        )
    except WorkflowUpdateFailedError as err:
        connection.retire()
        cause = err.cause
        if isinstance(cause, ApplicationError) and cause.type == JOURNAL_FULL:
            raise ToolError(cause.message) from None
        if isinstance(cause, ApplicationError) and cause.type == SESSION_MOVED:
            raise McpUnavailableError(source.name, cause.message) from None
        raise


def mcp_tool(
    source: McpServerSource, listed: Tool, connections: McpConnections, service: str
) -> McpTool:
    name = source.published_name(listed.name)
    schema = dict(listed.input_schema or {"type": "object"})
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as err:
        raise ManifestError(
            f"MCP server '{source.name}': tool '{listed.name}' has an invalid input schema "
            f"({err.message})"
        ) from None
    policy = source.approval.get(listed.name)
    if policy is not None:
        policy.check_fields(name, (schema.get("properties") or {}).keys())
    spec = ToolSpec(
        name=name,
        description=(listed.description or listed.title or listed.name).strip()[:4000],
        parameters=schema,
        approval=policy or ToolSpec.model_fields["approval"].get_default(call_default_factory=True),
        # One execution may open the session (and replay its journal) before the call itself,
        # each bounded on its own; the activity's limit covers both.
        timeout_seconds=source.timeout_seconds + source.startup_timeout_seconds,
        service=service,
    )

    async def unused(**_: Any) -> Any:  # invoke() is overridden: the server runs the tool
        raise NotImplementedError

    return McpTool(
        spec=spec,
        function=unused,
        arguments_model=McpArguments,
        context_parameter=None,
        max_attempts=source.max_attempts,
        # A conversation's session queries and updates its session workflow on this worker.
        local_activity=source.session != "conversation",
        source=source,
        mcp_name=listed.name,
        connections=connections,
        validator=Draft202012Validator(schema),
    )


async def publish_mcp_servers(
    team: TeamManifest, registry: ToolRegistry, connections: McpConnections
) -> list[str]:
    """List every MCP server's tools and add the published ones to the team's registry.

    Runs at worker start. A manifest that does not match what a server lists stops the start
    with one line, as any bad manifest does. A server that cannot be reached does not take the
    team's other tools down with it: the worker starts without its tools and lists it again
    every `connections.retry_seconds` until it answers. Returns the names added now."""
    # Listed side by side: each server's start-up (a process, an import) is most of the wait.
    listings = await asyncio.gather(
        *(_listed_tools(source, connections) for source in team.mcp_servers),
        return_exceptions=True,
    )
    added: list[str] = []
    for source, listed in zip(team.mcp_servers, listings, strict=True):
        if isinstance(listed, McpUnavailableError):
            log.error(
                "MCP server not published yet; listing it again in the background",
                source=source.name,
                error=listed.message,
                retry_seconds=connections.retry_seconds,
            )
            connections.in_background(_publish_when_listed(team, source, registry, connections))
            continue
        if isinstance(listed, BaseException):
            raise listed
        added += _publish(team, source, listed, registry, connections)
    return added


def _publish(
    team: TeamManifest,
    source: McpServerSource,
    listed: list[Tool],
    registry: ToolRegistry,
    connections: McpConnections,
) -> list[str]:
    names = {tool.name for tool in listed}
    samples = [call.tool for call in [*source.sample_calls, *source.session_sample_calls]]
    for wanted in [*source.allow, *source.approval, *source.rebuild, *samples]:
        if wanted not in names:
            raise ManifestError(
                f"{team.package}: MCP server '{source.name}' has no tool '{wanted}' "
                f"(it lists: {', '.join(sorted(names)) or 'none'})"
            )
    built: list[McpTool] = []
    for tool in listed:
        if not source.publishes(tool.name):
            continue
        name = source.published_name(tool.name)
        if not re.match(TOOL_NAME_PATTERN, name):
            log.warning("MCP tool skipped: not a valid tool name", source=source.name, tool=name)
            continue
        if registry.get(name) is not None:
            raise ManifestError(
                f"{team.package}: MCP server '{source.name}' tool '{name}' clashes with a "
                "tool already published; set a prefix"
            )
        built.append(mcp_tool(source, tool, connections, registry.service))
    for registered in built:  # all or none
        registry.add_registered(registered)
    log.info("MCP tools published", source=source.name, tools=len(built))
    return [registered.spec.name for registered in built]


async def _publish_when_listed(
    team: TeamManifest, source: McpServerSource, registry: ToolRegistry, connections: McpConnections
) -> None:
    while True:
        await asyncio.sleep(connections.retry_seconds)
        try:
            listed = await _listed_tools(source, connections)
        except McpUnavailableError as err:
            log.warning("MCP server still not listed", source=source.name, error=err.message)
            continue
        try:
            _publish(team, source, listed, registry, connections)
        except ManifestError as err:
            log.error("MCP server not published", source=source.name, error=str(err))
        return


async def _listed_tools(source: McpServerSource, connections: McpConnections) -> list[Tool]:
    probe = McpConnection(source, user="", root=connections.root)
    try:
        await probe.open()
        return await probe.list_tools()
    except McpUnavailableError:
        raise
    except Exception as err:  # a listing that is no MCP: reported as one line
        raise McpUnavailableError(source.name, reason(err)) from None
    finally:
        await probe.close()
