"""ConversationWorkflow: one durable agent loop per conversation (workflow id = conversation id).

Each user message is the `send_message` update. A turn asks the model (an activity), runs every
tool call of a step in parallel (remote tools over Nexus in the owning team's namespace, local tools
as activities), feeds the results back, and stops at a final answer or the step limit.
The workflow never names a remote tool: everything it knows about them came from `list_tools`.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, NexusOperationError

with workflow.unsafe.imports_passed_through():
    from orchestrator.models import (
        CONVERSATION_WORKFLOW,
        END_UPDATE,
        LLM_STEP_ACTIVITY,
        LOAD_CONFIG_ACTIVITY,
        LOCAL_TOOL_ACTIVITY,
        NON_RETRYABLE_LLM_ERRORS,
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
        CircuitBreaker,
        ConversationInput,
        ConversationStatus,
        LlmRequest,
        LlmStepResult,
        LlmToolCall,
        ReadConversationInput,
        RecordTurnInput,
        RunningTool,
        StoredMessage,
        ToolCallRecord,
        ToolRoute,
        TurnResult,
        Usage,
    )
    from orchestrator.tools import LOCAL_SERVICE, openai_tool
    from orchestrator.tools import registry as local_registry
    from shared.caller import ToolOutcome, execute_tool, innermost_message, list_tools
    from shared.tools import ToolCall, ToolSpec

RECENT_TURNS_KEPT = 10
ANSWERS_KEPT = 20
DEFAULT_MAX_MESSAGE_CHARS = 8000
# A tool call's result as the turn's record keeps it (the full output is in the store): keeps
# every turn's update result, and the answers carried across continue-as-new, small.
RECORD_RESULT_CHARS = 2000
CARRIED_ANSWERS_BYTES = 512 * 1024
# Changes to the commands a conversation schedules, guarded so that running conversations
# recorded before them replay unchanged.
BOUNDED_FAN_OUT_PATCH = "bounded-tool-fan-out"
REDISCOVERY_PATCH = "rediscover-unavailable-endpoints"

LLM_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=8,
    non_retryable_error_types=NON_RETRYABLE_LLM_ERRORS,
)


@workflow.defn(name=CONVERSATION_WORKFLOW)
class ConversationWorkflow:
    @workflow.init
    def __init__(self, start: ConversationInput) -> None:
        self._conversation_id = start.conversation_id
        self._config: AgentConfig | None = None
        carried = start.carried
        # The transcript lives in the store; the workflow keeps counters and the unsent delta.
        self._next_seq = carried.next_seq if carried else 0
        self._pending: list[StoredMessage] = list(carried.pending) if carried else []
        self._usage = carried.usage if carried else Usage()
        self._routes: dict[str, ToolRoute] = dict(carried.routes) if carried else {}
        self._unavailable: list[str] = list(carried.unavailable) if carried else []
        self._turns = carried.turns if carried else 0
        self._recent_turns: list[TurnResult] = list(carried.recent_turns) if carried else []
        self._run_number = carried.run + 1 if carried else 1
        self._breakers: dict[str, CircuitBreaker] = dict(carried.breakers) if carried else {}
        # Answers by message (update) id: a client retrying a message after a failure, or across
        # a continue-as-new where Temporal's own update-id dedupe does not reach, gets the answer
        # it missed instead of a second turn.
        self._answered: dict[str, TurnResult] = dict(carried.answered) if carried else {}
        self._discovered_at = carried.discovered_at if carried else 0.0
        self._turns_this_run = 0
        self._state = "starting"
        self._running: list[RunningTool] = []
        self._busy = False
        self._ended = False

    @workflow.run
    async def run(self, start: ConversationInput) -> Usage:
        self._config = await self._load_config()
        if start.carried is None:
            self._stage(ChatMessage(role="system", content=self._config.system_prompt))
            await self._discover()
        self._state = "ended" if self._ended else "idle"
        while True:
            await workflow.wait_condition(lambda: self._ended or self._continue_as_new_due())
            # Let every accepted message finish first: none may be lost or answered twice.
            await workflow.wait_condition(workflow.all_handlers_finished)
            if self._ended:
                return self._usage
            if self._continue_as_new_due():
                workflow.continue_as_new(
                    ConversationInput(conversation_id=self._conversation_id, carried=self._carry())
                )

    async def _load_config(self) -> AgentConfig:
        return await workflow.execute_local_activity(
            LOAD_CONFIG_ACTIVITY,
            result_type=AgentConfig,
            start_to_close_timeout=timedelta(seconds=30),
        )

    def _continue_as_new_due(self) -> bool:
        assert self._config is not None
        return not self._busy and (
            workflow.info().is_continue_as_new_suggested()
            or self._turns_this_run >= self._config.max_turns_per_run
        )

    def _carry(self) -> CarriedState:
        return CarriedState(
            discovered_at=self._discovered_at,
            usage=self._usage,
            turns=self._turns,
            next_seq=self._next_seq,
            pending=self._pending,
            routes=self._routes,
            unavailable=self._unavailable,
            recent_turns=self._recent_turns,
            run=self._run_number,
            breakers=self._breakers,
            answered=_newest_within(self._answered, CARRIED_ANSWERS_BYTES),
        )

    def _stage(self, message: ChatMessage) -> None:
        """Give a message the next sequence number; the next model step stores it."""
        self._pending.append(StoredMessage(seq=self._next_seq, message=message))
        self._next_seq += 1

    # ---- updates ------------------------------------------------------------------------------
    @workflow.update(name=SEND_MESSAGE_UPDATE)
    async def send_message(self, text: str) -> TurnResult:
        message_id = workflow.current_update_info().id  # type: ignore[union-attr]
        if message_id in self._answered:
            return self._answered[message_id]
        if self._busy:  # two messages accepted in the same workflow task: validators ran first
            raise ApplicationError("the previous message is still being answered; wait for it")
        self._busy = True
        try:
            await workflow.wait_condition(lambda: self._state != "starting")
            # The first message of a conversation is validated before the worker's settings are
            # loaded; check it again against them before it is recorded.
            problem = self._problem_with(text)
            if problem:
                raise ApplicationError(problem, type="InvalidMessage", non_retryable=True)
            result = (await self._turn(text)).model_copy(update={"message": text})
            await workflow.execute_local_activity(
                RECORD_TURN_ACTIVITY,
                RecordTurnInput(
                    conversation_id=self._conversation_id, turn=self._turns, result=result
                ),
                start_to_close_timeout=timedelta(seconds=30),
            )
            self._recent_turns = [*self._recent_turns, result][-RECENT_TURNS_KEPT:]
            self._answered[message_id] = result
            while len(self._answered) > ANSWERS_KEPT:
                self._answered.pop(next(iter(self._answered)))
            return result
        finally:
            self._busy = False
            self._running = []
            self._state = "ended" if self._ended else "idle"

    @send_message.validator
    def _validate_message(self, text: str) -> None:
        info = workflow.current_update_info()
        if info is not None and info.id in self._answered:
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
        await workflow.wait_condition(lambda: self._state != "starting")
        if workflow.patched(REDISCOVERY_PATCH):
            # Endpoints created since the run started (missing ones) are picked up too.
            self._config = await self._load_config()
        await self._discover()
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
            self._state = "ended"
        return self._usage

    # ---- queries ------------------------------------------------------------------------------
    @workflow.query(name=STATUS_QUERY)
    def status(self) -> ConversationStatus:
        return ConversationStatus(
            conversation_id=self._conversation_id,
            state=self._state,  # type: ignore[arg-type]
            running=list(self._running),
            turns=self._turns,
            model=self._config.model if self._config else "",
            offline_model=self._config.offline_model if self._config else False,
            tools=sorted(self._routes),
            unavailable_endpoints=list(self._unavailable),
        )

    @workflow.query(name=TURNS_QUERY)
    def turns(self) -> list[TurnResult]:
        """The most recent turns; the whole conversation is in the store (`ReadConversation`)."""
        return list(self._recent_turns)

    @workflow.query(name=USAGE_QUERY)
    def usage(self) -> Usage:
        return self._usage

    # ---- discovery ----------------------------------------------------------------------------
    async def _discover(self, only: list[str] | None = None) -> None:
        """Ask every endpoint (or `only` these) for its catalog. A silent endpoint is skipped
        and reported; the catalogs of endpoints not asked again are kept."""
        assert self._config is not None
        timeout = timedelta(seconds=self._config.discovery_timeout_seconds)
        endpoints = self._config.tool_endpoints if only is None else only
        self._discovered_at = workflow.time()

        async def catalog_of(endpoint: str) -> tuple[str, list[ToolSpec] | None]:
            try:
                return endpoint, (await list_tools(endpoint, timeout=timeout)).tools
            except NexusOperationError as err:
                workflow.logger.warning(
                    "tool endpoint unavailable: %s (%s)", endpoint, innermost_message(err)
                )
                return endpoint, None

        results = await asyncio.gather(*(catalog_of(e) for e in endpoints))
        sources: list[tuple[str | None, ToolSpec]] = [(None, t.spec) for t in local_registry]
        kept = [r for r in self._routes.values() if r.endpoint and r.endpoint not in endpoints]
        sources.extend((route.endpoint, route.spec) for route in kept)
        for endpoint, specs in results:
            sources.extend((endpoint, spec) for spec in specs or [])
        still_unavailable = [e for e, specs in results if specs is None]
        if only is not None:
            still_unavailable += [e for e in self._unavailable if e not in endpoints]
        else:
            still_unavailable += self._config.missing_endpoints
        self._unavailable = still_unavailable
        self._routes = build_routes(sources)

    async def _rediscover_unavailable(self) -> None:
        """A team that was down when the conversation started is asked again, at most every
        `rediscover_after_seconds`, so it comes back without anything being restarted."""
        assert self._config is not None
        reachable = [e for e in self._unavailable if e in self._config.tool_endpoints]
        due = workflow.time() - self._discovered_at >= self._config.rediscover_after_seconds
        if reachable and due and workflow.patched(REDISCOVERY_PATCH):
            await self._discover(only=reachable)

    # ---- the loop -----------------------------------------------------------------------------
    async def _turn(self, text: str) -> TurnResult:
        assert self._config is not None
        self._turns += 1
        self._turns_this_run += 1
        turn = self._turns
        self._stage(ChatMessage(role="user", content=text))
        records: list[ToolCallRecord] = []
        notes: list[str] = []
        turn_usage = Usage()
        executed: set[str] = set()
        await self._rediscover_unavailable()
        if self._unavailable:
            notes.append("tool services unavailable: " + ", ".join(self._unavailable))

        for step in range(1, self._config.max_steps + 1):
            self._state = "thinking"
            try:
                reply = await self._ask_model()
            except ActivityError as err:
                message = innermost_message(err)
                return self._result(turn_usage, records, notes, ok=False, error=message)
            turn_usage = turn_usage.add(reply.usage)
            self._usage = self._usage.add(reply.usage)
            if reply.compacted:
                notes.append("older turns were summarised to fit the model's context window")
            if not reply.tool_calls:
                return self._result(turn_usage, records, notes, answer=reply.content or "")
            calls = reply.tool_calls[: self._config.max_tool_calls_per_step]
            not_run = reply.tool_calls[self._config.max_tool_calls_per_step :]
            fresh = [call for call in calls if _signature(call) not in executed]
            repeated = [call for call in calls if call not in fresh]
            executed.update(_signature(call) for call in fresh)

            self._state = "running_tools"
            outcomes = await self._run_tools(turn, step, fresh)
            for call, (record, content) in zip(fresh, outcomes, strict=True):
                records.append(record)
                self._stage(_tool_message(call, content))
            if not_run:
                limit = self._config.max_tool_calls_per_step
                notes.append(f"{len(not_run)} tool calls of one step were not run (limit {limit})")
            for call in not_run:
                self._stage(
                    _tool_message(
                        call,
                        {
                            "error": "not_run",
                            "message": f"not run: at most {limit} tool calls per step; "
                            "ask for the rest in the next step",
                        },
                    )
                )
            for call in repeated:
                self._stage(
                    _tool_message(
                        call,
                        {
                            "error": "repeated_call",
                            "message": "identical call already made in this turn; use its result",
                        },
                    )
                )
            if repeated and not fresh:
                note = (
                    f"stopped: the model repeated the identical call {repeated[0].name}"
                    f"({repeated[0].arguments}) instead of answering"
                )
                notes.append(note)
                return self._result(turn_usage, records, notes, answer=note)

        note = f"stopped after {self._config.max_steps} model steps without a final answer"
        notes.append(note)
        return self._result(turn_usage, records, notes, answer=note)

    async def _ask_model(self) -> LlmStepResult:
        assert self._config is not None
        tools = [
            openai_tool(
                route.model_name,
                route.spec.description
                if route.model_name == route.spec.name
                else f"[{route.spec.service}] {route.spec.description}",
                route.spec.parameters,
            )
            for route in self._routes.values()
        ]
        reply: LlmStepResult = await workflow.execute_activity(
            LLM_STEP_ACTIVITY,
            LlmRequest(
                conversation_id=self._conversation_id,
                new_messages=self._pending,
                reply_seq=self._next_seq,
                tools=tools,
            ),
            result_type=LlmStepResult,
            # Compaction may add a summarising model call to the step.
            start_to_close_timeout=timedelta(seconds=2 * self._config.llm_timeout_seconds + 10),
            retry_policy=LLM_RETRY_POLICY,
            summary="model step",
        )
        # The activity stored the delta and the reply under these sequence numbers.
        self._pending = []
        self._next_seq += 1
        return reply

    async def _run_tools(
        self, turn: int, step: int, calls: list[LlmToolCall]
    ) -> list[tuple[ToolCallRecord, Any]]:
        """Run a step's calls in parallel, never more than `max_parallel_tools` at once: the
        server caps in-flight Nexus operations (30 per workflow) and pending activities, and a
        command over a cap fails every workflow task of the conversation."""
        assert self._config is not None
        limit = self._config.max_parallel_tools
        if len(calls) <= limit or not workflow.patched(BOUNDED_FAN_OUT_PATCH):
            return list(
                await asyncio.gather(
                    *(self._run_tool(turn, step, index, call) for index, call in enumerate(calls))
                )
            )
        slots = asyncio.Semaphore(limit)

        async def bounded(index: int, call: LlmToolCall) -> tuple[ToolCallRecord, Any]:
            async with slots:
                return await self._run_tool(turn, step, index, call)

        return list(await asyncio.gather(*(bounded(i, c) for i, c in enumerate(calls))))

    async def _run_tool(
        self, turn: int, step: int, index: int, call: LlmToolCall
    ) -> tuple[ToolCallRecord, Any]:
        assert self._config is not None
        route = self._routes.get(call.name)
        arguments_limit = self._config.max_tool_arguments_chars
        if len(call.arguments or "") > arguments_limit:
            service = route.spec.service if route else "unknown"
            return _failed(
                call,
                service,
                "bad_request",
                f"arguments are {len(call.arguments)} characters; the limit is {arguments_limit}",
            )
        try:
            args = json.loads(call.arguments or "{}")
        except json.JSONDecodeError as err:
            args = None
            problem = f"arguments are not valid JSON ({err.msg} at position {err.pos})"
        else:
            problem = "" if isinstance(args, dict) else "arguments must be a JSON object"
        if route is None:
            known = ", ".join(sorted(self._routes))
            return _failed(call, "unknown", "not_found", f"unknown tool; available: {known}")
        service = route.spec.service
        if problem or not isinstance(args, dict):
            return _failed(call, service, "bad_request", problem)

        # Stable across retries and replays, unique across turns and across reuse of the id.
        run_tag = workflow.info().first_execution_run_id[:8]
        tool_call = ToolCall(
            call_id=f"{self._conversation_id}-{run_tag}-{turn}-{step}-{index}",
            tool=route.spec.name,
            args=args,
            conversation_id=self._conversation_id,
        )
        running = RunningTool(name=route.spec.name, service=service)
        self._running.append(running)
        try:
            if route.endpoint is None:
                outcome = await self._run_local(tool_call)
            else:
                outcome = await self._run_remote(route.endpoint, tool_call)
        finally:
            self._running.remove(running)
        record = ToolCallRecord(
            name=route.spec.name,
            service=service,
            args=args,
            ok=outcome.ok,
            result=_preview(outcome.output if outcome.ok else outcome.error),
        )
        if outcome.ok:
            return record, outcome.output
        return record, {"error": outcome.error_kind, "message": outcome.error}

    async def _run_remote(self, endpoint: str, call: ToolCall) -> ToolOutcome:
        """Call a team's tool, unless its endpoint's circuit breaker is open."""
        assert self._config is not None
        breaker = self._breakers.setdefault(endpoint, CircuitBreaker())
        now = workflow.time()
        if breaker.open_until > now:
            return ToolOutcome(
                call_id=call.call_id,
                tool=call.tool,
                endpoint=endpoint,
                ok=False,
                error_kind="unavailable",
                error=f"service unavailable: {endpoint} failed {breaker.failures} times in a row; "
                f"not calling it for another {breaker.open_until - now:.0f} s",
            )
        outcome = await execute_tool(
            endpoint, call, timeout=timedelta(seconds=self._config.tool_timeout_seconds)
        )
        if outcome.error_kind == "unavailable":
            breaker.failures += 1
            if breaker.failures >= self._config.breaker_failures:
                breaker.open_until = workflow.time() + self._config.breaker_cooldown_seconds
        else:  # it answered (even with an error of the call's own): the service is up
            breaker.failures = 0
            breaker.open_until = 0.0
        return outcome

    async def _run_local(self, call: ToolCall) -> ToolOutcome:
        spec = local_registry.get(call.tool)
        timeout = spec.spec.timeout_seconds if spec else 30.0
        try:
            output = await workflow.execute_activity(
                LOCAL_TOOL_ACTIVITY,
                call,
                start_to_close_timeout=timedelta(seconds=timeout),
                retry_policy=RetryPolicy(
                    maximum_attempts=spec.max_attempts if spec else 3,
                    non_retryable_error_types=["ToolError", "ToolArgumentsError", "ToolNotFound"],
                ),
                summary=call.tool,
            )
        except ActivityError as err:
            cause = err.cause
            kind = (
                "bad_request"
                if isinstance(cause, ApplicationError) and cause.type == "ToolArgumentsError"
                else "failed"
            )
            return ToolOutcome(
                call_id=call.call_id,
                tool=call.tool,
                endpoint=LOCAL_SERVICE,
                ok=False,
                error_kind=kind,
                error=innermost_message(err),
            )
        return ToolOutcome(
            call_id=call.call_id, tool=call.tool, endpoint=LOCAL_SERVICE, ok=True, output=output
        )

    def _result(
        self,
        usage: Usage,
        records: list[ToolCallRecord],
        notes: list[str],
        *,
        answer: str = "",
        ok: bool = True,
        error: str | None = None,
    ) -> TurnResult:
        return TurnResult(
            conversation_id=self._conversation_id,
            answer=answer,
            tool_calls=records,
            usage=usage,
            ok=ok,
            error=error,
            notes=notes,
        )


@workflow.defn(name=READ_CONVERSATION_WORKFLOW)
class ReadConversation:
    """Reads a page of a conversation's turns from the store, for `agent history`.

    A workflow so that the CLI needs no access to the store, wherever it is deployed.
    """

    @workflow.run
    async def run(self, request: ReadConversationInput) -> list[TurnResult]:
        return await workflow.execute_activity(
            READ_TURNS_ACTIVITY,
            request,
            result_type=list[TurnResult],
            start_to_close_timeout=timedelta(seconds=30),
        )


def build_routes(sources: list[tuple[str | None, ToolSpec]]) -> dict[str, ToolRoute]:
    """Name each tool for the model; names that collide are qualified by service (`it__status`)."""
    counts: dict[str, int] = {}
    for _, spec in sources:
        counts[spec.name] = counts.get(spec.name, 0) + 1
    routes: dict[str, ToolRoute] = {}
    for endpoint, spec in sources:
        name = spec.name if counts[spec.name] == 1 else f"{spec.service}__{spec.name}"
        if name not in routes:  # the same service published twice: first endpoint wins
            routes[name] = ToolRoute(model_name=name, spec=spec, endpoint=endpoint)
    return routes


def _signature(call: LlmToolCall) -> str:
    try:
        canonical = json.dumps(json.loads(call.arguments or "{}"), sort_keys=True)
    except json.JSONDecodeError:
        canonical = call.arguments
    return f"{call.name}:{canonical}"


def _tool_message(call: LlmToolCall, content: Any) -> ChatMessage:
    return ChatMessage(
        role="tool",
        tool_call_id=call.id,
        name=call.name,
        content=json.dumps(content, default=str, ensure_ascii=False),
    )


def _failed(call: LlmToolCall, service: str, kind: str, message: str) -> tuple[ToolCallRecord, Any]:
    record = ToolCallRecord(
        name=call.name, service=service, args=_preview(call.arguments), ok=False, result=message
    )
    return record, {"error": kind, "message": message}


def _preview(value: Any) -> Any:
    """The value itself when small; otherwise the start of its JSON with a visible marker."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    if len(text) <= RECORD_RESULT_CHARS:
        return value
    return text[:RECORD_RESULT_CHARS] + f"…[truncated {len(text) - RECORD_RESULT_CHARS} characters]"


def _newest_within(answers: dict[str, TurnResult], budget: int) -> dict[str, TurnResult]:
    """The most recent answers whose JSON fits `budget` bytes, oldest first as they came."""
    kept: list[tuple[str, TurnResult]] = []
    used = 0
    for message_id, result in reversed(answers.items()):
        used += len(result.model_dump_json())
        if used > budget:
            break
        kept.append((message_id, result))
    return dict(reversed(kept))
