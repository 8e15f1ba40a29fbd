"""Client-side access to conversations, shared by the CLI, the demo and the tests.

Imports no litellm and no workflow code: it talks to the workflow by name.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import suppress

from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowExecutionStatus,
    WorkflowHandle,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from orchestrator.models import (
    CONVERSATION_WORKFLOW,
    END_UPDATE,
    READ_CONVERSATION_WORKFLOW,
    REFRESH_TOOLS_UPDATE,
    SEND_MESSAGE_UPDATE,
    STATUS_QUERY,
    TURNS_QUERY,
    ConversationInput,
    ConversationStatus,
    ReadConversationInput,
    TurnResult,
    Usage,
)


class ConversationClient:
    def __init__(self, client: Client, task_queue: str) -> None:
        self._client = client
        self._task_queue = task_queue

    def handle(self, conversation_id: str) -> WorkflowHandle[object, Usage]:
        return self._client.get_workflow_handle(conversation_id, result_type=Usage)

    async def send(
        self, conversation_id: str, text: str, *, message_id: str | None = None
    ) -> TurnResult:
        """Send a message, starting the conversation if it is not running (update-with-start).

        With a `message_id`, sending the same message again (after a timeout, a crash, a server
        restart) returns its answer instead of asking twice.
        """
        start = WithStartWorkflowOperation(
            CONVERSATION_WORKFLOW,
            ConversationInput(conversation_id=conversation_id),
            id=conversation_id,
            task_queue=self._task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            # An ended conversation stays ended: its id is not silently reused.
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        )
        try:
            return await self._client.execute_update_with_start_workflow(
                SEND_MESSAGE_UPDATE,
                text,
                start_workflow_operation=start,
                result_type=TurnResult,
                id=message_id,
            )
        except BaseException:
            # The start operation holds the same error; collect it so asyncio does not print it.
            with suppress(BaseException):
                await start.workflow_handle()
            raise

    async def send_existing(self, conversation_id: str, text: str) -> TurnResult:
        """Send a message to a conversation that must already exist."""
        return await self.handle(conversation_id).execute_update(
            SEND_MESSAGE_UPDATE, text, result_type=TurnResult
        )

    async def status(self, conversation_id: str) -> ConversationStatus:
        return await self.handle(conversation_id).query(
            STATUS_QUERY, result_type=ConversationStatus
        )

    async def recent_turns(self, conversation_id: str) -> list[TurnResult]:
        """The last few turns, from the running workflow's state."""
        return await self.handle(conversation_id).query(TURNS_QUERY, result_type=list[TurnResult])

    async def turns(self, conversation_id: str, page_size: int = 500) -> list[TurnResult]:
        """Every turn of a conversation, read from the store through a `ReadConversation` run."""
        await self.handle(conversation_id).describe()  # a clear NOT_FOUND for unknown ids
        turns: list[TurnResult] = []
        while True:
            page = await self._client.execute_workflow(
                READ_CONVERSATION_WORKFLOW,
                ReadConversationInput(
                    conversation_id=conversation_id, offset=len(turns), limit=page_size
                ),
                id=f"{conversation_id}/read/{uuid.uuid4().hex[:8]}",
                task_queue=self._task_queue,
                result_type=list[TurnResult],
            )
            turns.extend(page)
            if len(page) < page_size:
                return turns

    async def refresh_tools(self, conversation_id: str) -> ConversationStatus:
        return await self.handle(conversation_id).execute_update(
            REFRESH_TOOLS_UPDATE, result_type=ConversationStatus
        )

    async def end(self, conversation_id: str) -> Usage:
        return await self.handle(conversation_id).execute_update(END_UPDATE, result_type=Usage)

    async def list(self, limit: int = 50) -> AsyncIterator[tuple[str, str, str]]:
        """(conversation id, status, start time) of recent conversations, newest first."""
        query = f"WorkflowType = '{CONVERSATION_WORKFLOW}'"
        count = 0
        async for execution in self._client.list_workflows(query, limit=limit):
            status = (
                execution.status.name.lower()
                if isinstance(execution.status, WorkflowExecutionStatus)
                else "unknown"
            )
            yield execution.id, status, execution.start_time.isoformat(timespec="seconds")
            count += 1
            if count >= limit:
                return
