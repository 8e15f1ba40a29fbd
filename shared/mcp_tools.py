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
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from mcp_types import CallToolResult, TextContent, Tool
from pydantic import BaseModel, ConfigDict
from pydantic_core import to_jsonable_python
from temporalio.client import WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from shared.contract import TOOL_NAME_PATTERN, ToolSpec
from shared.log import get_logger
from shared.manifest import ManifestError, TeamManifest
from shared.mcp_client import McpConnection, McpConnections, McpUnavailableError
from shared.mcp_config import McpServerSource
from shared.mcp_session import (
    JOURNAL_QUERY,
    RECORD_UPDATE,
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
            f"'{'.'.join(str(p) for p in error.absolute_path) or '(arguments)'}': {error.message}"
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
        connection, opened = await self.connections.connection(
            source, context.conversation_id, context.user
        )
        async with connection.lock:
            try:
                result = await self._call_in_session(connection, opened, args, context)
            except McpUnavailableError:
                self.connections.failed(source)
                raise
            self.connections.succeeded(source)
        return tool_output(source.name, self.mcp_name, result)

    async def _call_in_session(
        self, connection: McpConnection, opened: bool, args: dict[str, Any], context: ToolContext
    ) -> CallToolResult:
        source = self.source
        assert source is not None
        journaled = source.session == "conversation" and bool(context.conversation_id)
        if journaled:
            await _catch_up(connection, context, replaying=opened)
        records = journaled and self.mcp_name in source.rebuild
        result = connection.applied.get(context.call_id) if records else None
        if result is None:
            result = await connection.call(self.mcp_name, args)
        if records and not result.is_error:
            connection.applied[context.call_id] = result
            entry = JournalEntry(call_id=context.call_id, tool=self.mcp_name, arguments=args)
            await _record(context, source, entry)
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


async def _catch_up(connection: McpConnection, context: ToolContext, *, replaying: bool) -> None:
    """Apply the journal's calls this live session has not applied yet, in order: all of them
    for a new session (a rebuild), those another worker applied for one kept open here."""
    source = connection.source
    workflow_id = mcp_session_workflow_id(source.name, context.conversation_id)
    try:
        entries: list[JournalEntry] = await context.client.get_workflow_handle(workflow_id).query(
            JOURNAL_QUERY, result_type=list[JournalEntry]
        )
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
        return  # no session recorded yet
    missing = [entry for entry in entries if entry.call_id not in connection.applied]
    if missing:
        log.info(
            "rebuilding MCP session" if replaying else "catching up MCP session",
            source=source.name,
            calls=len(missing),
        )
    for entry in missing:
        result = await connection.call(entry.tool, entry.arguments)
        if result.is_error:
            log.warning("a replayed call failed", source=source.name, tool=entry.tool)
        connection.applied[entry.call_id] = result


async def _record(context: ToolContext, source: McpServerSource, entry: JournalEntry) -> None:
    workflow_id = mcp_session_workflow_id(source.name, context.conversation_id)
    start = WithStartWorkflowOperation(
        McpSessionWorkflow.run,
        SessionJournal(source=source.name, conversation_id=context.conversation_id),
        id=workflow_id,
        task_queue=context.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    await context.client.execute_update_with_start_workflow(
        RECORD_UPDATE, entry, start_workflow_operation=start, id=entry.call_id, result_type=int
    )


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
        source=source,
        mcp_name=listed.name,
        connections=connections,
        validator=Draft202012Validator(schema),
    )


async def publish_mcp_servers(
    team: TeamManifest, registry: ToolRegistry, connections: McpConnections
) -> list[str]:
    """List every MCP server's tools and add the published ones to the team's registry.

    Runs at worker start; a server that cannot be listed stops the start with one line naming
    it, as a bad manifest does. Returns the names added."""
    # Listed side by side: each server's start-up (a process, an import) is most of the wait.
    listings = await asyncio.gather(
        *(_listed_tools(team, source, connections) for source in team.mcp_servers)
    )
    added: list[str] = []
    for source, listed in zip(team.mcp_servers, listings, strict=True):
        names = {tool.name for tool in listed}
        for wanted in [*source.allow, *source.approval, *source.rebuild]:
            if wanted not in names:
                raise ManifestError(
                    f"{team.package}: MCP server '{source.name}' has no tool '{wanted}' "
                    f"(it lists: {', '.join(sorted(names)) or 'none'})"
                )
        for tool in listed:
            if not source.publishes(tool.name):
                continue
            name = source.published_name(tool.name)
            if not re.match(TOOL_NAME_PATTERN, name):
                log.warning(
                    "MCP tool skipped: not a valid tool name", source=source.name, tool=name
                )
                continue
            if registry.get(name) is not None:
                raise ManifestError(
                    f"{team.package}: MCP server '{source.name}' tool '{name}' clashes with a "
                    "tool already published; set a prefix"
                )
            registry.add_registered(mcp_tool(source, tool, connections, registry.service))
            added.append(name)
        log.info("MCP tools published", source=source.name, tools=len(listed))
    return added


async def _listed_tools(
    team: TeamManifest, source: McpServerSource, connections: McpConnections
) -> list[Tool]:
    probe = McpConnection(source, user="", root=connections.root)
    try:
        await probe.open()
        return await probe.list_tools()
    except Exception as err:  # reported as one line
        message = err.message if isinstance(err, ToolError) else f"{type(err).__name__}: {err}"
        raise ManifestError(f"{team.package}: cannot list MCP tools: {message}") from None
    finally:
        await probe.close()
