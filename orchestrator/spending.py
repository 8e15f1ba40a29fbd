"""What model steps spend: their price from LiteLLM's map, one usage row per step in the
conversation store, and the budgets checked against those rows before the model is called.

Unknown is not free: a step whose model has no price counts as unpriced, never as $0."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NoReturn

from temporalio.exceptions import ApplicationError

from orchestrator.config import OrchestratorSettings
from orchestrator.models import (
    BUDGET_EXCEEDED_ERROR,
    ChatMessage,
    LlmRequest,
    LlmToolCall,
    RecordTurnInput,
    Usage,
)
from orchestrator.store import (
    AGENT_MODEL_PREFIX,
    ConversationStore,
    ToolUse,
    UsageStep,
    UsageTotal,
)
from orchestrator.tools import LOCAL_SERVICE
from orchestrator.tools import registry as local_registry
from shared.llm import usage_of
from shared.log import get_logger

log = get_logger(__name__)


class Spending:
    """One orchestrator worker's view of what its model steps spend, through its store."""

    def __init__(
        self, store: ConversationStore, settings: OrchestratorSettings, model: str
    ) -> None:
        self._store = store
        self._settings = settings
        self._model = model  # the model asked for, and priced as

    async def recorded(self, conversation_id: str, reply_seq: int) -> Usage:
        """What the earlier attempt that got this step's reply recorded it used. Its worker may
        have died between storing the reply and its usage: then the cost is not known, and the
        step counts as unpriced, never as free."""
        step = await self._store.usage_step(conversation_id, reply_seq)
        if step is None:
            log.warning("no usage was recorded for this step's stored reply; counted unpriced")
            return Usage(unpriced_steps=1)
        return Usage(
            prompt_tokens=step.prompt_tokens,
            completion_tokens=step.completion_tokens,
            cost_usd=step.cost_usd or 0.0,
            unpriced_steps=0 if step.priced else 1,
        )

    async def check(self, request: LlmRequest) -> None:
        """Refuse the step (non-retryable BUDGET_EXCEEDED_ERROR) when the conversation, or its
        user today, has already used a budget up. Totals are what the store recorded for the
        steps before this one, so the step that crosses a limit still runs; the next one stops.
        """
        settings = self._settings
        if settings.budget_conversation_tokens or settings.budget_conversation_usd:
            spent = await self._store.conversation_usage(request.conversation_id)
            problem = _over_budget(
                spent,
                settings.budget_conversation_tokens,
                settings.budget_conversation_usd,
                who="this conversation",
                whose="its",
                what="budget",
                tokens_setting="ORCHESTRATOR_BUDGET_CONVERSATION_TOKENS",
                usd_setting="ORCHESTRATOR_BUDGET_CONVERSATION_USD",
                then="or start a new conversation",
            )
            if problem:
                _refuse(problem, "conversation")
        # Conversations started without a user are not counted against anyone's daily budget.
        if request.user and (settings.budget_user_day_tokens or settings.budget_user_day_usd):
            spent = await self._store.user_day_usage(request.user, _utc_now().date().isoformat())
            problem = _over_budget(
                spent,
                settings.budget_user_day_tokens,
                settings.budget_user_day_usd,
                who=f"user {request.user}",
                whose="the",
                what="daily budget",
                tokens_setting="ORCHESTRATOR_BUDGET_USER_DAY_TOKENS",
                usd_setting="ORCHESTRATOR_BUDGET_USER_DAY_USD",
                then="or wait: it resets at 00:00 UTC",
            )
            if problem:
                _refuse(problem, "user")

    async def record(
        self,
        request: LlmRequest,
        usage: Usage,
        kept: ChatMessage,
        tools: list[dict[str, Any]],
        *,
        model: str | None = None,
    ) -> None:
        """One usage row for the step, describing the reply the store kept (an earlier attempt's
        when it won the race: its tool calls are the ones that run). The row is keyed like the
        reply, so only the first attempt to record it counts."""
        now = _utc_now()
        await self._store.put_usage_step(
            UsageStep(
                conversation_id=request.conversation_id,
                reply_seq=request.reply_seq,
                day=now.date().isoformat(),
                recorded_at=now.isoformat(timespec="seconds"),
                user=request.user,
                # The model asked (and priced as): the provider may answer with a dated name. A
                # fallback or a turn's chosen model is the one that answered, not the first.
                model=model or self._model,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cost_usd=None if usage.unpriced_steps else usage.cost_usd,
                tool_calls=_tool_uses(kept.tool_calls, tools),
            )
        )

    async def record_agents(self, request: RecordTurnInput) -> None:
        """A usage row for each team agent the turn called: what its own model steps spent
        counts against the same budgets, and `agent usage` puts it on the agent's team and name.
        Keyed by turn and call (negative, apart from the model steps' sequence numbers), so a
        retried record counts once."""
        now = _utc_now()
        for index, call in enumerate(request.result.tool_calls):
            if call.usage is None:
                continue
            await self._store.put_usage_step(
                UsageStep(
                    conversation_id=request.conversation_id,
                    reply_seq=-(request.turn * AGENT_ROWS_PER_TURN + index + 1),
                    day=now.date().isoformat(),
                    recorded_at=now.isoformat(timespec="seconds"),
                    user=request.user,
                    model=f"{AGENT_MODEL_PREFIX}{call.service}.{call.name}",
                    prompt_tokens=call.usage.prompt_tokens,
                    completion_tokens=call.usage.completion_tokens,
                    cost_usd=None if call.usage.unpriced_steps else call.usage.cost_usd,
                    tool_calls=[ToolUse(tool=call.name, service=call.service)],
                )
            )


# A turn records at most this many calls (orchestrator.dispatch bounds a step's calls far below).
AGENT_ROWS_PER_TURN = 100_000


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _over_budget(
    spent: UsageTotal,
    tokens_limit: int | None,
    usd_limit: float | None,
    *,
    who: str,
    whose: str,
    what: str,
    tokens_setting: str,
    usd_setting: str,
    then: str,
) -> str | None:
    """What a person reads when a budget is used up (None while it is not)."""
    if tokens_limit is not None and spent.tokens >= tokens_limit:
        return (
            f"{who} has used {spent.tokens:,} of {whose} {tokens_limit:,}-token {what}; "
            f"raise {tokens_setting} {then}"
        )
    if usd_limit is not None and spent.cost_usd >= usd_limit:
        return (
            f"{who} has used {_usd(spent.cost_usd)} of {whose} {_usd(usd_limit)} {what} "
            f"(priced model steps only); raise {usd_setting} {then}"
        )
    return None


def _usd(amount: float) -> str:
    """$1.02, $0.50; amounts under a cent with two significant digits ($0.00045), not $0.00."""
    return f"${amount:,.2f}" if amount >= 0.01 or amount == 0 else f"${amount:.2g}"


def _refuse(message: str, scope: str) -> NoReturn:
    """Stop the step; the error's one detail is the budget's scope (conversation or user)."""
    log.warning("budget exceeded; the model is not called", reason=message, scope=scope)
    raise ApplicationError(message, scope, type=BUDGET_EXCEEDED_ERROR, non_retryable=True)


def _tool_uses(calls: list[LlmToolCall], tools: list[dict[str, Any]]) -> list[ToolUse]:
    """Which team each call of a reply goes to, as far as the step can tell from its tool list.

    The list has model-facing names only (dispatch.build_routes): a name is the tool's own
    unless two services publish it, then `service__tool` with a description starting
    `[service] `. The step's request carries no routes (the workflow keeps them), so a call to
    an unqualified team tool is stored with `service` None and its team is resolved when usage
    is rolled up, from the conversation's turn records (which name each call's service). A
    local tool is known here: unqualified, it is the orchestrator's own registry's.
    """
    described: dict[str, str] = {}
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            described[function["name"]] = str(function.get("description") or "")
    uses = []
    for call in calls:
        service, qualified, bare = call.name.partition("__")
        if qualified and bare and described.get(call.name, "").startswith(f"[{service}] "):
            uses.append(ToolUse(service=service, tool=bare))
        elif call.name in described and local_registry.get(call.name) is not None:
            uses.append(ToolUse(service=LOCAL_SERVICE, tool=call.name))
        else:
            uses.append(ToolUse(service=None, tool=call.name))
    return uses


def response_usage(response: Any, model: str | None) -> Usage:
    """The reply's tokens, and its cost from LiteLLM's price map (or unpriced)."""
    return Usage.of_agent(usage_of(response, model))
