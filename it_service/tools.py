"""The IT team's tools. Adding a tool here and redeploying this worker publishes it."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from datetime import timedelta
from typing import Annotated, TypeVar

from pydantic import BaseModel, Field, IPvAnyAddress
from temporalio import activity
from temporalio.client import WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode
from temporalio.workflow import UpdateMethodMultiParam

from it_service.jira import (
    IssueType,
    JiraMetrics,
    JiraSettings,
    Priority,
    Ticket,
    create_issue,
    fetch_metrics,
)
from it_service.ledger import record_effect
from it_service.workflows import (
    ITSessionWorkflow,
    SessionStart,
    SessionState,
    TrackAddressRequest,
    TrackedAddress,
    session_workflow_id,
)
from shared.approval import ApprovalPolicy
from shared.config import integration_settings
from shared.tools import ToolContext, ToolError, ToolRegistry

registry = ToolRegistry(service="it")
tool = registry.tool

JiraProjectKey = Annotated[
    str,
    Field(
        pattern=r"^[A-Z][A-Z0-9_]{1,9}$",
        description="Jira project key, e.g. OPS (2-10 upper-case letters, digits or _).",
    ),
]


class HostAddresses(BaseModel):
    hostname: str
    addresses: list[str]


class IpHistory(BaseModel):
    conversation_id: str
    addresses: list[TrackedAddress]


class JiraProjectSet(BaseModel):
    conversation_id: str
    jira_project: str


@tool(timeout=timedelta(seconds=5))
async def get_ip() -> HostAddresses:
    """Return this host's name and its IP addresses (IPv4 and IPv6, loopback excluded)."""
    hostname = socket.gethostname()
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(hostname, None)
    except socket.gaierror:
        infos = []
    addresses = sorted(
        {
            str(info[4][0])
            for info in infos
            if not ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback
        }
    )
    return HostAddresses(hostname=hostname, addresses=addresses)


@tool(timeout=timedelta(seconds=30))
async def jira_metrics(context: ToolContext, project: JiraProjectKey | None = None) -> JiraMetrics:
    """Issue counts for a Jira project: open issues, created and resolved in the last 7 days.

    Without `project`, uses the project set for this conversation with set_jira_project.
    """
    if project is None:
        project = (await _session_state(context)).jira_project
        if project is None:
            raise ToolError(
                "no project given and none set for this conversation; "
                "pass `project` or call set_jira_project first"
            )
    return await fetch_metrics(project, integration_settings(JiraSettings))


@tool(timeout=timedelta(seconds=10))
async def set_jira_project(project: JiraProjectKey, context: ToolContext) -> JiraProjectSet:
    """Remember a Jira project for this conversation, so later jira_metrics calls can omit it."""
    state = await _update_session(context, ITSessionWorkflow.set_jira_project, project)
    await record_effect(context.call_id, "set_jira_project", context.conversation_id)
    return JiraProjectSet(conversation_id=state.conversation_id, jira_project=project)


@tool(timeout=timedelta(seconds=10))
async def track_ip(
    ip: Annotated[IPvAnyAddress, Field(description="IPv4 or IPv6 address to track.")],
    context: ToolContext,
    label: Annotated[str, Field(max_length=100, description="Optional note.")] = "",
) -> IpHistory:
    """Add an IP address to this conversation's tracked-address history."""
    request = TrackAddressRequest(ip=str(ip), label=label, call_id=context.call_id)
    state = await _update_session(context, ITSessionWorkflow.track_address, request)
    await record_effect(context.call_id, "track_ip", context.conversation_id)
    return IpHistory(conversation_id=state.conversation_id, addresses=state.ip_history)


@tool(timeout=timedelta(seconds=10))
async def get_ip_history(context: ToolContext) -> IpHistory:
    """List the IP addresses tracked in this conversation (the newest 100), oldest first."""
    state = await _session_state(context)
    return IpHistory(conversation_id=state.conversation_id, addresses=state.ip_history)


@tool(timeout=timedelta(seconds=30), approval=ApprovalPolicy.always())
async def create_ticket(
    project: JiraProjectKey,
    summary: Annotated[
        str, Field(min_length=1, max_length=255, description="One-line title of the issue.")
    ],
    context: ToolContext,
    description: Annotated[
        str, Field(max_length=10_000, description="Details; blank lines separate paragraphs.")
    ] = "",
    priority: Annotated[Priority | None, Field(description="Jira priority name.")] = None,
    issue_type: Annotated[IssueType, Field(description="Jira issue type.")] = "Task",
) -> Ticket:
    """File a Jira issue (a ticket) in a project. Every call needs a person's approval first.

    Filed once per call: a retried call returns the issue its first attempt filed.
    """
    ticket = await create_issue(
        call_id=context.call_id,
        project=project,
        summary=summary,
        description=description,
        issue_type=issue_type,
        priority=priority,
        settings=integration_settings(JiraSettings),
        retried=activity.in_activity() and activity.info().attempt > 1,
    )
    await record_effect(context.call_id, "create_ticket", context.conversation_id)
    return ticket


def _require_conversation(context: ToolContext) -> str:
    if not context.conversation_id:
        raise ToolError("this tool keeps per-conversation state and needs a conversation_id")
    return context.conversation_id


ArgumentT = TypeVar("ArgumentT")


async def _update_session(
    context: ToolContext,
    update: UpdateMethodMultiParam[[ITSessionWorkflow, ArgumentT], SessionState],
    arg: ArgumentT,
) -> SessionState:
    conversation_id = _require_conversation(context)
    start = WithStartWorkflowOperation(
        ITSessionWorkflow.run,
        SessionStart(state=SessionState(conversation_id=conversation_id)),
        id=session_workflow_id(conversation_id),
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        task_queue=context.task_queue,
    )
    # The call id as update id makes a retried activity a no-op on the session.
    update_name = getattr(update, "__name__", "update")
    return await context.client.execute_update_with_start_workflow(
        update, arg, start_workflow_operation=start, id=f"{update_name}-{context.call_id}"
    )


async def _session_state(context: ToolContext) -> SessionState:
    conversation_id = _require_conversation(context)
    handle = context.client.get_workflow_handle_for(
        ITSessionWorkflow.run, session_workflow_id(conversation_id)
    )
    try:
        return await handle.query(ITSessionWorkflow.state)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return SessionState(conversation_id=conversation_id)
        raise
