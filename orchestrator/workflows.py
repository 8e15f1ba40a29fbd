"""ConversationWorkflow: one durable agent loop per conversation (workflow id = conversation id).

Each user message is the `send_message` update. The update queues the message and waits for its
answer; the workflow's main loop answers queued messages one turn at a time (`orchestrator.turn`),
so a message sent while a turn runs is queued, refused or interrupts it (`double_texting`).
`decide` approves or denies a call the turn waits on (`orchestrator.gate`); `cancel` stops the
turn; MCP clients' `call_tool` and `tool_catalog` are in `orchestrator.direct_updates`. This module keeps the conversation's life: updates, queries, the message queue and
continue-as-new, which can carry a turn paused on approvals. It never names a tool.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import SearchAttributeKey
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from orchestrator import telemetry
    from orchestrator.direct_call import runner_for
    from orchestrator.direct_updates import DirectCallUpdates
    from orchestrator.dispatch import REDISCOVERY_PATCH, discover
    from orchestrator.events import EVENTS_QUERY, EventsPage, page
    from orchestrator.gate import decision_problem, record_decision, waiting_calls
    from orchestrator.loop_settings import AgentConfig
    from orchestrator.models import (
        CANCEL_UPDATE,
        CONVERSATION_CONTINUED_ERROR,
        CONVERSATION_WORKFLOW,
        DECIDE_UPDATE,
        END_UPDATE,
        LOAD_CONFIG_ACTIVITY,
        RECORD_TURN_ACTIVITY,
        REFRESH_TOOLS_UPDATE,
        SEND_MESSAGE_UPDATE,
        STATUS_QUERY,
        TURNS_QUERY,
        USAGE_QUERY,
        ApprovalRecord,
        CancelRequest,
        CancelResult,
        CarriedState,
        ChatMessage,
        ConversationInput,
        ConversationPhase,
        ConversationStatus,
        Decision,
        DoubleTexting,
        QueuedMessage,
        RecordTurnInput,
        RunningTool,
        TurnResult,
        TurnState,
        Usage,
        model_problem,
    )
    from orchestrator.turn import TurnRunner, stage
    from shared.config import AWAITING_APPROVAL_ATTRIBUTE

RECENT_TURNS_KEPT = 10


ANSWERS_KEPT = 20
CARRIED_ANSWERS_BYTES = 512 * 1024
DEFAULT_MAX_MESSAGE_CHARS = 8000
BUSY = "the previous message is still being answered; wait for it"
# Under Temporal's 2 MB payload limit, with room for the input's envelope.
MAX_CARRIED_BYTES = 1_500_000
# Messages accepted while a turn ran were refused before double-texting; replays keep that.
DOUBLE_TEXTING_PATCH = "double-texting"
MOVING = "the conversation is moving to its next run; try again in a moment"
AWAITING_APPROVAL = SearchAttributeKey.for_bool(AWAITING_APPROVAL_ATTRIBUTE)
# Conversations mark themselves as waiting for approval; those recorded before never did.
AWAITING_APPROVAL_PATCH = "awaiting-approval-attribute"


@workflow.defn(name=CONVERSATION_WORKFLOW)
class ConversationWorkflow(DirectCallUpdates):
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
            carried.model_copy(update={"run": carried.run + 1})
            if carried
            else CarriedState(user=start.user)
        )
        self._turns_this_run = 0
        self._phase: ConversationPhase = "starting"
        self._running: list[RunningTool] = []
        self._runner: TurnRunner | None = None
        self._turn_task: asyncio.Task[TurnResult] | None = None
        self._refreshing = False
        self._handing_over = False  # continuing as new: waiting messages are told to send again
        self._carry_refused = False  # this run's paused turn was too large to carry
        self._published_awaiting = False  # the AgentAwaitingApproval value last upserted
        self._ended = False
        # Each queued message's trace context (its update's span), so its turn joins that trace.
        self._trace_contexts: dict[str, telemetry.TraceContext] = {}

    @workflow.run
    async def run(self, start: ConversationInput) -> Usage:
        # The run itself belongs to no turn's trace: its context (the first message's, or the
        # previous run's) would otherwise hang later turns, and the next run, off that trace.
        with telemetry.detached():
            return await self._run(start)

    async def _run(self, start: ConversationInput) -> Usage:
        self._config = await self._load_config()
        if start.carried is None:
            stage(self._memory, ChatMessage(role="system", content=self._config.system_prompt))
            await discover(self._config, self._memory)
        self._phase = "ended" if self._ended else "idle"
        while True:
            await workflow.wait_condition(
                lambda: self._ended or self._has_work() or self._continue_as_new_due()
            )
            if self._has_work():
                await self._answer_next()
            elif self._ended:
                # Let every accepted message finish first: none may be lost or answered twice.
                await workflow.wait_condition(workflow.all_handlers_finished)
                return self._memory.usage
            else:
                await self._continue_as_new()

    async def _load_config(self) -> AgentConfig:
        config: AgentConfig = await workflow.execute_local_activity(
            LOAD_CONFIG_ACTIVITY,
            result_type=AgentConfig,
            start_to_close_timeout=timedelta(seconds=30),
        )
        return config

    # ---- the conversation's life --------------------------------------------------------------
    def _has_work(self) -> bool:
        memory = self._memory
        return not self._refreshing and (
            memory.paused_turn is not None or (bool(memory.inbox) and not self._ended)
        )

    def _busy(self) -> bool:
        memory = self._memory
        return bool(
            self._runner or memory.inbox or memory.paused_turn is not None or self._refreshing
        )

    def _run_is_full(self) -> bool:
        assert self._config is not None
        return (
            workflow.info().is_continue_as_new_suggested()
            or self._turns_this_run >= self._config.max_turns_per_run
        )

    def _continue_as_new_due(self) -> bool:
        return not self._busy() and self._run_is_full()

    async def _answer_next(self) -> None:
        """Answer the next message (or resume the turn carried from the previous run)."""
        config, memory = self._config, self._memory
        assert config is not None
        if memory.paused_turn is not None:
            state, memory.paused_turn = memory.paused_turn, None
        else:
            queued = memory.inbox.pop(0)
            memory.turns += 1
            self._turns_this_run += 1
            state = TurnState(
                message_id=queued.message_id,
                text=queued.text,
                turn=memory.turns,
                direct=queued.direct,
                model=queued.model,
            )
        runner = runner_for(
            self._conversation_id,
            config,
            memory,
            state,
            self._running,
            on_waiting_changed=self._publish_awaiting,
        )
        started = workflow.time()
        trace_context = self._trace_contexts.pop(state.message_id, None)
        task = telemetry.start_in_context(
            trace_context,
            "agent turn",
            {"conversation.id": self._conversation_id, "agent.turn": state.turn},
            runner.run(),
            root=config.tracing,
        )
        self._runner, self._turn_task = runner, task
        # A turn paused on approvals for long does not hold the run open: once the run is full
        # it continues as new, carrying the turn, which resumes there.
        await workflow.wait_condition(
            lambda: (
                task.done()
                or (
                    not self._ended
                    and not self._carry_refused
                    and runner.paused_on_approvals_only
                    and self._run_is_full()
                )
            )
        )
        if not task.done():
            await self._continue_as_new(paused=runner)  # returns only if the turn is too large
            await workflow.wait_condition(task.done)
        result = task.result()
        outcome = "cancelled" if result.cancelled else ("ok" if result.ok else "error")
        telemetry.turn_finished(outcome, workflow.time() - started)
        self._runner, self._turn_task = None, None
        self._running.clear()
        with telemetry.attached(trace_context):
            await workflow.execute_local_activity(
                RECORD_TURN_ACTIVITY,
                RecordTurnInput(
                    conversation_id=self._conversation_id,
                    turn=state.turn,
                    result=result,
                    user=self._memory.user,
                ),
                start_to_close_timeout=timedelta(seconds=30),
            )
        memory.recent_turns = [*memory.recent_turns, result][-RECENT_TURNS_KEPT:]
        self._answer(state.message_id, result)

    def _publish_awaiting(self) -> None:
        """Keep the AgentAwaitingApproval search attribute true while a call waits for a
        decision, so `agent approvals` finds this conversation with one visibility query."""
        config = self._config
        if config is None or not config.awaiting_approval_attribute:
            return
        awaiting = bool(waiting_calls(self._current_turn(), self._memory))
        if awaiting == self._published_awaiting or not workflow.patched(AWAITING_APPROVAL_PATCH):
            return
        workflow.upsert_search_attributes([AWAITING_APPROVAL.value_set(awaiting)])
        self._published_awaiting = awaiting

    def _answer(self, message_id: str, result: TurnResult) -> None:
        answered = self._memory.answered
        answered[message_id] = result
        while len(answered) > ANSWERS_KEPT:
            answered.pop(next(iter(answered)))

    async def _continue_as_new(self, paused: TurnRunner | None = None) -> None:
        """Continue as new, carrying `paused` (a turn waiting only for decisions) if given.

        Messages waiting for an answer are told to send again (the next run carries them), and
        decisions and cancels are refused meanwhile ("try again"): the turn carried is the one
        seen now. Returns, without continuing, only when the carried state would be too large
        for one payload; the turn then finishes in this run.
        """
        if paused is not None:
            self._memory.paused_turn = paused.state.model_copy(deep=True)
            # Measured without the turn events (at most EVENTS_CARRIED_BYTES more, still under
            # the payload limit): runs recorded before events existed must decide the same.
            carry = self._carry().model_copy(update={"events": []})
            if len(carry.model_dump_json()) > MAX_CARRIED_BYTES:
                self._memory.paused_turn = None
                self._carry_refused = True
                workflow.logger.warning("turn too large to carry across continue-as-new")
                return
        self._handing_over = True
        await workflow.wait_condition(workflow.all_handlers_finished)
        telemetry.continued_as_new()
        workflow.continue_as_new(
            ConversationInput(conversation_id=self._conversation_id, carried=self._carry())
        )

    def _carry(self) -> CarriedState:
        return self._memory.for_next_run(CARRIED_ANSWERS_BYTES)

    def _current_turn(self) -> TurnState | None:
        return self._runner.state if self._runner else self._memory.paused_turn

    def _knows(self, message_id: str) -> bool:
        """Whether the message is being answered or waits in the queue (sent again by a client
        after continue-as-new, or retried)."""
        turn = self._current_turn()
        return (turn is not None and turn.message_id == message_id) or any(
            queued.message_id == message_id for queued in self._memory.inbox
        )

    @property
    def _double_texting(self) -> DoubleTexting:
        return self._config.double_texting if self._config else "queue"

    # ---- updates ------------------------------------------------------------------------------
    @workflow.update(name=SEND_MESSAGE_UPDATE)
    async def send_message(self, text: str, model: str | None = None) -> TurnResult:
        message_id = workflow.current_update_info().id  # type: ignore[union-attr]
        memory = self._memory
        if message_id in memory.answered:
            return memory.answered[message_id]
        await workflow.wait_condition(lambda: self._phase != "starting")
        if not self._knows(message_id):
            # The first message of a conversation is validated before the worker's settings
            # are loaded; check it again against them before it is accepted.
            problem = self._problem_with(text) or model_problem(model)
            if problem:
                raise ApplicationError(problem, type="InvalidMessage", non_retryable=True)
            if self._busy() and (
                self._double_texting == "reject" or not workflow.patched(DOUBLE_TEXTING_PATCH)
            ):
                raise ApplicationError(BUSY)  # two accepted in one task: validators ran first
            if self._double_texting == "interrupt":
                # A turn carried from the previous run is resumed first: interrupt that one too.
                await workflow.wait_condition(
                    lambda: self._runner is not None or memory.paused_turn is None
                )
                if self._runner is not None:
                    self._runner.cancel("interrupted by a newer message")
            memory.inbox.append(QueuedMessage(message_id=message_id, text=text, model=model))
            self._trace_contexts[message_id] = telemetry.current_context()
        return await self._answer_of(message_id)

    async def _answer_of(self, message_id: str) -> TurnResult:
        """Wait for the answer of a queued message (or direct call)."""
        memory = self._memory
        await workflow.wait_condition(lambda: message_id in memory.answered or self._handing_over)
        if message_id in memory.answered:
            return memory.answered[message_id]
        raise ApplicationError(
            "the conversation continued as new while this message waited; "
            "send it again with the same message id",
            type=CONVERSATION_CONTINUED_ERROR,
        )

    @send_message.validator
    def _validate_message(self, text: str, model: str | None = None) -> None:
        info = workflow.current_update_info()
        if info is not None and (info.id in self._memory.answered or self._knows(info.id)):
            return  # a retry: the handler returns or waits for the message's answer
        problem = self._problem_with(text) or model_problem(model)
        if problem:
            raise ValueError(problem)
        if self._double_texting == "reject" and self._busy():
            raise ValueError(BUSY)
        limit = self._config.max_queued_messages if self._config else 0
        if self._busy() and len(self._memory.inbox) >= limit:
            raise ValueError(
                f"{len(self._memory.inbox)} messages already wait behind the running turn "
                f"(the limit is {limit}); wait for their answers, or cancel the turn"
            )

    def _problem_with(self, text: str) -> str | None:
        if self._ended:
            return f"conversation {self._conversation_id} has ended; start a new one"
        if not isinstance(text, str) or not text.strip():
            return "the message is empty"
        limit = self._config.max_message_chars if self._config else DEFAULT_MAX_MESSAGE_CHARS
        if len(text) > limit:
            return f"the message has {len(text)} characters; the limit is {limit}"
        return None

    @workflow.update(name=DECIDE_UPDATE)
    def decide(self, decision: Decision) -> ApprovalRecord:
        """Approve or deny one call that waits for a decision."""
        problem = self._decision_problem(decision)
        if problem:  # the state changed between validation and the handler
            raise ApplicationError(problem, type="InvalidDecision", non_retryable=True)
        pending = next(
            p
            for p in waiting_calls(self._current_turn(), self._memory)
            if p.call_id == decision.call_id
        )
        return record_decision(
            self._memory,
            pending,
            verdict=decision.verdict,
            approver=decision.approver,
            reason=decision.reason,
            decided_at=workflow.now().isoformat(timespec="seconds"),
        )

    @decide.validator
    def _validate_decide(self, decision: Decision) -> None:
        problem = self._decision_problem(decision)
        if problem:
            raise ValueError(problem)

    def _decision_problem(self, decision: Decision) -> str | None:
        if self._handing_over:
            return MOVING
        if self._ended:
            return f"conversation {self._conversation_id} has ended; its approvals were dropped"
        if self._runner is not None and self._runner.cancel_reason is not None:
            return f"the turn is being cancelled ({self._runner.cancel_reason})"
        return decision_problem(decision, self._current_turn(), self._memory, self._conversation_id)

    @workflow.update(name=CANCEL_UPDATE)
    async def cancel(self, request: CancelRequest) -> CancelResult:
        """Stop the running turn: its tool calls are cancelled, its approvals dropped."""
        await workflow.wait_condition(lambda: self._phase != "starting")
        # A turn carried from the previous run is resumed at the run's start.
        await workflow.wait_condition(
            lambda: self._runner is not None or self._memory.paused_turn is None
        )
        runner, task = self._runner, self._turn_task
        if runner is None or task is None or task.done():
            return CancelResult(conversation_id=self._conversation_id, cancelled=False)
        who = request.requested_by or "an operator"
        reason = f"cancelled by {who}" + (f": {request.reason}" if request.reason else "")
        dropped = runner.cancel(reason)
        await workflow.wait_condition(task.done)
        return CancelResult(
            conversation_id=self._conversation_id,
            cancelled=True,
            turn=runner.state.turn,
            dropped_approvals=dropped,
        )

    @cancel.validator
    def _validate_cancel(self, request: CancelRequest) -> None:
        if self._handing_over:
            raise ValueError(MOVING)

    @workflow.update(name=REFRESH_TOOLS_UPDATE)
    async def refresh_tools(self) -> ConversationStatus:
        # Messages wait for the refresh: discovery's Nexus operations and a step's tool calls
        # never add up past the in-flight limit.
        self._refreshing = True
        try:
            await workflow.wait_condition(lambda: self._phase != "starting")
            if workflow.patched(REDISCOVERY_PATCH):
                # Endpoints created since the run started (missing ones) are picked up too.
                self._config = await self._load_config()
            assert self._config is not None
            await discover(self._config, self._memory)
            return self.status()
        finally:
            self._refreshing = False

    @refresh_tools.validator
    def _validate_refresh(self) -> None:
        if self._ended:
            raise ValueError(f"conversation {self._conversation_id} has ended")
        if self._busy():
            raise ValueError("a message is being answered; refresh tools after it")

    @workflow.update(name=END_UPDATE)
    async def end(self) -> Usage:
        self._ended = True
        # Messages queued behind the running turn are answered, not left waiting.
        for queued in self._memory.inbox:
            self._answer(
                queued.message_id,
                TurnResult(
                    conversation_id=self._conversation_id,
                    answer="",
                    message=queued.text,
                    ok=False,
                    error="the conversation ended before this message was answered",
                ),
            )
        self._memory.inbox.clear()
        # A turn waiting for decisions would wait for nobody: its approvals are dropped (the
        # calls are answered as denied), and the turn ends.
        runner = self._runner
        if runner is not None and waiting_calls(runner.state, self._memory):
            runner.cancel("the conversation ended")
        if not self._busy():
            self._phase = "ended"
        return self._memory.usage

    # ---- queries ------------------------------------------------------------------------------
    @workflow.query(name=STATUS_QUERY)
    def status(self) -> ConversationStatus:
        return ConversationStatus(
            conversation_id=self._conversation_id,
            state=self._state(),
            running=list(self._running),
            turns=self._memory.turns,
            model=self._config.model if self._config else "",
            offline_model=self._config.offline_model if self._config else False,
            tools=sorted(self._memory.routes),
            unavailable_endpoints=list(self._memory.unavailable),
            pending_approvals=waiting_calls(self._current_turn(), self._memory),
            queued_messages=len(self._memory.inbox),
            double_texting=self._double_texting,
        )

    def _state(self) -> ConversationPhase:
        runner = self._runner
        if runner is None:
            if self._memory.paused_turn is not None:
                return "awaiting_approval"
            return "ended" if self._ended and not self._busy() else self._phase
        if runner.thinking:
            return "thinking"
        if not self._running and waiting_calls(runner.state, self._memory):
            return "awaiting_approval"
        return "running_tools" if runner.state.step_calls is not None else "thinking"

    @workflow.query(name=TURNS_QUERY)
    def turns(self) -> list[TurnResult]:
        """The most recent turns; the whole conversation is in the store (`ReadConversation`)."""
        return list(self._memory.recent_turns)

    @workflow.query(name=USAGE_QUERY)
    def usage(self) -> Usage:
        return self._memory.usage

    @workflow.query(name=EVENTS_QUERY)
    def turn_events(self, after: int) -> EventsPage:
        """The turn events from offset `after` on (orchestrator.events); no history is written."""
        memory = self._memory
        return page(memory.events, memory.next_event, after)
