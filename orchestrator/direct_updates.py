"""The conversation's updates for MCP clients (`agent mcp`): `call_tool` and `tool_catalog`.

Workflow code, mixed into `ConversationWorkflow` (orchestrator.workflows), whose state it reads
through `_Conversation`. `call_tool` queues one direct tool call like a message (whatever
`double_texting` says: a tool call never interrupts, nor is refused for, a running turn) and
returns its answer: a turn of its own, run by `orchestrator.direct_call.DirectCallRunner`.
`tool_catalog` returns the discovered tools with their specs, discovering them again first when
the catalog is older than the caller wants and nothing is being answered.
"""

from __future__ import annotations

from typing import Protocol, cast

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from orchestrator import telemetry
    from orchestrator.direct_call import describe
    from orchestrator.loop_settings import AgentConfig
    from orchestrator.models import (
        CALL_TOOL_UPDATE,
        TOOL_CATALOG_UPDATE,
        CarriedState,
        ConversationPhase,
        ConversationStatus,
        DirectCall,
        QueuedMessage,
        ToolRoute,
        TurnResult,
    )


class _Conversation(Protocol):
    """What these updates use of ConversationWorkflow."""

    _memory: CarriedState
    _config: AgentConfig | None
    _phase: ConversationPhase
    _ended: bool
    _trace_contexts: dict[str, telemetry.TraceContext]

    def _knows(self, message_id: str) -> bool: ...

    def _busy(self) -> bool: ...

    def _problem_with(self, text: str) -> str | None: ...

    async def _answer_of(self, message_id: str) -> TurnResult: ...

    async def refresh_tools(self) -> ConversationStatus: ...


def _conversation(workflow_instance: object) -> _Conversation:
    # `self` stays unannotated: Temporal reads an annotated first parameter as the update's.
    return cast(_Conversation, workflow_instance)


class DirectCallUpdates:
    @workflow.update(name=CALL_TOOL_UPDATE)
    async def call_tool(self, call: DirectCall) -> TurnResult:
        """Run one tool call directly, as a turn of its own, and return that turn."""
        this = _conversation(self)
        message_id = workflow.current_update_info().id  # type: ignore[union-attr]
        memory = this._memory
        if message_id in memory.answered:
            return memory.answered[message_id]
        await workflow.wait_condition(lambda: this._phase != "starting")
        if not this._knows(message_id):
            if this._ended:
                problem = this._problem_with("-") or "the conversation has ended"
                raise ApplicationError(problem, type="InvalidMessage", non_retryable=True)
            queued = QueuedMessage(message_id=message_id, text=describe(call), direct=call)
            memory.inbox.append(queued)
            this._trace_contexts[message_id] = telemetry.current_context()
        return await this._answer_of(message_id)

    @call_tool.validator
    def _validate_call_tool(self, call: DirectCall) -> None:
        this = _conversation(self)
        info = workflow.current_update_info()
        memory = this._memory
        if info is not None and (info.id in memory.answered or this._knows(info.id)):
            return  # a retry: the handler returns or waits for its answer
        if this._ended:
            raise ValueError(this._problem_with("-"))
        if this._phase != "starting" and call.tool not in memory.routes:
            known = ", ".join(sorted(memory.routes))
            raise ValueError(f"unknown tool {call.tool!r}; available: {known}")
        limit = this._config.max_queued_messages if this._config else 0
        if this._busy() and len(memory.inbox) >= limit:
            raise ValueError(
                f"{len(memory.inbox)} calls and messages already wait in this conversation "
                f"(the limit is {limit}); wait for their answers"
            )

    @workflow.update(name=TOOL_CATALOG_UPDATE)
    async def tool_catalog(self, max_age_seconds: float) -> list[ToolRoute]:
        """The tools discovered, with their specs (discovered again when older than
        `max_age_seconds` and no message is being answered)."""
        this = _conversation(self)
        await workflow.wait_condition(lambda: this._phase != "starting")
        memory = this._memory
        stale = workflow.time() - memory.discovered_at >= max_age_seconds
        if stale and not this._busy() and not this._ended:
            await this.refresh_tools()
        return list(memory.routes.values())
