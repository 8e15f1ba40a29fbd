"""One turn of a conversation: ask the model, run the calls of each step, stop at an answer.

Workflow code. The turn's progress lives in a `TurnState`, so a turn paused on approvals can be
carried across continue-as-new and resumed where it stopped. Calls that need a person's decision
wait for it (or for the approval timeout) while the other calls of their step run; a denial
becomes the call's tool result, so the model can explain or adjust. `cancel()` stops the turn:
in-flight tool calls are cancelled (Nexus cancels the teams' tool workflows), waiting approvals
are dropped, and every call of the step is answered, so the transcript stays well formed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from orchestrator import telemetry
    from orchestrator.disclosure import LOAD_TOOLS
    from orchestrator.dispatch import (
        BOUNDED_FAN_OUT_PATCH,
        ApprovalNeed,
        Resolved,
        StepResult,
        ToolDispatcher,
        preview,
        rediscover_unavailable,
        signature,
        tool_message,
        unrun,
    )
    from orchestrator.events import TurnEvent, TurnEventKind, publish
    from orchestrator.gate import SYSTEM_APPROVER, denied, iso_time, record_decision
    from orchestrator.loop_settings import AgentConfig
    from orchestrator.model_step import MODEL_STEP_FAILURES, ask_model
    from orchestrator.models import (
        RECORD_APPROVAL_ACTIVITY,
        ApprovalRecord,
        CarriedState,
        ChatMessage,
        LlmToolCall,
        PendingApproval,
        PlannedCall,
        RecordApprovalInput,
        RunningTool,
        StoredMessage,
        ToolCallRecord,
        TurnResult,
        TurnState,
        Usage,
    )
    from orchestrator.tools import LOCAL_SERVICE
    from shared.agents import describe_agent_run
    from shared.caller import innermost_message

# Gated calls wait for a decision; conversations recorded before the gate never waited.
APPROVAL_GATE_PATCH = "approval-gate"
# All tool messages of one step together, in UTF-8 bytes: they travel in the next model step's
# input, which must stay far below Temporal's 2 MB payload limit however many calls the step made.
STEP_TOOL_MESSAGES_BYTES = 512_000
# Arguments shown to the person deciding a call, in full up to this many characters.
APPROVAL_ARGUMENTS_CHARS = 16_000

_REPEATED = {
    "error": "repeated_call",
    "message": "identical call already made in this turn; use its result",
}


def stage(memory: CarriedState, message: ChatMessage) -> None:
    """Give a message the next sequence number; the next model step stores it."""
    memory.pending.append(StoredMessage(seq=memory.next_seq, message=message))
    memory.next_seq += 1


class TurnRunner:
    def __init__(
        self,
        conversation_id: str,
        config: AgentConfig,
        memory: CarriedState,
        state: TurnState,
        running: list[RunningTool],
        on_waiting_changed: Callable[[], None] = lambda: None,
    ) -> None:
        self.state = state
        self._on_waiting_changed = on_waiting_changed  # calls began or stopped waiting
        self._conversation_id = conversation_id
        self._config = config
        self._memory = memory
        self._running = running
        self._dispatcher = ToolDispatcher(conversation_id, config, memory, running)
        self._calls_in_flight: dict[int, asyncio.Task[StepResult]] = {}
        self._call_ids: dict[int, str] = {}  # a planned call's platform call id, once resolved
        self._busy = 0  # model steps, tool calls and store writes under way
        self.thinking = False
        self.cancel_reason: str | None = None

    # ---- what the conversation asks of a running turn -----------------------------------------
    @property
    def paused_on_approvals_only(self) -> bool:
        """Nothing in flight, and every unfinished call of the step waits for a decision: the
        turn can be carried to the next run as it is."""
        calls = self.state.step_calls
        if self._busy or self.cancel_reason is not None or calls is None:
            return False
        unfinished = [c for c in calls if not c.done]
        return bool(unfinished) and all(
            c.pending is not None and c.pending.call_id not in self._memory.decisions
            for c in unfinished
        )

    def _emit(self, kind: TurnEventKind, **fields: Any) -> None:
        """Publish a turn event for the people watching (orchestrator.events)."""
        memory, now = self._memory, workflow.time()
        memory.next_event = publish(
            memory.events,
            memory.next_event,
            TurnEvent(
                offset=memory.next_event,
                kind=kind,
                turn=self.state.turn,
                at=datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
                message_id=self.state.message_id,
                **fields,
            ),
        )

    def cancel(self, reason: str) -> list[str]:
        """Stop the turn; returns the call ids of the approvals this drops."""
        if self.cancel_reason is not None:
            return []
        self.cancel_reason = reason
        dropped = [
            c.pending.call_id
            for c in self.state.step_calls or []
            if c.pending is not None
            and not c.done
            and c.pending.call_id not in self._memory.decisions
        ]
        for task in self._calls_in_flight.values():
            task.cancel()
        return dropped

    # ---- the loop -----------------------------------------------------------------------------
    async def run(self) -> TurnResult:
        state, config, memory = self.state, self._config, self._memory
        if state.step == 0 and state.step_calls is None:
            stage(memory, ChatMessage(role="user", content=state.text))
            self._emit("turn_started", text=state.text)
            if state.model is not None:
                state.notes.append(f"model chosen for this turn: {state.model}")
            await rediscover_unavailable(config, memory)
            if memory.unavailable:
                state.notes.append("tool services unavailable: " + ", ".join(memory.unavailable))
        while True:
            if state.step_calls is None:
                if self.cancel_reason is not None:
                    return self._result(error=f"cancelled: {self.cancel_reason}")
                if state.step >= config.max_steps:
                    note = f"stopped after {config.max_steps} model steps without a final answer"
                    state.notes.append(note)
                    return self._result(answer=note)
                state.step += 1
                self._emit("model_step_started", step=state.step, reply_seq=memory.next_seq)
                self.thinking = True
                self._busy += 1
                asked = workflow.time()
                try:
                    with telemetry.span(
                        f"model step {state.step}", **{"gen_ai.request.model": config.model}
                    ):
                        reply = await ask_model(
                            self._conversation_id,
                            config,
                            memory,
                            state.turn,
                            state.step,
                            model=state.model,
                        )
                except MODEL_STEP_FAILURES as err:
                    telemetry.model_step_failed(config.model, err, workflow.time() - asked)
                    return self._result(error=innermost_message(err))
                finally:
                    self._busy -= 1
                    self.thinking = False
                telemetry.model_step(config.model, "ok", workflow.time() - asked, reply.usage)
                state.notes.extend(reply.fallbacks)
                state.usage = state.usage.add(reply.usage)
                memory.usage = memory.usage.add(reply.usage)
                if reply.compacted:
                    self._emit("compaction", step=state.step)
                    telemetry.compaction()
                    state.notes.append(
                        "older turns were summarised to fit the model's context window"
                    )
                if not reply.tool_calls:
                    return self._result(answer=reply.content or "")
                state.step_calls = self._plan(reply.tool_calls)
            stopped = await self._finish_step()
            if stopped is not None:
                return stopped

    def _plan(self, calls: list[LlmToolCall]) -> list[PlannedCall]:
        limit = self._config.max_tool_calls_per_step
        not_run: list[LlmToolCall] = []
        if len(calls) > limit and workflow.patched(BOUNDED_FAN_OUT_PATCH):
            calls, not_run = calls[:limit], calls[limit:]
        # A call repeats one made in an earlier step of the turn; identical calls within one
        # step all run (as they always did: replays of such steps schedule the same commands).
        before = set(self.state.executed)
        executed = before | {signature(call) for call in calls}
        fresh = [call for call in calls if signature(call) not in before]
        # A call's index (part of its call id) counts the step's calls that run.
        planned = [PlannedCall(index=index, call=call) for index, call in enumerate(fresh)]
        planned.extend(
            PlannedCall(index=-1 - i, call=call, kind="repeated", done=True)
            for i, call in enumerate(c for c in calls if signature(c) in before)
        )
        if not_run:
            self.state.notes.append(
                f"{len(not_run)} tool calls of one step were not run (limit {limit})"
            )
        planned.extend(
            PlannedCall(
                index=limit + i,
                call=call,
                kind="not_run",
                done=True,
                content=tool_message(call, _not_run(limit)).content,
            )
            for i, call in enumerate(not_run)
        )
        self.state.executed = sorted(executed)
        return planned

    async def _finish_step(self) -> TurnResult | None:
        """Run (or wait for) every unfinished call of the step, then hand the results to the
        model's transcript. Returns the turn's result when the step ends the turn."""
        state, config = self.state, self._config
        assert state.step_calls is not None
        fresh = [c for c in state.step_calls if c.kind == "run"]
        unfinished = [c for c in fresh if not c.done]
        limit = config.max_parallel_tools
        slots = asyncio.Semaphore(limit) if len(fresh) > limit else None
        if slots is not None and not workflow.patched(BOUNDED_FAN_OUT_PATCH):
            slots = None
        await asyncio.gather(*(self._settle(planned, slots) for planned in unfinished))

        for planned in fresh:
            if planned.record is not None:
                state.records.append(planned.record)
            stage(self._memory, _as_tool_message(planned))
        for planned in state.step_calls:
            if planned.kind == "repeated":
                stage(self._memory, tool_message(planned.call, _REPEATED))
        for planned in state.step_calls:
            if planned.kind == "not_run":
                stage(self._memory, _as_tool_message(planned))
        repeated = [c.call for c in state.step_calls if c.kind == "repeated"]
        state.step_calls = None
        if self.cancel_reason is not None:
            return self._result(error=f"cancelled: {self.cancel_reason}")
        if repeated and not fresh:
            note = (
                f"stopped: the model repeated the identical call {repeated[0].name}"
                f"({repeated[0].arguments}) instead of answering"
            )
            state.notes.append(note)
            return self._result(answer=note)
        return None

    async def _settle(self, planned: PlannedCall, slots: asyncio.Semaphore | None) -> None:
        resolved = self._dispatcher.resolve(
            self.state.turn, self.state.step, planned.index, planned.call
        )
        if not isinstance(resolved, Resolved):
            route = self._memory.routes.get(planned.call.name)
            if route is not None:  # an unknown name is the model's guess: never a label
                telemetry.tool_call(route.spec.service, route.spec.name, "rejected")
            elif planned.call.name == LOAD_TOOLS:  # answered in the workflow (disclosure)
                outcome = "ok" if resolved[0].ok else "failed"
                telemetry.tool_call(LOCAL_SERVICE, LOAD_TOOLS, outcome)
            else:
                telemetry.tool_call("unknown", "unknown", "rejected")
            self._finish(planned, resolved)
            return
        self._call_ids[planned.index] = resolved.call.call_id
        approval: ApprovalRecord | None = None
        if self.cancel_reason is None:
            needed = self._dispatcher.approval_needed(resolved)
            if needed is not None and workflow.patched(APPROVAL_GATE_PATCH):
                approval = await self._decision(planned, resolved, needed)
                if approval.verdict != "approve":
                    spec = resolved.route.spec
                    telemetry.tool_call(spec.service, spec.name, "denied")
                    self._finish(planned, denied(resolved, approval), approval)
                    return
        if self.cancel_reason is not None:
            self._finish(planned, _cancelled(resolved, self.cancel_reason), approval)
            return
        if approval is not None:
            resolved = Resolved(
                route=resolved.route,
                call=resolved.call.model_copy(update={"approval": approval.for_team()}),
            )
        self._emit(
            "tool_started",
            step=self.state.step,
            call_id=resolved.call.call_id,
            tool=resolved.route.spec.name,
            service=resolved.route.spec.service,
        )
        self._busy += 1
        try:
            if slots is None:
                result = await self._cancellable(planned, resolved)
            else:
                async with slots:
                    result = await self._cancellable(planned, resolved)
        finally:
            self._busy -= 1
        self._finish(planned, result, approval)

    async def _cancellable(self, planned: PlannedCall, resolved: Resolved) -> StepResult:
        if self.cancel_reason is not None:
            return _cancelled(resolved, self.cancel_reason)
        task = asyncio.create_task(self._dispatcher.execute(planned.call, resolved))
        self._calls_in_flight[planned.index] = task
        try:
            return await task
        except asyncio.CancelledError:
            # The tool was cancelled with the turn; Nexus has asked the team to cancel its run.
            return _cancelled(resolved, self.cancel_reason or "cancelled")
        finally:
            self._calls_in_flight.pop(planned.index, None)

    async def _decision(
        self, planned: PlannedCall, resolved: Resolved, needed: ApprovalNeed
    ) -> ApprovalRecord:
        """Wait for a person's decision on the call, the approval timeout, or a cancel."""
        memory, call_id = self._memory, resolved.call.call_id
        reason, approvers = needed.reason, needed.approvers
        if planned.pending is None:
            now = workflow.time()
            expires = now + self._config.approval_timeout_seconds
            planned.expires_at = expires
            planned.pending = PendingApproval(
                call_id=call_id,
                tool=resolved.route.spec.name,
                service=resolved.route.spec.service,
                args=preview(resolved.call.args, APPROVAL_ARGUMENTS_CHARS),
                reason=reason,
                approvers=approvers,
                turn=self.state.turn,
                requested_at=iso_time(now),
                expires_at=iso_time(expires),
            )
            self._emit(
                "approval_requested",
                step=self.state.step,
                call_id=call_id,
                tool=planned.pending.tool,
                service=planned.pending.service,
                detail=reason,
                args=str(planned.pending.args)[:2000],
            )
        pending = planned.pending
        left = planned.expires_at - workflow.time()
        if needed.nobody_may_approve:
            record_decision(
                memory,
                pending,
                verdict="deny",
                approver=SYSTEM_APPROVER,
                reason="no one may approve it: the team's approvers and this deployment's "
                "(approval_policies) share no one",
                decided_at=iso_time(workflow.time()),
            )
        self._on_waiting_changed()
        try:
            await workflow.wait_condition(
                lambda: call_id in memory.decisions or self.cancel_reason is not None,
                timeout=timedelta(seconds=max(left, 0.001)),
            )
        except TimeoutError:
            pass
        record = memory.decisions.get(call_id)
        if record is None:
            timed_out = self.cancel_reason is None
            record = record_decision(
                memory,
                pending,
                verdict="deny",
                approver=SYSTEM_APPROVER,
                reason=(
                    f"no decision within {self._config.approval_timeout_seconds:g} s"
                    if timed_out
                    else f"the turn was cancelled ({self.cancel_reason})"
                ),
                decided_at=iso_time(workflow.time()),
                timed_out=timed_out,
            )
        self._on_waiting_changed()
        self._emit(
            "approval_decided",
            step=self.state.step,
            call_id=call_id,
            tool=record.tool,
            service=record.service,
            verdict=record.verdict,
            approver=record.approver,
            detail=record.reason,
        )
        asked_at = datetime.fromisoformat(pending.requested_at).timestamp()
        telemetry.approval_decided(
            record.service, record.tool, record.verdict, max(workflow.time() - asked_at, 0.0)
        )
        self._busy += 1
        try:
            await workflow.execute_local_activity(
                RECORD_APPROVAL_ACTIVITY,
                RecordApprovalInput(conversation_id=self._conversation_id, record=record),
                start_to_close_timeout=timedelta(seconds=30),
            )
        finally:
            self._busy -= 1
        return record

    def _finish(
        self, planned: PlannedCall, result: StepResult, approval: ApprovalRecord | None = None
    ) -> None:
        record, content = result
        planned.record = record.model_copy(update={"approval": approval}) if approval else record
        if record.usage is not None:
            # A team agent's own model steps are this turn's cost too.
            agent_usage = Usage.of_agent(record.usage)
            self.state.usage = self.state.usage.add(agent_usage)
            self._memory.usage = self._memory.usage.add(agent_usage)
        self._emit(
            "tool_finished",
            step=self.state.step,
            call_id=self._call_ids.get(planned.index, planned.call.id),
            tool=record.name,
            service=record.service,
            ok=record.ok,
            detail=describe_agent_run(content) if record.usage else _failure(record),
        )
        # Kept as the tool message the model will read, already cut to its share of the step's
        # budget: a step paused on approvals is carried across continue-as-new with its results.
        calls = self.state.step_calls or []
        fresh = max(1, sum(1 for c in calls if c.kind == "run"))
        planned.content = tool_message(
            planned.call,
            content,
            self._config.max_tool_message_chars,
            STEP_TOOL_MESSAGES_BYTES // fresh,
        ).content
        planned.done = True

    def _result(self, answer: str = "", error: str | None = None) -> TurnResult:
        state = self.state
        if error is None:
            self._emit("answer", step=state.step, text=answer)
        else:
            self._emit("error", step=state.step, text=error)
        return TurnResult(
            conversation_id=self._conversation_id,
            answer=answer,
            message=state.text,
            tool_calls=state.records,
            usage=state.usage,
            ok=error is None,
            error=error,
            notes=state.notes,
            cancelled=self.cancel_reason is not None,
        )


def _failure(record: ToolCallRecord) -> str | None:
    return None if record.ok else str(record.result)[:300]


def _as_tool_message(planned: PlannedCall) -> ChatMessage:
    return ChatMessage(
        role="tool", tool_call_id=planned.call.id, name=planned.call.name, content=planned.content
    )


def _not_run(limit: int) -> dict[str, str]:
    return {
        "error": "not_run",
        "message": f"not run: at most {limit} tool calls per step; ask for the rest in the next step",
    }


def _cancelled(resolved: Resolved, reason: str) -> StepResult:
    return unrun(resolved, "cancelled", f"not finished: the turn was cancelled ({reason})")
