"""A direct tool call: one call a person's MCP client makes (`agent mcp`), run as a turn.

Workflow code. The conversation queues a direct call like a message (`call_tool` update) and
answers it with a `DirectCallRunner` instead of a `TurnRunner`: no model step, one planned call,
settled by the very code a model's call goes through (`TurnRunner._settle`): routing and argument
checks, the approval gate (the call waits for `decide`, `agent approve`, or its timeout; the
`status` query and `agent approvals` list it), the per-endpoint circuit breaker, and the Nexus
call with the signed caller token. The turn is recorded in the store like any other (`agent
history` shows it); nothing enters the model's transcript.
"""

from __future__ import annotations

from collections.abc import Callable

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from orchestrator.dispatch import preview, rediscover_unavailable
    from orchestrator.loop_settings import AgentConfig
    from orchestrator.models import (
        CarriedState,
        DirectCall,
        LlmToolCall,
        RunningTool,
        TurnResult,
        TurnState,
    )
    from orchestrator.turn import TurnRunner

# How a direct call reads as the turn's message in `agent history`.
DESCRIBED_ARGUMENTS_CHARS = 500


def describe(call: DirectCall) -> str:
    """The turn's message for a direct call: what was called, with which arguments."""
    return f"[direct tool call] {call.tool} {preview(call.arguments, DESCRIBED_ARGUMENTS_CHARS)}"


class DirectCallRunner(TurnRunner):
    """Runs a turn that is one direct tool call (`TurnState.direct`)."""

    def __init__(
        self,
        conversation_id: str,
        config: AgentConfig,
        memory: CarriedState,
        state: TurnState,
        running: list[RunningTool],
        on_waiting_changed: Callable[[], None] = lambda: None,
    ) -> None:
        direct = state.direct
        assert direct is not None
        bound = direct.approval_timeout_seconds
        if bound is not None and bound < config.approval_timeout_seconds:
            # The caller waits this long for a decision; then the call is denied as timed out.
            config = config.model_copy(update={"approval_timeout_seconds": bound})
        super().__init__(conversation_id, config, memory, state, running, on_waiting_changed)
        self._direct = direct

    async def run(self) -> TurnResult:
        state, direct = self.state, self._direct
        if state.step_calls is None:  # not resumed from the previous run, paused on approval
            self._emit("turn_started", text=state.text)
            await rediscover_unavailable(self._config, self._memory)
            state.step = 1
            call = LlmToolCall(
                id=f"direct-{state.turn}", name=direct.tool, arguments=direct.arguments
            )
            state.step_calls = self._plan([call])
        planned = state.step_calls[0]
        if not planned.done:
            await self._settle(planned, None)
        state.step_calls = None
        record = planned.record
        assert record is not None
        state.records.append(record)
        content = planned.content or ""
        if record.ok:
            return self._result(answer=content)
        result = self._result(error=str(record.result))
        result.answer = content  # `{"error": kind, "message": ...}`, as the model would read it
        return result


def runner_for(
    conversation_id: str,
    config: AgentConfig,
    memory: CarriedState,
    state: TurnState,
    running: list[RunningTool],
    on_waiting_changed: Callable[[], None],
) -> TurnRunner:
    """The runner for a turn: a direct call's, or the model's loop."""
    kind = DirectCallRunner if state.direct is not None else TurnRunner
    return kind(conversation_id, config, memory, state, running, on_waiting_changed)
