"""ConversationWorkflow: one durable agent loop per conversation (workflow id = conversation id).

Each user message is the `send_message` update. A turn asks the model (an activity), runs the tool
calls of each step through the dispatcher (`orchestrator.dispatch`), feeds the results back, and
stops at a final answer or the step limit. This module keeps the conversation's life: updates,
queries, the turn loop and continue-as-new. It never names a tool.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from orchestrator.dispatch import (
        BOUNDED_FAN_OUT_PATCH,
        REDISCOVERY_PATCH,
        ToolDispatcher,
        discover,
        rediscover_unavailable,
        signature,
        tool_message,
    )
    from orchestrator.model_step import MODEL_STEP_FAILURES, ask_model
    from orchestrator.models import (
        CONVERSATION_WORKFLOW,
        END_UPDATE,
        LOAD_CONFIG_ACTIVITY,
        READ_CONVERSATION_WORKFLOW,
        READ_TURNS_ACTIVITY,
        RECORD_TURN_ACTIVITY,
        REFRESH_TOOLS_UPDATE,
        SEND_MESSAGE_UPDATE,
        STATUS_QUERY,
        TURNS_QUERY,
        USAGE_QUERY,
        AgentConfig,
        CarriedState,
        ChatMessage,
        ConversationInput,
        ConversationPhase,
        ConversationStatus,
        ReadConversationInput,
        RecordTurnInput,
        RunningTool,
        StoredMessage,
        ToolCallRecord,
        TurnResult,
        Usage,
    )
    from shared.caller import innermost_message

K = TypeVar("K")
RECENT_TURNS_KEPT = 10
ANSWERS_KEPT = 20
CARRIED_ANSWERS_BYTES = 512 * 1024
DEFAULT_MAX_MESSAGE_CHARS = 8000
# All tool messages of one step together, in UTF-8 bytes: they travel in the next model step's
# input, which must stay far below Temporal's 2 MB payload limit however many calls the step made.
STEP_TOOL_MESSAGES_BYTES = 512_000


@workflow.defn(name=CONVERSATION_WORKFLOW)
class ConversationWorkflow:
    @workflow.init
    def __init__(self, start: ConversationInput) -> None:
        self._conversation_id = start.conversation_id
        self._config: AgentConfig | None = None
        # What the conversation remembers, in the one model continue-as-new carries. Answers are
        # kept by message (update) id: a client retrying a message after a failure, or across a
        # continue-as-new where Temporal's own update-id dedupe does not reach, gets the answer it
        # missed instead of a second turn.
        carried = start.carried
        self._memory = (
            carried.model_copy(update={"run": carried.run + 1}) if carried else CarriedState()
        )
        self._turns_this_run = 0
        self._phase: ConversationPhase = "starting"
        self._running: list[RunningTool] = []
        self._busy = False
        self._ended = False

    @workflow.run
    async def run(self, start: ConversationInput) -> Usage:
        self._config = await self._load_config()
        if start.carried is None:
            self._stage(ChatMessage(role="system", content=self._config.system_prompt))
            await discover(self._config, self._memory)
        self._phase = "ended" if self._ended else "idle"
        while True:
            await workflow.wait_condition(lambda: self._ended or self._continue_as_new_due())
            # Let every accepted message finish first: none may be lost or answered twice.
            await workflow.wait_condition(workflow.all_handlers_finished)
            if self._ended:
                return self._memory.usage
            if self._continue_as_new_due():
                workflow.continue_as_new(
                    ConversationInput(conversation_id=self._conversation_id, carried=self._carry())
                )

    async def _load_config(self) -> AgentConfig:
        config: AgentConfig = await workflow.execute_local_activity(
            LOAD_CONFIG_ACTIVITY,
            result_type=AgentConfig,
            start_to_close_timeout=timedelta(seconds=30),
        )
        return config

    def _continue_as_new_due(self) -> bool:
        assert self._config is not None
        return not self._busy and (
            workflow.info().is_continue_as_new_suggested()
            or self._turns_this_run >= self._config.max_turns_per_run
        )

    def _carry(self) -> CarriedState:
        memory = self._memory
        answered = dict(_newest_within(list(memory.answered.items()), CARRIED_ANSWERS_BYTES))
        recent = [
            turn
            for _, turn in _newest_within(
                list(enumerate(memory.recent_turns)), CARRIED_ANSWERS_BYTES
            )
        ]
        return memory.model_copy(update={"answered": answered, "recent_turns": recent})

    def _stage(self, message: ChatMessage) -> None:
        """Give a message the next sequence number; the next model step stores it."""
        memory = self._memory
        memory.pending.append(StoredMessage(seq=memory.next_seq, message=message))
        memory.next_seq += 1

    # ---- updates ------------------------------------------------------------------------------
    @workflow.update(name=SEND_MESSAGE_UPDATE)
    async def send_message(self, text: str) -> TurnResult:
        message_id = workflow.current_update_info().id  # type: ignore[union-attr]
        memory = self._memory
        if message_id in memory.answered:
            return memory.answered[message_id]
        if self._busy:  # two messages accepted in the same workflow task: validators ran first
            raise ApplicationError("the previous message is still being answered; wait for it")
        self._busy = True
        try:
            await workflow.wait_condition(lambda: self._phase != "starting")
            # The first message of a conversation is validated before the worker's settings are
            # loaded; check it again against them before it is recorded.
            problem = self._problem_with(text)
            if problem:
                raise ApplicationError(problem, type="InvalidMessage", non_retryable=True)
            result = (await self._turn(text)).model_copy(update={"message": text})
            await workflow.execute_local_activity(
                RECORD_TURN_ACTIVITY,
                RecordTurnInput(
                    conversation_id=self._conversation_id, turn=memory.turns, result=result
                ),
                start_to_close_timeout=timedelta(seconds=30),
            )
            memory.recent_turns = [*memory.recent_turns, result][-RECENT_TURNS_KEPT:]
            memory.answered[message_id] = result
            while len(memory.answered) > ANSWERS_KEPT:
                memory.answered.pop(next(iter(memory.answered)))
            return result
        finally:
            self._busy = False
            self._running.clear()
            self._phase = "ended" if self._ended else "idle"

    @send_message.validator
    def _validate_message(self, text: str) -> None:
        info = workflow.current_update_info()
        if info is not None and info.id in self._memory.answered:
            return  # a retry of an answered message: the handler returns the recorded answer
        problem = self._problem_with(text)
        if problem:
            raise ValueError(problem)
        if self._busy:
            raise ValueError("the previous message is still being answered; wait for it")

    def _problem_with(self, text: str) -> str | None:
        if self._ended:
            return f"conversation {self._conversation_id} has ended; start a new one"
        if not isinstance(text, str) or not text.strip():
            return "the message is empty"
        limit = self._config.max_message_chars if self._config else DEFAULT_MAX_MESSAGE_CHARS
        if len(text) > limit:
            return f"the message has {len(text)} characters; the limit is {limit}"
        return None

    @workflow.update(name=REFRESH_TOOLS_UPDATE)
    async def refresh_tools(self) -> ConversationStatus:
        # A message waits for the refresh (its validator refuses one meanwhile): discovery's
        # Nexus operations and a step's tool calls never add up past the in-flight limit.
        self._busy = True
        try:
            return await self._refresh_tools()
        finally:
            self._busy = False
            if self._ended:
                self._phase = "ended"

    async def _refresh_tools(self) -> ConversationStatus:
        await workflow.wait_condition(lambda: self._phase != "starting")
        if workflow.patched(REDISCOVERY_PATCH):
            # Endpoints created since the run started (missing ones) are picked up too.
            self._config = await self._load_config()
        assert self._config is not None
        await discover(self._config, self._memory)
        return self.status()

    @refresh_tools.validator
    def _validate_refresh(self) -> None:
        if self._ended:
            raise ValueError(f"conversation {self._conversation_id} has ended")
        if self._busy:
            raise ValueError("a message is being answered; refresh tools after it")

    @workflow.update(name=END_UPDATE)
    async def end(self) -> Usage:
        self._ended = True
        if not self._busy:
            self._phase = "ended"
        return self._memory.usage

    # ---- queries ------------------------------------------------------------------------------
    @workflow.query(name=STATUS_QUERY)
    def status(self) -> ConversationStatus:
        return ConversationStatus(
            conversation_id=self._conversation_id,
            state=self._phase,
            running=list(self._running),
            turns=self._memory.turns,
            model=self._config.model if self._config else "",
            offline_model=self._config.offline_model if self._config else False,
            tools=sorted(self._memory.routes),
            unavailable_endpoints=list(self._memory.unavailable),
        )

    @workflow.query(name=TURNS_QUERY)
    def turns(self) -> list[TurnResult]:
        """The most recent turns; the whole conversation is in the store (`ReadConversation`)."""
        return list(self._memory.recent_turns)

    @workflow.query(name=USAGE_QUERY)
    def usage(self) -> Usage:
        return self._memory.usage

    # ---- the loop -----------------------------------------------------------------------------
    async def _turn(self, text: str) -> TurnResult:
        config, memory = self._config, self._memory
        assert config is not None
        memory.turns += 1
        self._turns_this_run += 1
        turn = memory.turns
        self._stage(ChatMessage(role="user", content=text))
        records: list[ToolCallRecord] = []
        notes: list[str] = []
        turn_usage = Usage()
        executed: set[str] = set()
        await rediscover_unavailable(config, memory)
        if memory.unavailable:
            notes.append("tool services unavailable: " + ", ".join(memory.unavailable))
        dispatcher = ToolDispatcher(self._conversation_id, config, memory, self._running)

        def result(answer: str = "", error: str | None = None) -> TurnResult:
            return TurnResult(
                conversation_id=self._conversation_id,
                answer=answer,
                tool_calls=records,
                usage=turn_usage,
                ok=error is None,
                error=error,
                notes=notes,
            )

        for step in range(1, config.max_steps + 1):
            self._phase = "thinking"
            try:
                reply = await ask_model(self._conversation_id, config, memory)
            except MODEL_STEP_FAILURES as err:
                return result(error=innermost_message(err))
            turn_usage = turn_usage.add(reply.usage)
            memory.usage = memory.usage.add(reply.usage)
            if reply.compacted:
                notes.append("older turns were summarised to fit the model's context window")
            if not reply.tool_calls:
                return result(answer=reply.content or "")

            limit = config.max_tool_calls_per_step
            calls, not_run = reply.tool_calls, []
            if len(calls) > limit and workflow.patched(BOUNDED_FAN_OUT_PATCH):
                calls, not_run = calls[:limit], calls[limit:]
            fresh = [call for call in calls if signature(call) not in executed]
            repeated = [call for call in calls if call not in fresh]
            executed.update(signature(call) for call in fresh)
            self._phase = "running_tools"
            message_bytes = STEP_TOOL_MESSAGES_BYTES // max(1, len(fresh))
            for call, (record, content) in zip(
                fresh, await dispatcher.run_step(turn, step, fresh), strict=True
            ):
                records.append(record)
                self._stage(
                    tool_message(call, content, config.max_tool_message_chars, message_bytes)
                )
            for call in repeated:
                self._stage(tool_message(call, _REPEATED))
            if not_run:
                notes.append(f"{len(not_run)} tool calls of one step were not run (limit {limit})")
            for call in not_run:
                self._stage(tool_message(call, _not_run(limit)))
            if repeated and not fresh:
                note = (
                    f"stopped: the model repeated the identical call {repeated[0].name}"
                    f"({repeated[0].arguments}) instead of answering"
                )
                notes.append(note)
                return result(answer=note)

        note = f"stopped after {config.max_steps} model steps without a final answer"
        notes.append(note)
        return result(answer=note)


@workflow.defn(name=READ_CONVERSATION_WORKFLOW)
class ReadConversation:
    """Reads a page of a conversation's turns from the store, for `agent history`.

    A workflow so that the CLI needs no access to the store, wherever it is deployed.
    """

    @workflow.run
    async def run(self, request: ReadConversationInput) -> list[TurnResult]:
        turns: list[TurnResult] = await workflow.execute_activity(
            READ_TURNS_ACTIVITY,
            request,
            result_type=list[TurnResult],
            start_to_close_timeout=timedelta(seconds=30),
        )
        return turns


_REPEATED = {
    "error": "repeated_call",
    "message": "identical call already made in this turn; use its result",
}


def _not_run(limit: int) -> dict[str, str]:
    return {
        "error": "not_run",
        "message": f"not run: at most {limit} tool calls per step; ask for the rest in the next step",
    }


def _newest_within(items: list[tuple[K, TurnResult]], budget: int) -> list[tuple[K, TurnResult]]:
    """The most recent items whose JSON fits `budget` bytes, oldest first as they came."""
    kept: list[tuple[K, TurnResult]] = []
    used = 0
    for key, result in reversed(items):
        used += len(result.model_dump_json())
        if used > budget:
            break
        kept.append((key, result))
    return kept[::-1]
