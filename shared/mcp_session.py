"""The durable half of a stateful MCP session: one workflow per (MCP server, conversation).

A stateful MCP server keeps its session in a process (stdio) or behind a session id (HTTP), and
both die with the worker that holds them. What the team can rebuild is the calls that built the
state: each successful call of a tool the manifest lists under `rebuild` is recorded here, by
call id, once. A worker that finds no live session for the conversation (it restarted, or
another replica served the conversation) opens a new one and replays the journal in order before
the call. State the server builds any other way (its clock, randomness, calls to the outside)
is not rebuilt.

SDK-owned and sandboxed; it imports only models.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.exceptions import ApplicationError

MCP_SESSION_WORKFLOW_NAME = "McpSessionWorkflow"
RECORD_UPDATE = "record"
JOURNAL_QUERY = "journal"
DEFAULT_IDLE_TIMEOUT = timedelta(days=7)
# A rebuild replays every entry; past this the session refuses more state-building calls rather
# than make every rebuild, and the workflow's history, grow without end.
MAX_JOURNAL_ENTRIES = 500
JOURNAL_FULL = "McpSessionJournalFull"
SESSION_MOVED = "McpSessionMoved"


def mcp_session_workflow_id(source: str, conversation_id: str) -> str:
    # "/" cannot occur in a server's name, so two (server, conversation) pairs never share an id.
    return f"mcp-session/{source}/{conversation_id}"


class JournalEntry(BaseModel):
    call_id: str
    tool: str = Field(description="The MCP server's own tool name.")
    arguments: dict[str, Any] = Field(default_factory=dict)
    after: int | None = Field(
        default=None, description="The journal's length the call was applied after."
    )


class SessionJournal(BaseModel):
    source: str
    conversation_id: str
    entries: list[JournalEntry] = Field(default_factory=list)
    idle_timeout_seconds: float = DEFAULT_IDLE_TIMEOUT.total_seconds()


@workflow.defn(name=MCP_SESSION_WORKFLOW_NAME)
class McpSessionWorkflow:
    @workflow.init
    def __init__(self, journal: SessionJournal) -> None:
        self._journal = journal
        self._touched = False

    @workflow.run
    async def run(self, journal: SessionJournal) -> SessionJournal:
        idle = timedelta(seconds=journal.idle_timeout_seconds)
        while True:
            self._touched = False
            try:
                await workflow.wait_condition(
                    lambda: self._touched or workflow.info().is_continue_as_new_suggested(),
                    timeout=idle,
                )
            except TimeoutError:
                # Idle past its lifetime: the session ends, and a later call starts afresh.
                await workflow.wait_condition(workflow.all_handlers_finished)
                return self._journal
            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(self._journal)

    @workflow.update(name=RECORD_UPDATE)
    def record(self, entry: JournalEntry) -> int:
        """Add one applied call (once per call id); returns the journal's length."""
        self._touched = True
        entries = self._journal.entries
        if any(existing.call_id == entry.call_id for existing in entries):
            return len(entries)
        if entry.after is not None and entry.after != len(entries):
            raise ApplicationError(
                f"the session moved on: {len(entries) - entry.after} call(s) of this "
                "conversation were applied elsewhere meanwhile; rebuilding it in their order",
                type=SESSION_MOVED,
                non_retryable=True,
            )
        if len(entries) >= MAX_JOURNAL_ENTRIES:
            raise ApplicationError(
                f"the session has {len(entries)} recorded calls, the most it rebuilds; "
                "start a new conversation",
                type=JOURNAL_FULL,
                non_retryable=True,
            )
        entries.append(entry)
        return len(entries)

    @workflow.query(name=JOURNAL_QUERY)
    def journal(self) -> list[JournalEntry]:
        return list(self._journal.entries)
