"""ReadConversation: a page of a conversation's turns from the store, for `agent history`."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from orchestrator.models import (
        READ_CONVERSATION_WORKFLOW,
        READ_TURNS_ACTIVITY,
        ReadConversationInput,
        TurnResult,
    )


@workflow.defn(name=READ_CONVERSATION_WORKFLOW)
class ReadConversation:
    """A workflow so that the CLI needs no access to the store, wherever it is deployed."""

    @workflow.run
    async def run(self, request: ReadConversationInput) -> list[TurnResult]:
        turns: list[TurnResult] = await workflow.execute_activity(
            READ_TURNS_ACTIVITY,
            request,
            result_type=list[TurnResult],
            start_to_close_timeout=timedelta(seconds=30),
        )
        return turns
