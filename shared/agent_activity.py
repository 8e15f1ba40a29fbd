"""A team agent's model step: LiteLLM, the agent's model list with fallbacks, its reply parsed.

Importing this module imports LiteLLM (~5 s): the worker loads it in a thread beside its start
(shared.agents.AgentModelActivities), not before it polls.

It needs the `agents` dependency group (LiteLLM). The transcript travels with the step (it lives in the agent workflow, bounded
by the agent's step limit), so the activity keeps no state and a retry asks again.
"""

from __future__ import annotations

import json
from typing import Any

from temporalio import activity

from shared.agents import (
    AGENT_ANSWER_CHARS,
    AgentModelReply,
    AgentModelRequest,
    AgentToolRequest,
)
from shared.heartbeat import heartbeating
from shared.llm import (
    classify_llm_error,
    complete_with_fallback,
    litellm,
    provider_arguments,
    usage_of,
)
from shared.llm_names import ModelChoice
from shared.log import bound_context, get_logger
from shared.offline_model import register_offline_model

log = get_logger(__name__)
# Calls one reply may ask for; more are dropped with a warning, as the orchestrator's loop does.
MAX_AGENT_REPLY_TOOL_CALLS = 16


register_offline_model()


async def model_step(request: AgentModelRequest) -> AgentModelReply:
    """The `agent_model_step` activity's work (shared.agents.AgentModelActivities runs it)."""
    info = activity.info()
    with bound_context(workflow_id=info.workflow_id, attempt=info.attempt):
        async with heartbeating():
            try:
                response, choice, passed_over = await complete_with_fallback(
                    request.models, lambda choice, _: _complete(request, choice)
                )
            except Exception as err:
                failure = classify_llm_error(err, trying_since=info.scheduled_time)
                log.warning("agent model call failed", error=failure.message)
                raise failure from None
            return _reply(response, choice, passed_over)


async def _complete(request: AgentModelRequest, choice: ModelChoice) -> Any:
    arguments: dict[str, Any] = {
        "model": choice.model,
        "messages": request.messages,
        "num_retries": 0,  # Temporal owns retries
        "timeout": request.timeout_seconds,
        "temperature": request.temperature,
        **provider_arguments(choice),
    }
    if request.tools:
        arguments["tools"] = request.tools
    return await litellm.acompletion(**arguments)


def _reply(response: Any, choice: ModelChoice, passed_over: list[str]) -> AgentModelReply:
    if not getattr(response, "choices", None):
        raise classify_llm_error(ValueError("the model's reply has no choices"))
    message = response.choices[0].message
    calls = list(getattr(message, "tool_calls", None) or [])
    if len(calls) > MAX_AGENT_REPLY_TOOL_CALLS:
        log.warning("agent model asked for too many calls", requested=len(calls))
    requests = []
    for index, call in enumerate(calls[:MAX_AGENT_REPLY_TOOL_CALLS]):
        arguments = call.function.arguments
        requests.append(
            AgentToolRequest(
                id=call.id or f"call-{index}",
                name=call.function.name or "",
                arguments=arguments if isinstance(arguments, str) else json.dumps(arguments),
            )
        )
    content = message.content
    if isinstance(content, str) and len(content) > AGENT_ANSWER_CHARS:
        content = content[:AGENT_ANSWER_CHARS] + "…"
    return AgentModelReply(
        content=content,
        tool_calls=requests,
        usage=usage_of(response, choice.model),
        model=choice.model,
        fallbacks=passed_over,
    )
