"""The orchestrator's activities: configuration, the LLM step, and local tools. All I/O lives here."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from temporalio import activity
from temporalio.api.operatorservice.v1 import (
    ListNexusEndpointsRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from orchestrator.config import LLMSettings, OrchestratorSettings
from orchestrator.context import (
    SUMMARY_PROMPT,
    ContextWindow,
    build_context,
    extractive_summary,
)
from orchestrator.llm_span import model_call_span, record_response
from orchestrator.loop_settings import AgentConfig
from orchestrator.models import (
    LLM_STEP_ACTIVITY,
    LOAD_CONFIG_ACTIVITY,
    LOCAL_TOOL_ACTIVITY,
    READ_TURNS_ACTIVITY,
    RECORD_APPROVAL_ACTIVITY,
    RECORD_TURN_ACTIVITY,
    STORE_BEHIND_ERROR,
    TOOL_CATALOG_MISSING_ERROR,
    ChatMessage,
    LlmRequest,
    LlmStepResult,
    LlmToolCall,
    ReadConversationInput,
    RecordApprovalInput,
    RecordTurnInput,
    TurnResult,
    Usage,
)
from orchestrator.spending import Spending, response_usage
from orchestrator.store import ConversationStore, open_store
from orchestrator.token_sink import TokenSink, stream_completion
from orchestrator.tools import registry as local_registry
from shared.config import AWAITING_APPROVAL_ATTRIBUTE
from shared.heartbeat import heartbeating
from shared.llm import (
    classify_llm_error,
    complete_with_fallback,
    litellm,
    litellm_errors,
    provider_arguments,
)
from shared.llm_names import ModelChoice
from shared.log import bound_context, get_logger
from shared.telemetry import TelemetrySettings, traces
from shared.tool_activity import run_registered_tool
from shared.tools import ToolCall

log = get_logger(__name__)

# Hard bounds on one model reply (the workflow's own per-step limits are settings and lower).
MAX_REPLY_TOOL_CALLS = 128
MAX_REPLY_CHARS = 64_000
# All calls of one reply together, in UTF-8 bytes: the reply is a local activity's result, recorded
# in a marker of the workflow task's completion, which Temporal refuses over 2 MB.
MAX_REPLY_ARGUMENT_BYTES = 512_000
# Tool lists kept in memory by digest (a handful of distinct lists per deployment; each ~6 KB).
CATALOGS_CACHED = 64


class OrchestratorActivities:
    def __init__(
        self,
        client: Client,
        settings: OrchestratorSettings,
        llm_settings: LLMSettings,
        store: ConversationStore | None = None,
    ) -> None:
        self._client = client
        self._settings = settings
        self._llm = llm_settings
        self._store = store or open_store(
            settings.store_url,
            settings.store_password.get_secret_value() if settings.store_password else None,
        )
        self._spending = Spending(self._store, settings, llm_settings.resolved_model)
        self._catalogs: dict[str, str] = {}  # digest -> the tool list's JSON
        # Prompt and reply text in model spans only when the deployment allows it.
        self._capture_content = TelemetrySettings().telemetry_capture_content
        self._awaiting_attribute_seen = False
        self._window = ContextWindow(
            model=llm_settings.resolved_model,
            context_tokens=settings.context_tokens,
            keep_recent_turns=settings.keep_recent_turns,
            compact_after_turns=settings.compact_after_turns,
            max_tool_output_chars=settings.max_tool_output_chars,
            offline=llm_settings.offline,
        )
        if llm_settings.offline:
            from shared.offline_model import register_offline_model

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
        # Every setting the workflow reads has the same name in OrchestratorSettings.
        shared_settings = self._settings.model_dump(include=set(AgentConfig.model_fields))
        return AgentConfig(
            **shared_settings
            | {
                "tool_endpoints": endpoints,
                "missing_endpoints": missing,
                "model": self._llm.resolved_model,
                "models_in_list": len(self._llm.models),
                "offline_model": self._llm.offline,
                "llm_timeout_seconds": self._llm.timeout_seconds,
                "awaiting_approval_attribute": await self._has_awaiting_attribute(),
                "tracing": traces(self._client),
            }
        )

    async def _has_awaiting_attribute(self) -> bool:
        """Whether conversations can mark themselves as waiting for approval (the namespace has
        the search attribute); without it they run the same and are found by asking each.

        Asked once per worker once it is there (attributes are not removed in practice), not on
        every conversation's start; until then, again on each start, so one added later counts."""
        if self._awaiting_attribute_seen:
            return True
        try:
            listed = await self._client.operator_service.list_search_attributes(
                ListSearchAttributesRequest(namespace=self._client.namespace)
            )
        except Exception as err:  # e.g. keys without operator rights: do without it
            log.warning("cannot list search attributes", error=str(err))
            return False
        self._awaiting_attribute_seen = AWAITING_APPROVAL_ATTRIBUTE in listed.custom_attributes
        return self._awaiting_attribute_seen

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
        """Append the step's new messages, build the model's view, ask the model, store its reply.

        Every write is keyed by sequence number, so a retried attempt changes nothing twice.
        """
        info = activity.info()
        with bound_context(
            namespace=info.namespace,
            workflow_id=info.workflow_id,
            conversation_id=request.conversation_id,
            attempt=info.attempt,
        ):
            async with heartbeating():
                return await self._step(request, info)

    async def _step(self, request: LlmRequest, info: activity.Info) -> LlmStepResult:
        cid = request.conversation_id
        start = await self._store.start_step(
            cid, request.stored_before, request.new_messages, request.reply_seq
        )
        self._check_store(cid, start.held, request.stored_before)
        answered = _stored_reply(start.reply)
        if answered is not None:
            # An earlier attempt got and stored the model's reply, then failed to report it:
            # answer with that reply, so the tool calls the workflow runs are the stored ones.
            log.info("model step already answered; returning the stored reply")
            return answered.model_copy(
                update={"usage": await self._spending.recorded(cid, request.reply_seq)}
            )
        # Before anything is asked of the model: a spent budget stops the step here.
        await self._spending.check(request)
        tools = await self._tools_for(request)
        summaries = _SummaryUsage(self._summarise)
        sink = TokenSink(self._store, request) if self._llm.stream else None
        try:
            messages, compacted = await build_context(self._store, cid, self._window, summaries)
            try:
                response, usage, passed_over, answered_by = await self._complete(
                    messages, tools, sink, request.model
                )
            except litellm_errors.ContextWindowExceededError:
                # The provider's count beat ours: fold older turns away and run the step again.
                messages, compacted = await build_context(
                    self._store, cid, self._window, summaries, force_compaction=True
                )
                response, usage, passed_over, answered_by = await self._complete(
                    messages, tools, sink, request.model
                )
            # The step's usage includes the summarising call compaction made, if any.
            usage = usage.add(summaries.usage) if summaries.calls else usage
            result = parse_response(response, reply_seq=request.reply_seq, usage=usage)
            result = result.model_copy(update={"fallbacks": passed_over})
        except Exception as err:
            failure = classify_llm_error(err, trying_since=info.scheduled_time)
            log.warning("model call failed", error=failure.message, kind=failure.type)
            raise failure from None
        reply = ChatMessage(role="assistant", content=result.content, tool_calls=result.tool_calls)
        kept = await self._store.put_reply(cid, request.reply_seq, reply)
        await self._spending.record(request, result.usage, kept, tools, model=answered_by)
        if kept != reply:
            # Another attempt of this step (its worker presumed dead) stored its reply first: the
            # workflow must act on the stored one, or its tool calls would not be the transcript's.
            log.info("an earlier attempt stored this step's reply first; returning that one")
            stored = _stored_reply(kept)
            if stored is not None:
                return stored.model_copy(update={"usage": result.usage, "model": result.model})
        log.info(
            "model answered",
            tool_calls=[c.name for c in result.tool_calls],
            prompt_tokens=result.usage.prompt_tokens,
            compacted=compacted,
        )
        return result.model_copy(update={"compacted": compacted})

    async def _tools_for(self, request: LlmRequest) -> list[dict[str, Any]]:
        """The step's tool list: the one it carries (kept under its digest for the next steps),
        or the one stored under its digest."""
        digest = request.tools_digest
        if request.tools is not None:
            if digest and digest not in self._catalogs:
                await self._store.put_catalog(digest, request.tools)
                self._remember_catalog(digest, request.tools)
            return request.tools
        cached = self._catalogs.get(digest)
        if cached is not None:
            # A fresh list per call: provider transforms may change tool dicts in place.
            tools: list[dict[str, Any]] = json.loads(cached)
            return tools
        stored = await self._store.catalog(digest)
        if stored is None:
            raise ApplicationError(
                f"no tool list is stored under digest {digest[:12]}; send it with the step",
                type=TOOL_CATALOG_MISSING_ERROR,
                non_retryable=True,
            )
        self._remember_catalog(digest, stored)
        return stored

    def _remember_catalog(self, digest: str, tools: list[dict[str, Any]]) -> None:
        self._catalogs[digest] = json.dumps(tools)
        while len(self._catalogs) > CATALOGS_CACHED:
            self._catalogs.pop(next(iter(self._catalogs)))

    def _check_store(self, conversation_id: str, held: int, expected: int) -> None:
        """Refuse to run the model on a transcript with holes: a store that lost messages (deleted,
        truncated, restored from an old backup) must be a loud error, never a silent fresh start.
        """
        if held == expected:
            return
        log.error("conversation store is behind", held=held, expected=expected)
        raise ApplicationError(
            f"conversation {conversation_id}: the conversation store is behind: it holds {held} "
            f"of the {expected} messages this conversation wrote ({expected - held} missing). "
            "Restore the store from a backup (`agent store restore`) or start a new conversation.",
            type=STORE_BEHIND_ERROR,
            non_retryable=True,
        )

    async def _complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        sink: TokenSink | None = None,
        model: str | None = None,
    ) -> tuple[Any, Usage, list[str], str]:
        """Ask the model, or the next of LLM_FALLBACK_MODELS when it cannot answer now; the
        reply, its tokens and cost (priced once, here, under the model that answered), one line
        per model passed over, and the model that answered.

        With a `sink`, the reply is streamed: its text deltas go to the sink (the store, for live
        readers) as they arrive, and the reply is assembled from the chunks when it ends."""

        async def ask(choice: ModelChoice, index: int) -> tuple[Any, Usage]:
            if sink is not None and sink.started:
                # Readers already have part of a failed model's answer: the step's next
                # attempt starts a new stream instead of appending another model's text.
                raise ApplicationError(
                    "the model failed after streaming part of its answer; asking again",
                    type="LlmUnavailable",
                )
            kwargs: dict[str, Any] = {
                "model": choice.model,
                "messages": messages,
                "num_retries": 0,  # Temporal owns retries
                "timeout": self._llm.timeout_seconds,
                "temperature": self._llm.temperature,
            }
            if tools:
                kwargs["tools"] = tools
            if choice != primary:
                kwargs.update(provider_arguments(choice))
            else:
                if self._llm.api_base:
                    kwargs["api_base"] = self._llm.api_base
                if self._llm.api_key is not None:
                    kwargs["api_key"] = self._llm.api_key.get_secret_value()
            with model_call_span(
                kwargs["model"],
                messages,
                temperature=self._llm.temperature,
                tools=len(tools),
                capture_content=self._capture_content,
            ) as span:
                if sink is None:
                    response = await litellm.acompletion(**kwargs)
                else:
                    response = await stream_completion(kwargs, sink)
                usage = response_usage(response, kwargs["model"])
                record_response(span, response, usage, capture_content=self._capture_content)
            return response, usage

        primary = self._llm.models[0]
        models = self._llm.models_for(model)
        (response, usage), answered, passed_over = await complete_with_fallback(models, ask)
        return response, usage, passed_over, answered.model

    async def _summarise(
        self, older: list[dict[str, Any]], previous: str | None
    ) -> tuple[str, Usage | None]:
        """The summary of older turns, and what the model call that wrote it used (None: no
        model was called, the offline model's extractive summary)."""
        if self._llm.offline:
            return extractive_summary(older, previous), None
        transcript = json.dumps(older, ensure_ascii=False, default=str)
        prompt = f"Earlier summary:\n{previous}\n\n" if previous else ""
        response, usage, _, _ = await self._complete(
            [
                {"role": "system", "content": SUMMARY_PROMPT},
                {"role": "user", "content": f"{prompt}Conversation:\n{transcript}"},
            ],
            [],
        )
        return str(response.choices[0].message.content or ""), usage

    @activity.defn(name=RECORD_TURN_ACTIVITY)
    async def record_turn(self, request: RecordTurnInput) -> None:
        await self._store.put_turn(request.conversation_id, request.turn, request.result)
        await self._spending.record_agents(request)

    @activity.defn(name=RECORD_APPROVAL_ACTIVITY)
    async def record_approval(self, request: RecordApprovalInput) -> None:
        await self._store.put_approval(request.conversation_id, request.record)

    @activity.defn(name=READ_TURNS_ACTIVITY)
    async def read_turns(self, request: ReadConversationInput) -> list[TurnResult]:
        return await self._store.turns(
            request.conversation_id, offset=request.offset, limit=request.limit
        )

    @activity.defn(name=LOCAL_TOOL_ACTIVITY)
    async def run_local_tool(self, call: ToolCall) -> Any:
        return await run_registered_tool(local_registry, self._client, call)


class _SummaryUsage:
    """The summariser one model step hands to compaction, adding up what its calls used."""

    def __init__(
        self,
        summarise: Callable[
            [list[dict[str, Any]], str | None], Awaitable[tuple[str, Usage | None]]
        ],
    ) -> None:
        self._summarise = summarise
        self.usage = Usage()
        self.calls = 0

    async def __call__(self, older: list[dict[str, Any]], previous: str | None) -> str:
        text, usage = await self._summarise(older, previous)
        if usage is not None:
            self.usage = self.usage.add(usage)
            self.calls += 1
        return text


def _stored_reply(stored: ChatMessage | None) -> LlmStepResult | None:
    """The reply an earlier attempt of this step stored, if any."""
    if stored is None or stored.role != "assistant":
        return None
    return LlmStepResult(content=stored.content, tool_calls=stored.tool_calls)


def parse_response(
    response: Any,
    *,
    reply_seq: int = 0,
    model: str | None = None,
    usage: Usage | None = None,
) -> LlmStepResult:
    """Read a LiteLLM ModelResponse. A reply without choices is malformed (and retryable).

    `model` is the model asked for: the step is priced from LiteLLM's price map under that name
    (or the one the reply gives); with no price known the usage says so (`unpriced_steps` 1).
    `usage`, when the caller priced the reply already, is taken as is (pricing is not cheap).

    A tool call without an id gets one derived from its place, so results can refer to it.
    The reply is bounded before it reaches workflow history: at most MAX_REPLY_TOOL_CALLS calls
    and MAX_REPLY_CHARS characters of text, so no model output can make a payload too large.
    """
    if not getattr(response, "choices", None):
        raise ValueError("the model's reply has no choices")
    message = response.choices[0].message
    tool_calls = []
    requested = list(getattr(message, "tool_calls", None) or [])
    if len(requested) > MAX_REPLY_TOOL_CALLS:
        log.warning(
            "model asked for too many tool calls; keeping the first ones",
            requested=len(requested),
            kept=MAX_REPLY_TOOL_CALLS,
        )
    argument_bytes = 0
    for index, call in enumerate(requested[:MAX_REPLY_TOOL_CALLS]):
        arguments = call.function.arguments
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        arguments = arguments or ""
        size = len(arguments.encode("utf-8", errors="replace"))
        if argument_bytes + size > MAX_REPLY_ARGUMENT_BYTES:
            # Not JSON on purpose: the workflow refuses the call and tells the model why.
            arguments = (
                f"<{len(arguments)} characters of arguments omitted: the reply is too large>"
            )
        argument_bytes += size
        tool_calls.append(
            LlmToolCall(
                id=call.id or f"call-{reply_seq}-{index}",
                name=call.function.name or "",
                arguments=arguments,
            )
        )
    content = message.content
    if isinstance(content, str) and len(content) > MAX_REPLY_CHARS:
        content = (
            content[:MAX_REPLY_CHARS]
            + f"\n…[truncated {len(content) - MAX_REPLY_CHARS} characters]"
        )
    return LlmStepResult(
        content=content,
        tool_calls=tool_calls,
        usage=usage if usage is not None else response_usage(response, model),
        model=str(getattr(response, "model", "") or ""),
    )
