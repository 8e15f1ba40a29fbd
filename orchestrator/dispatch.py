"""Tool discovery and dispatch for a conversation: workflow code, deterministic, no I/O.

Discovery turns the teams' catalogs into routes (model-facing name -> endpoint and spec). Dispatch
runs one model step's calls: it parses and bounds the arguments, says whether a call needs approval,
runs local tools as activities and remote ones over Nexus behind a per-endpoint circuit breaker,
and turns every result or failure into one `ToolOutcome`, which becomes the turn's record and the
tool message the model reads. Nothing here names a tool.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, NexusOperationError

with workflow.unsafe.imports_passed_through():
    from orchestrator import telemetry
    from orchestrator.disclosure import (
        LOAD_TOOLS,
        catalog_digest,
        disclosure_on,
        load,
        remember,
        visible_tools,
    )
    from orchestrator.loop_settings import AgentConfig
    from orchestrator.models import (
        LOCAL_TOOL_ACTIVITY,
        CarriedState,
        ChatMessage,
        CircuitBreaker,
        LlmToolCall,
        RunningTool,
        ToolCallRecord,
        ToolRoute,
    )
    from orchestrator.tools import LOCAL_SERVICE
    from orchestrator.tools import registry as local_registry
    from shared.arguments import MAX_ARGUMENT_DEPTH, nesting_depth
    from shared.caller import (
        NO_ANSWER,
        ToolErrorKind,
        ToolOutcome,
        classify_activity_error,
        execute_tool,
        innermost_message,
        list_tools,
    )
    from shared.contract import NON_RETRYABLE_TOOL_ERRORS, ToolCall, ToolSpec
    from shared.heartbeat import HEARTBEAT_TIMEOUT

# A tool call's result as the turn's record keeps it (the full output is in the store): keeps every
# turn's update result, and the answers carried across continue-as-new, small.
RECORD_RESULT_CHARS = 2000
# Changes to the commands a conversation schedules, guarded so that conversations recorded before
# them replay unchanged.
BOUNDED_FAN_OUT_PATCH = "bounded-tool-fan-out"  # fan-out, calls per step, argument size
REDISCOVERY_PATCH = "rediscover-unavailable-endpoints"
RESERVED_LOADER_PATCH = "reserved-load-tools-name"

StepResult = tuple[ToolCallRecord, Any]  # the turn's record, and the content the model reads


@dataclass(frozen=True)
class ApprovalNeed:
    reason: str
    approvers: list[str]  # empty: any operator
    nobody_may_approve: bool = False  # the team's and the deployment's approvers share no one


@dataclass(frozen=True)
class Resolved:
    """A model's tool call, routed and with parsed arguments, ready to run."""

    route: ToolRoute
    call: ToolCall


# ---- discovery ---------------------------------------------------------------------------------
async def discover(config: AgentConfig, state: CarriedState, only: list[str] | None = None) -> None:
    """Ask every endpoint (or `only` these) for its catalog and rebuild `state.routes`.

    A silent endpoint is skipped and listed in `state.unavailable`; with `only`, the catalogs of
    the endpoints not asked again are kept.
    """
    timeout = timedelta(seconds=config.discovery_timeout_seconds)
    endpoints = config.tool_endpoints if only is None else only
    state.discovered_at = workflow.time()

    async def catalog_of(endpoint: str) -> tuple[str, list[ToolSpec] | None]:
        try:
            return endpoint, (await list_tools(endpoint, timeout=timeout)).tools
        except NexusOperationError as err:
            message = innermost_message(err)
            workflow.logger.warning("tool endpoint unavailable: %s (%s)", endpoint, message)
            return endpoint, None

    results = await asyncio.gather(*(catalog_of(e) for e in endpoints))
    sources: list[tuple[str | None, ToolSpec]] = [(None, t.spec) for t in local_registry]
    if only is not None:
        kept = [r for r in state.routes.values() if r.endpoint and r.endpoint not in only]
        sources.extend((route.endpoint, route.spec) for route in kept)
    for endpoint, specs in results:
        sources.extend((endpoint, spec) for spec in specs or [])
    unavailable = [e for e, specs in results if specs is None]
    if only is None:
        unavailable += config.missing_endpoints
    else:
        unavailable += [e for e in state.unavailable if e not in only]
    state.unavailable = unavailable
    state.routes = build_routes(sources)
    # Tools no longer published do not hold loaded slots (orchestrator.disclosure).
    state.loaded_tools = [name for name in state.loaded_tools if name in state.routes]
    state.catalog_digest = catalog_digest(visible_tools(config, state))


async def rediscover_unavailable(config: AgentConfig, state: CarriedState) -> None:
    """A team that was down when the conversation started is asked again, at most every
    `rediscover_after_seconds`, so it comes back without anything being restarted."""
    reachable = [e for e in state.unavailable if e in config.tool_endpoints]
    due = workflow.time() - state.discovered_at >= config.rediscover_after_seconds
    if reachable and due and workflow.patched(REDISCOVERY_PATCH):
        await discover(config, state, only=reachable)


def build_routes(sources: list[tuple[str | None, ToolSpec]]) -> dict[str, ToolRoute]:
    """Name each tool for the model; names that collide are qualified by service (`it__status`),
    and so is a tool named like the reserved meta-tool (`load_tools`, orchestrator.disclosure)."""
    counts: dict[str, int] = {LOAD_TOOLS: 1} if _loader_reserved(sources) else {}
    for _, spec in sources:
        counts[spec.name] = counts.get(spec.name, 0) + 1
    routes: dict[str, ToolRoute] = {}
    for endpoint, spec in sources:
        name = spec.name if counts[spec.name] == 1 else f"{spec.service}__{spec.name}"
        if name not in routes:  # the same service published twice: first endpoint wins
            routes[name] = ToolRoute(model_name=name, spec=spec, endpoint=endpoint)
    return routes


def _loader_reserved(sources: list[tuple[str | None, ToolSpec]]) -> bool:
    """Whether a team tool named `load_tools` is renamed: in conversations recorded before the
    meta-tool it kept its name, and their replays must call it by that name."""
    if not any(spec.name == LOAD_TOOLS for _, spec in sources):
        return True  # nothing to rename: no marker in history
    return not workflow.in_workflow() or workflow.patched(RESERVED_LOADER_PATCH)


# ---- dispatch ----------------------------------------------------------------------------------
class ToolDispatcher:
    """Runs the tool calls of one model step for one conversation."""

    def __init__(
        self,
        conversation_id: str,
        config: AgentConfig,
        state: CarriedState,
        running: list[RunningTool],
    ) -> None:
        self._conversation_id = conversation_id
        self._config = config
        self._state = state
        self._running = running  # shown by the status query while the calls run

    def resolve(self, turn: int, step: int, index: int, call: LlmToolCall) -> Resolved | StepResult:
        """The call as a team will receive it, or why it cannot be made (a StepResult)."""
        route = self._state.routes.get(call.name)
        service = route.spec.service if route else "unknown"
        args, problem = self._parse_arguments(call)
        disclosing = disclosure_on(self._config, self._state.routes)
        if route is None and disclosing and call.name == LOAD_TOOLS:
            # Answered here: nothing is scheduled, and the next model step shows the tools.
            loading = load(self._config, self._state, args, problem)
            return loading.record(), loading.content()
        if route is None:
            known = ", ".join(sorted(self._state.routes))
            if disclosing:  # the index of load_tools lists them; hundreds of names would not help
                known = f"the {len(self._state.routes)} tools listed by {LOAD_TOOLS}"
            return refused(call, service, "not_found", f"unknown tool; available: {known}")
        if args is None:
            return refused(call, service, "bad_request", problem)
        if disclosing:
            # Called from the index without loading it first: it runs (the team checks the
            # arguments) and is loaded, so a retry has its schema.
            remember(self._config, self._state, route.model_name)
        # Stable across retries, replays and continue-as-new (the first run's id), unique across
        # turns and across reuse of the conversation id.
        run_tag = workflow.info().first_execution_run_id[:8]
        tool_call = ToolCall(
            call_id=f"{self._conversation_id}-{run_tag}-{turn}-{step}-{index}",
            tool=route.spec.name,
            args=args,
            conversation_id=self._conversation_id,
            # Who asked, for the team's tool (ToolContext.user); the caller token binds it. Only
            # payloads change, no command: conversations recorded before it replay unpatched.
            user=self._state.user,
        )
        return Resolved(route=route, call=tool_call)

    def approval_needed(self, resolved: Resolved) -> ApprovalNeed | None:
        """Why the call needs a person's decision and who may give it, or None. The team's
        policy, tightened by this deployment's (`approval_policies`), never relaxed."""
        spec = resolved.route.spec
        policies = [spec.approval]
        deployment = self._config.deployment_policy(spec.service, spec.name)
        if deployment is not None:
            policies.append(deployment)
        applying = [(p, r) for p in policies if (r := p.reason(resolved.call.args)) is not None]
        for tool in spec.agent_tools:
            # The agent calls these inside its team, out of this deployment's sight: a rule
            # this deployment has for one of them gates the delegation itself (its conditions
            # read the tool's arguments, which the agent has not chosen yet: closed).
            gated = self._config.deployment_policy(spec.service, tool)
            if gated is not None and gated.gated:
                applying.append(
                    (gated, f"agent {spec.name} may call {tool}, which needs approval here")
                )
        if not applying:
            return None
        reasons = [reason for _, reason in applying]
        # Every policy that asks for approval must admit the decider: the stricter wins, and
        # lists of approvers that share no one leave no one.
        lists = [list(p.approvers) for p, _ in applying if p.approvers]
        approvers = lists[0] if lists else []
        for other in lists[1:]:
            approvers = [name for name in approvers if name in other]
        nobody = bool(lists) and not approvers
        return ApprovalNeed("; ".join(reasons), approvers, nobody)

    async def execute(self, call: LlmToolCall, resolved: Resolved) -> StepResult:
        route, tool_call = resolved.route, resolved.call
        running = RunningTool(name=route.spec.name, service=route.spec.service)
        self._running.append(running)
        try:
            if route.endpoint is None:
                outcome = await self._run_local(tool_call)
            else:
                outcome = await self._run_remote(route.endpoint, route.spec, tool_call)
        finally:
            self._running.remove(running)
        return settled(call, route.spec.service, tool_call.args, outcome)

    def _parse_arguments(self, call: LlmToolCall) -> tuple[dict[str, Any] | None, str]:
        limit = self._config.max_tool_arguments_chars
        if len(call.arguments or "") > limit and workflow.patched(BOUNDED_FAN_OUT_PATCH):
            return None, f"arguments are {len(call.arguments)} characters; the limit is {limit}"
        try:
            args = json.loads(call.arguments or "{}")
        except json.JSONDecodeError as err:
            return None, f"arguments are not valid JSON ({err.msg} at position {err.pos})"
        except RecursionError:
            args = None
        if not isinstance(args, dict):
            return None, "arguments must be a JSON object"
        depth = nesting_depth(args)
        # Payload decoders refuse deep JSON (pydantic stops near 200 levels): arguments nested
        # that deep would make the call's activity, and the turn's record, undecodable forever.
        if depth > MAX_ARGUMENT_DEPTH and workflow.patched(BOUNDED_FAN_OUT_PATCH):
            return (
                None,
                f"arguments are nested {depth} levels deep; the limit is {MAX_ARGUMENT_DEPTH}",
            )
        return args, ""

    async def _run_remote(self, endpoint: str, spec: ToolSpec, call: ToolCall) -> ToolOutcome:
        """Call a team's tool, unless its endpoint's circuit breaker is open."""
        service = spec.service
        breaker = self._state.breakers.setdefault(endpoint, CircuitBreaker())
        now = workflow.time()
        if breaker.open_until > now:
            telemetry.tool_call(service, call.tool, "breaker_open")
            return ToolOutcome.failed(
                call,
                endpoint,
                "unavailable",
                f"service unavailable: {endpoint} failed {breaker.failures} times in a row; "
                f"not calling it for another {breaker.open_until - now:.0f} s",
            )
        timeout = timedelta(seconds=self._config.tool_timeout_seconds)
        if spec.kind == "agent":
            # An agent's loop takes model steps: the team's own limit for it bounds the wait.
            timeout = max(timeout, timedelta(seconds=spec.timeout_seconds))
        with telemetry.span(
            f"tool {service}.{call.tool}",
            **{"agent.tool": call.tool, "agent.service": service, "agent.call_id": call.call_id},
        ) as current:
            outcome = await execute_tool(endpoint, call, timeout=timeout)
            current.set_attribute("agent.tool.outcome", outcome_label(outcome))
        telemetry.tool_call(service, call.tool, outcome_label(outcome))
        # An agent that ran out of time answered nothing, yet its team is up.
        slow_agent = spec.kind == "agent" and (outcome.error or "").startswith(NO_ANSWER)
        if outcome.error_kind == "unavailable" and not slow_agent:
            breaker.failures += 1
            if breaker.failures >= self._config.breaker_failures:
                if breaker.open_until <= now:
                    telemetry.breaker_transition(endpoint, "open")
                breaker.open_until = workflow.time() + self._config.breaker_cooldown_seconds
        else:  # it answered (even with an error of the call's own): the service is up
            if breaker.open_until:
                telemetry.breaker_transition(endpoint, "closed")
            breaker.failures = 0
            breaker.open_until = 0.0
        return outcome

    async def _run_local(self, call: ToolCall) -> ToolOutcome:
        registered = local_registry.get(call.tool)
        try:
            output = await workflow.execute_activity(
                LOCAL_TOOL_ACTIVITY,
                call,
                start_to_close_timeout=timedelta(
                    seconds=registered.spec.timeout_seconds if registered else 30.0
                ),
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=RetryPolicy(
                    maximum_attempts=registered.max_attempts if registered else 3,
                    non_retryable_error_types=NON_RETRYABLE_TOOL_ERRORS,
                ),
                summary=call.tool,
            )
        except ActivityError as err:
            outcome = ToolOutcome.failed(call, LOCAL_SERVICE, *classify_activity_error(err))
        else:
            outcome = ToolOutcome.succeeded(call, LOCAL_SERVICE, output)
        telemetry.tool_call(LOCAL_SERVICE, call.tool, outcome_label(outcome))
        return outcome


def outcome_label(outcome: ToolOutcome) -> str:
    """ok, or how the call failed (bad_request, not_found, unavailable, failed, ...)."""
    return "ok" if outcome.ok else (outcome.error_kind or "failed")


# ---- what a call leaves behind: the turn's record and the model's tool message ---------------
def settled(
    call: LlmToolCall, service: str, args: dict[str, Any], outcome: ToolOutcome
) -> StepResult:
    record = ToolCallRecord(
        name=outcome.tool,
        service=service,
        args=preview(args),
        ok=outcome.ok,
        result=preview(outcome.output if outcome.ok else outcome.error),
        usage=outcome.usage,
    )
    if outcome.ok:
        return record, outcome.output
    return record, {"error": outcome.error_kind, "message": outcome.error}


def refused(call: LlmToolCall, service: str, kind: ToolErrorKind | str, message: str) -> StepResult:
    """A call answered without running because it cannot be made: unknown tool, unusable
    arguments."""
    return _not_ran(call.name, service, call.arguments, kind, message)


def unrun(resolved: Resolved, kind: str, message: str) -> StepResult:
    """A call that could be made, answered without running: denied, or its turn cancelled."""
    spec = resolved.route.spec
    return _not_ran(spec.name, spec.service, resolved.call.args, kind, message)


def _not_ran(name: str, service: str, args: Any, kind: str, message: str) -> StepResult:
    record = ToolCallRecord(
        name=name, service=service, args=preview(args), ok=False, result=message
    )
    return record, {"error": kind, "message": message}


def tool_message(
    call: LlmToolCall, content: Any, limit: int | None = None, max_bytes: int | None = None
) -> ChatMessage:
    """The tool message the model reads. With `limit` (characters) and `max_bytes` (UTF-8), a
    longer content is cut with a marker: every tool message of a step travels in the next model
    step's payload, which has to stay far below Temporal's 2 MB limit."""
    text = json.dumps(content, default=str, ensure_ascii=False)
    if limit is not None and len(text) > limit:
        text = text[:limit] + f"…[truncated {len(text) - limit} characters]"
    if max_bytes is not None and len(encoded := text.encode("utf-8", errors="replace")) > max_bytes:
        kept = encoded[: max(0, max_bytes - 64)].decode("utf-8", errors="ignore")
        text = kept + f"…[truncated {len(text) - len(kept)} characters]"
    return ChatMessage(role="tool", tool_call_id=call.id, name=call.name, content=text)


def preview(value: Any, limit: int = RECORD_RESULT_CHARS) -> Any:
    """The value itself when small; otherwise the start of its JSON with a visible marker."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    if len(text) <= limit:
        # Deeply nested values stay text: the record must decode wherever it goes.
        return value if nesting_depth(value) <= MAX_ARGUMENT_DEPTH else text
    return text[:limit] + f"…[truncated {len(text) - limit} characters]"


def signature(call: LlmToolCall) -> str:
    """The call's identity within a turn: its name and canonical arguments."""
    try:
        canonical = json.dumps(json.loads(call.arguments or "{}"), sort_keys=True)
    except (json.JSONDecodeError, RecursionError):
        canonical = call.arguments
    return f"{call.name}:{canonical}"
