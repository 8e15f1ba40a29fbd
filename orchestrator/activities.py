"""The orchestrator's activities: configuration, the LLM step, and local tools. All I/O lives here."""

from __future__ import annotations

import json
from typing import Any

from temporalio import activity
from temporalio.api.operatorservice.v1 import ListNexusEndpointsRequest
from temporalio.client import Client

from orchestrator.config import LLMSettings, OrchestratorSettings
from orchestrator.llm import classify_llm_error, litellm
from orchestrator.models import (
    AgentConfig,
    ChatMessage,
    LlmRequest,
    LlmStepResult,
    LlmToolCall,
    Usage,
)
from orchestrator.tools import registry as local_registry
from shared.log import bound_context, get_logger
from shared.tool_activity import run_registered_tool
from shared.tools import ToolCall

log = get_logger(__name__)

LOAD_CONFIG_ACTIVITY = "load_agent_config"
LLM_STEP_ACTIVITY = "llm_step"
LOCAL_TOOL_ACTIVITY = "run_local_tool"


class OrchestratorActivities:
    def __init__(
        self, client: Client, settings: OrchestratorSettings, llm_settings: LLMSettings
    ) -> None:
        self._client = client
        self._settings = settings
        self._llm = llm_settings
        if llm_settings.offline:
            from orchestrator.offline_model import register_offline_model

            register_offline_model()

    @activity.defn(name=LOAD_CONFIG_ACTIVITY)
    async def load_agent_config(self) -> AgentConfig:
        """Read settings once per run; endpoints that do not exist are dropped, with a warning.

        Scheduling a Nexus operation on an endpoint that does not exist fails the workflow task,
        so a typo in ORCHESTRATOR_TOOL_ENDPOINTS must be caught here, not in the workflow.
        """
        existing = await self._existing_endpoints()
        endpoints = [e for e in self._settings.tool_endpoints if existing is None or e in existing]
        missing = [e for e in self._settings.tool_endpoints if e not in endpoints]
        if missing:
            log.warning("configured Nexus endpoints do not exist; skipping", endpoints=missing)
        return AgentConfig(
            tool_endpoints=endpoints,
            missing_endpoints=missing,
            discovery_timeout_seconds=self._settings.discovery_timeout_seconds,
            tool_timeout_seconds=self._settings.tool_timeout_seconds,
            max_steps=self._settings.max_steps,
            max_message_chars=self._settings.max_message_chars,
            model=self._llm.resolved_model,
            offline_model=self._llm.offline,
            llm_timeout_seconds=self._llm.timeout_seconds,
            system_prompt=self._settings.system_prompt,
        )

    async def _existing_endpoints(self) -> set[str] | None:
        try:
            response = await self._client.operator_service.list_nexus_endpoints(
                ListNexusEndpointsRequest(page_size=1000)
            )
        except Exception as err:  # e.g. Cloud API keys without operator rights: trust the config
            log.info("cannot list Nexus endpoints; using the configured list as is", error=str(err))
            return None
        return {endpoint.spec.name for endpoint in response.endpoints}

    @activity.defn(name=LLM_STEP_ACTIVITY)
    async def llm_step(self, request: LlmRequest) -> LlmStepResult:
        info = activity.info()
        with bound_context(
            namespace=info.namespace,
            workflow_id=info.workflow_id,
            conversation_id=request.conversation_id,
            attempt=info.attempt,
        ):
            kwargs: dict[str, Any] = {
                "model": self._llm.resolved_model,
                "messages": [to_openai_message(m) for m in request.messages],
                "num_retries": 0,  # Temporal owns retries
                "timeout": self._llm.timeout_seconds,
                "temperature": self._llm.temperature,
            }
            if request.tools:
                kwargs["tools"] = request.tools
            if self._llm.api_base:
                kwargs["api_base"] = self._llm.api_base
            if self._llm.api_key is not None:
                kwargs["api_key"] = self._llm.api_key.get_secret_value()
            try:
                response = await litellm.acompletion(**kwargs)
                result = parse_response(response)
            except Exception as err:
                failure = classify_llm_error(err)
                log.warning("model call failed", error=failure.message, kind=failure.type)
                raise failure from None
            log.info(
                "model answered",
                tool_calls=[c.name for c in result.tool_calls],
                prompt_tokens=result.usage.prompt_tokens,
            )
            return result

    @activity.defn(name=LOCAL_TOOL_ACTIVITY)
    async def run_local_tool(self, call: ToolCall) -> Any:
        return await run_registered_tool(local_registry, self._client, call)


def to_openai_message(message: ChatMessage) -> dict[str, Any]:
    payload: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        payload["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        payload["tool_call_id"] = message.tool_call_id
    if message.name is not None and message.role == "tool":
        payload["name"] = message.name
    return payload


def parse_response(response: Any) -> LlmStepResult:
    """Read a LiteLLM ModelResponse. A reply without choices is malformed (and retryable)."""
    if not getattr(response, "choices", None):
        raise ValueError("the model's reply has no choices")
    message = response.choices[0].message
    tool_calls = []
    for call in getattr(message, "tool_calls", None) or []:
        arguments = call.function.arguments
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        tool_calls.append(
            LlmToolCall(id=call.id or "", name=call.function.name or "", arguments=arguments or "")
        )
    usage = getattr(response, "usage", None)
    cost = 0.0
    try:
        cost = float(litellm.completion_cost(completion_response=response) or 0.0)
    except Exception:  # models without a price (local, fake, offline) cost nothing known
        cost = 0.0
    return LlmStepResult(
        content=message.content,
        tool_calls=tool_calls,
        usage=Usage(
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            cost_usd=cost,
        ),
        model=str(getattr(response, "model", "") or ""),
    )
