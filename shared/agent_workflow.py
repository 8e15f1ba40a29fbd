"""TeamAgentWorkflow: a team's agent, run in the team's namespace for one call of it.

The loop is the agent's own: its instructions, its model list (with fallbacks, in the model step
activity), its step limit and budget. Its tools are the team's, each call a child `ToolWorkflow`
on this worker, so the tool runs as any call of it does (idempotent by call id, retried by the
tool's policy). A call the tool's approval policy holds back fails without running, and the agent
proposes it to its caller instead. An agent may delegate to another agent of its team (a child
run of this workflow) while the call's depth stays under MAX_AGENT_DEPTH. Cancelling the caller's
Nexus operation cancels this run, and with it the model step and the tool runs in flight.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import timedelta
from typing import Any

from pydantic import ValidationError
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError, ChildWorkflowError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from shared.agents import (
        AGENT_ARGUMENT_CHARS,
        AGENT_MODEL_STEP_ACTIVITY,
        AGENT_TOOL_RESULT_CHARS,
        AGENT_TRANSCRIPT_CHARS,
        AGENT_WORKFLOW_NAME,
        AgentAnswer,
        AgentModelReply,
        AgentModelRequest,
        AgentRunInput,
        AgentTask,
        AgentToolCall,
        AgentToolLimits,
        AgentToolRequest,
        ProposedCall,
    )
    from shared.arguments import read_arguments
    from shared.caller import innermost_message
    from shared.contract import (
        MAX_AGENT_DEPTH,
        TOOL_NEEDS_APPROVAL,
        ToolCall,
        ToolResult,
    )
    from shared.heartbeat import HEARTBEAT_TIMEOUT
    from shared.llm_names import NON_RETRYABLE_LLM_ERRORS
    from shared.tool_workflow import ToolWorkflow
    from shared.tools import ToolWorkflowInput

MODEL_STEP_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=6,
    non_retryable_error_types=NON_RETRYABLE_LLM_ERRORS,
)


@workflow.defn(name=AGENT_WORKFLOW_NAME)
class TeamAgentWorkflow:
    def __init__(self) -> None:
        self._answer = AgentAnswer(answer="")

    @workflow.query
    def progress(self) -> AgentAnswer:
        """The run so far: steps taken, calls made, usage (the answer once it is given)."""
        return self._answer

    @workflow.run
    async def run(self, request: AgentRunInput) -> ToolResult:
        agent, answer = request.agent, self._answer
        allowed = [t for t in request.tools if t.spec.name in agent.tools]
        model_tools = [_model_tool(limits) for limits in allowed]
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": agent.instructions},
            {"role": "user", "content": _task_text(agent.task_template, request.task)},
        ]
        while True:
            stop = self._limit_reached(request, messages)
            if stop is not None:
                answer.notes.append(stop)
                answer.answer = stop
                break
            answer.steps += 1
            # The last allowed step gets no tools: its answer is the agent's, and no call is
            # made whose result nobody would read.
            last = answer.steps == agent.max_steps
            reply: AgentModelReply = await workflow.execute_activity(
                AGENT_MODEL_STEP_ACTIVITY,
                AgentModelRequest(
                    messages=messages,
                    tools=[] if last else model_tools,
                    models=agent.models,
                    timeout_seconds=agent.model_timeout_seconds,
                    temperature=agent.temperature,
                ),
                result_type=AgentModelReply,
                start_to_close_timeout=timedelta(
                    seconds=len(agent.models) * agent.model_timeout_seconds + 10
                ),
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=MODEL_STEP_RETRY,
                summary=f"{agent.name} model step {answer.steps}",
            )
            answer.usage = answer.usage.add(reply.usage)
            answer.models.append(reply.model)
            answer.notes.extend(reply.fallbacks)
            messages.append(_assistant(reply))
            if not reply.tool_calls:
                answer.answer = reply.content or ""
                break
            outputs = await asyncio.gather(
                *(
                    self._call(request, allowed, answer.steps, index, call)
                    for index, call in enumerate(reply.tool_calls)
                )
            )
            for call, output in zip(reply.tool_calls, outputs, strict=True):
                messages.append(
                    {"role": "tool", "tool_call_id": call.id, "name": call.name, "content": output}
                )
        return ToolResult(
            call_id=request.call.call_id,
            tool=request.call.tool,
            service=request.service,
            output=answer.model_dump(mode="json"),
            usage=answer.usage,
        )

    def _limit_reached(self, request: AgentRunInput, messages: list[dict[str, Any]]) -> str | None:
        agent, answer = request.agent, self._answer
        used = answer.usage
        # Every step's input carries the transcript: it must stay far below Temporal's 2 MB.
        size = len(json.dumps(messages, ensure_ascii=False, default=str))
        if size > AGENT_TRANSCRIPT_CHARS:
            return f"stopped: the agent's transcript reached {size} characters"
        if answer.steps >= agent.max_steps:
            return f"stopped after {agent.max_steps} model steps without a final answer"
        if used.prompt_tokens + used.completion_tokens >= agent.budget.max_tokens:
            return f"stopped: the agent's budget of {agent.budget.max_tokens} tokens is spent"
        limit = agent.budget.max_cost_usd
        if limit is not None and used.cost_usd >= limit:
            return f"stopped: the agent's budget of {limit} USD is spent"
        return None

    async def _call(
        self,
        request: AgentRunInput,
        allowed: list[AgentToolLimits],
        step: int,
        index: int,
        asked: AgentToolRequest,
    ) -> str:
        """Run one call the model asked for; the tool message it reads."""
        limits = next((t for t in allowed if t.spec.name == asked.name), None)
        if limits is None:
            names = ", ".join(t.spec.name for t in allowed) or "none"
            return _error(f"unknown tool '{asked.name}' (this agent's tools: {names})")
        args, problem = read_arguments(asked.arguments, AGENT_ARGUMENT_CHARS)
        if args is None:
            return _error(f"'{asked.name}' was not called: {problem}")
        try:
            call = ToolCall(
                call_id=_child_call_id(request.call.call_id, step, index),
                tool=asked.name,
                args=args,
                conversation_id=request.call.conversation_id,
                user=request.call.user,
                depth=request.call.depth + 1,
            )
        except ValidationError as err:
            return _error(f"'{asked.name}' was not called: {err.errors()[0]['msg']}")
        record = AgentToolCall(tool=asked.name, args=args)
        self._answer.tool_calls.append(record)
        try:
            output = await self._run(request, limits, call)
        except ChildWorkflowError as err:
            if is_cancelled_exception(err):
                raise
            cause = err.cause
            message = innermost_message(err)
            record.ok, record.output = False, message
            if isinstance(cause, ApplicationError) and cause.type == TOOL_NEEDS_APPROVAL:
                self._answer.proposed_calls.append(
                    ProposedCall(
                        tool=asked.name, service=limits.spec.service, args=args, reason=message
                    )
                )
                return _error(
                    f"not run: {message}. It is proposed to your caller, who may make the call "
                    "through its approval gate; do not retry it"
                )
            return _error(message)
        except ApplicationError as err:  # refused before anything started (the depth bound)
            record.ok, record.output = False, err.message
            return _error(err.message)
        text = _bounded(output)
        record.output = output if len(text) <= AGENT_TOOL_RESULT_CHARS else text
        return text

    async def _run(self, request: AgentRunInput, limits: AgentToolLimits, call: ToolCall) -> Any:
        spec = limits.spec
        if spec.kind == "agent":
            nested = request.agents.get(spec.name)
            if nested is None:
                raise ApplicationError(f"not run: agent '{spec.name}' is not published any more")
            if call.depth >= MAX_AGENT_DEPTH:
                raise ApplicationError(
                    f"not run: delegating to agent '{spec.name}' would go {call.depth + 1} "
                    f"agents deep (at most {MAX_AGENT_DEPTH})"
                )
            try:
                task = AgentTask.model_validate(call.args)
            except ValueError as err:
                raise ApplicationError(
                    f"invalid arguments for agent '{spec.name}': {err}"
                ) from None
            result: ToolResult = await workflow.execute_child_workflow(
                TeamAgentWorkflow.run,
                request.model_copy(update={"call": call, "agent": nested, "task": task}),
                id=call.workflow_id,
                execution_timeout=timedelta(seconds=nested.timeout_seconds),
                static_summary=f"agent {spec.name} for {request.agent.name}",
            )
            if result.usage is not None:
                self._answer.usage = self._answer.usage.add(result.usage)
            return result.output
        tool_result: ToolResult = await workflow.execute_child_workflow(
            ToolWorkflow.run,
            ToolWorkflowInput(
                call=call,
                service=request.service,
                timeout_seconds=spec.timeout_seconds,
                max_attempts=limits.max_attempts,
                local_activity=limits.local_activity,
            ),
            id=call.workflow_id,
            static_summary=f"{spec.name} for agent {request.agent.name}",
        )
        return tool_result.output


def _child_call_id(parent: str, step: int, index: int) -> str:
    """A call id per step and call, stable across replays; a long parent id is hashed, so
    nested agents never outgrow the 200 characters a call id may have."""
    base = parent if len(parent) <= 120 else "h" + hashlib.sha256(parent.encode()).hexdigest()[:40]
    return f"{base}.{step}.{index}"


def _task_text(template: str, task: AgentTask) -> str:
    text = template.replace("{task}", task.task)
    return text if not task.context else f"{text}\n\nContext:\n{task.context}"


def _model_tool(limits: AgentToolLimits) -> dict[str, Any]:
    spec = limits.spec
    return {
        "type": "function",
        "function": {
            "name": spec.name,
            "description": spec.description,
            "parameters": spec.parameters,
        },
    }


def _assistant(reply: AgentModelReply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in reply.tool_calls
        ]
    return message


def _error(message: str) -> str:
    return json.dumps({"error": message}, ensure_ascii=False)


def _bounded(output: Any) -> str:
    text = json.dumps(output, ensure_ascii=False, default=str)
    if len(text) <= AGENT_TOOL_RESULT_CHARS:
        return text
    return text[:AGENT_TOOL_RESULT_CHARS] + f"…[{len(text) - AGENT_TOOL_RESULT_CHARS} more]"
