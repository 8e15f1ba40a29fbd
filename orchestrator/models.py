"""Data that crosses the orchestrator's boundaries: workflow input, updates, queries, activities.

Imported by workflow code and by the CLI, so it must stay free of I/O and of litellm.
"""

from __future__ import annotations

import re
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field

from orchestrator.events import TurnEvent, carried
from shared.approval import CallApproval, Verdict
from shared.contract import AgentUsage
from shared.tools import ToolSpec

K = TypeVar("K")

CONVERSATION_WORKFLOW = "ConversationWorkflow"
SEND_MESSAGE_UPDATE = "send_message"
END_UPDATE = "end"
REFRESH_TOOLS_UPDATE = "refresh_tools"
DECIDE_UPDATE = "decide"
CANCEL_UPDATE = "cancel"
# One tool call made directly (an MCP client's `tools/call`), not by the model; and the tools the
# conversation discovered, with their specs (an MCP client's `tools/list`).
CALL_TOOL_UPDATE = "call_tool"
TOOL_CATALOG_UPDATE = "tool_catalog"
STATUS_QUERY = "status"
USAGE_QUERY = "usage"
TURNS_QUERY = "turns"
READ_CONVERSATION_WORKFLOW = "ReadConversation"
# Activities are referred to by name: the workflow sandbox must not import litellm.
LOAD_CONFIG_ACTIVITY = "load_agent_config"
LLM_STEP_ACTIVITY = "llm_step"
LOCAL_TOOL_ACTIVITY = "run_local_tool"
RECORD_TURN_ACTIVITY = "record_turn"
READ_TURNS_ACTIVITY = "read_turns"
RECORD_APPROVAL_ACTIVITY = "record_approval"
# A message's update fails with this type when the conversation continued as new while the
# message waited (a turn paused on approvals, or queued behind one): the client sends the same
# message id again, and the next run, which carries the message, answers it.
CONVERSATION_CONTINUED_ERROR = "ConversationContinuedAsNew"
# Raised (non-retryable) by the model step when the store holds less than the workflow wrote.
STORE_BEHIND_ERROR = "ConversationStoreBehind"
# Raised (non-retryable) by the model step when no tool list is stored under the step's digest:
# the workflow sends the step again with the whole list.
TOOL_CATALOG_MISSING_ERROR = "ToolCatalogMissing"
# Raised (non-retryable) by the model step, before the model is called, when the conversation or
# its user has used up a budget (ORCHESTRATOR_BUDGET_*): the turn fails with the message, and the
# conversation answers again once the budget allows (a raised setting, or the next UTC day).
BUDGET_EXCEEDED_ERROR = "BudgetExceeded"


class LlmToolCall(BaseModel):
    """A tool call as the model asked for it (OpenAI shape: arguments are a JSON string)."""

    id: str
    name: str
    arguments: str


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: list[LlmToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = Field(
        default=0.0, description="The priced steps' cost; unpriced steps are not in it."
    )
    unpriced_steps: int = Field(
        default=0,
        description="Model steps with no known price (offline, local or unknown models): "
        "their cost is unknown, not zero.",
    )

    @classmethod
    def of_agent(cls, usage: AgentUsage) -> Usage:
        return cls(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cost_usd=usage.cost_usd,
            unpriced_steps=usage.unpriced_steps,
        )

    def add(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cost_usd=round(self.cost_usd + other.cost_usd, 8),
            unpriced_steps=self.unpriced_steps + other.unpriced_steps,
        )


class ApprovalRecord(BaseModel):
    """How a gated call was decided: kept in the turn's record, the store and the history."""

    call_id: str
    tool: str
    service: str
    verdict: Verdict
    approver: str = Field(description="Who decided; `system` for a timeout or a cancelled turn.")
    reason: str = ""
    decided_at: str = Field(description="ISO 8601 (workflow time).")
    turn: int
    policy_reason: str = Field(default="", description="Why the call needed approval.")
    timed_out: bool = False

    def for_team(self) -> CallApproval:
        """The decision as it travels with the call to the team (bound by the caller's token)."""
        return CallApproval(
            call_id=self.call_id,
            verdict=self.verdict,
            approver=self.approver,
            reason=self.reason,
            decided_at=self.decided_at,
        )


class ToolCallRecord(BaseModel):
    """One executed tool call, as the CLI's `--json` shows it."""

    name: str
    service: str
    args: dict[str, Any] | str
    ok: bool
    result: Any = None
    approval: ApprovalRecord | None = None
    usage: AgentUsage | None = Field(
        default=None, description="An agent tool's model usage; it is in the turn's usage too."
    )


class PendingApproval(BaseModel):
    """A call waiting for a person's decision, as the status query shows it."""

    call_id: str
    tool: str
    service: str
    args: dict[str, Any] | str
    reason: str = Field(description="Why it needs approval: the policy's condition.")
    approvers: list[str] = Field(default_factory=list, description="Empty: any operator.")
    turn: int
    requested_at: str = Field(description="ISO 8601.")
    expires_at: str = Field(description="ISO 8601: denied automatically then.")


class Decision(BaseModel):
    """The `decide` update's argument: one person's verdict on one pending call."""

    call_id: str = Field(min_length=1, max_length=200)
    verdict: Verdict
    approver: str = Field(min_length=1, max_length=200)
    reason: str = Field(default="", max_length=2000)


class CancelRequest(BaseModel):
    """The `cancel` update's argument."""

    requested_by: str = Field(default="", max_length=200)
    reason: str = Field(default="", max_length=2000)


class CancelResult(BaseModel):
    conversation_id: str
    cancelled: bool = Field(description="False: no turn was running or waiting.")
    turn: int = 0
    dropped_approvals: list[str] = Field(default_factory=list, description="Their call ids.")


class TurnResult(BaseModel):
    conversation_id: str
    answer: str
    message: str = Field(default="", description="The user message this turn answered.")
    tool_calls: list[ToolCallRecord] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    ok: bool = True
    error: str | None = None
    notes: list[str] = Field(default_factory=list)
    cancelled: bool = Field(default=False, description="The turn was cancelled or interrupted.")


class RunningTool(BaseModel):
    name: str
    service: str


ConversationPhase = Literal[
    "starting", "idle", "thinking", "running_tools", "awaiting_approval", "ended"
]
DoubleTexting = Literal["reject", "queue", "interrupt"]


class ConversationStatus(BaseModel):
    conversation_id: str
    state: ConversationPhase
    running: list[RunningTool] = Field(default_factory=list)
    turns: int = 0
    model: str = ""
    offline_model: bool = False
    tools: list[str] = Field(default_factory=list)
    unavailable_endpoints: list[str] = Field(default_factory=list)
    pending_approvals: list[PendingApproval] = Field(default_factory=list)
    queued_messages: int = Field(default=0, description="Messages waiting behind the turn.")
    double_texting: DoubleTexting = "queue"


class StoredMessage(BaseModel):
    """A transcript entry: the store's key is (conversation id, seq)."""

    seq: int
    message: ChatMessage


class ToolRoute(BaseModel):
    """Where a model-facing tool name leads: a team endpoint, or the local activity."""

    model_name: str
    spec: ToolSpec
    endpoint: str | None = None  # None: a local tool


class CircuitBreaker(BaseModel):
    """Per-endpoint: after `failures` unavailable calls in a row, skip the endpoint until
    `open_until` (workflow time, epoch seconds), then let one call through to try it again."""

    failures: int = 0
    open_until: float = 0.0


class DirectCall(BaseModel):
    """The `call_tool` update's argument: one tool call made directly, by a person's MCP client,
    not chosen by the model. It runs as a turn of its own, with no model step: the same
    routing, argument checks, approval gate, circuit breaker and Nexus call as the model's."""

    tool: str = Field(min_length=1, max_length=200, description="The tool's name in the catalog.")
    arguments: str = Field(default="{}", description="A JSON object, as the model would send it.")
    approval_timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        description="Wait at most this long for a decision (never longer than the conversation's "
        "own approval timeout); unset: the conversation's.",
    )


class QueuedMessage(BaseModel):
    """A message accepted while another turn ran (double-texting `queue` or `interrupt`)."""

    message_id: str
    text: str
    direct: DirectCall | None = Field(default=None, description="A direct tool call, not text.")
    model: str | None = Field(default=None, description="The turn's model, chosen by an operator.")


class PlannedCall(BaseModel):
    """One tool call of the step in progress, and how far it got."""

    index: int
    call: LlmToolCall
    kind: Literal["run", "repeated", "not_run"] = "run"
    done: bool = False
    record: ToolCallRecord | None = None
    content: str | None = Field(default=None, description="The tool message the model reads.")
    pending: PendingApproval | None = None
    expires_at: float = Field(default=0.0, description="Workflow time (epoch s) of the timeout.")


class TurnState(BaseModel):
    """A turn in progress. Carried across continue-as-new only while it is paused on approvals,
    with every other call of its step finished: nothing in flight is left behind."""

    message_id: str
    text: str
    turn: int
    step: int = 0
    model: str | None = Field(
        default=None, description="An operator's choice among the deployment's models."
    )
    records: list[ToolCallRecord] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    executed: list[str] = Field(default_factory=list, description="Signatures of calls made.")
    step_calls: list[PlannedCall] | None = Field(
        default=None, description="The step whose calls are running or awaiting decisions."
    )
    direct: DirectCall | None = Field(
        default=None, description="The turn is this one direct tool call (no model step)."
    )


class CarriedState(BaseModel):
    """Everything a conversation remembers between messages, and hands to its next run at
    continue-as-new. Small by design: the transcript is in the store, so only counters, totals,
    the unsent delta and the discovered tools travel."""

    usage: Usage = Field(default_factory=Usage)
    user: str = Field(default="", description="Who the conversation is for (budgets, usage).")
    turns: int = 0
    next_seq: int = Field(default=0, description="The next message's sequence number.")
    pending: list[StoredMessage] = Field(
        default_factory=list, description="Messages the next model step stores."
    )
    routes: dict[str, ToolRoute] = Field(default_factory=dict)
    unavailable: list[str] = Field(default_factory=list)
    recent_turns: list[TurnResult] = Field(default_factory=list)
    run: int = 1
    breakers: dict[str, CircuitBreaker] = Field(default_factory=dict)
    answered: dict[str, TurnResult] = Field(
        default_factory=dict, description="Recent message ids and their answers, for retries."
    )
    discovered_at: float = Field(
        default=0.0, description="Workflow time (epoch seconds) of the last tool discovery."
    )
    catalog_digest: str = Field(
        default="", description="Digest of the tool list the routes give the model."
    )
    catalog_stored: str = Field(
        default="", description="The digest whose tool list a model step last stored."
    )
    inbox: list[QueuedMessage] = Field(
        default_factory=list, description="Accepted messages not yet answered, in order."
    )
    paused_turn: TurnState | None = Field(
        default=None, description="A turn paused on approvals when the run continued as new."
    )
    decisions: dict[str, ApprovalRecord] = Field(
        default_factory=dict,
        description="Recent decisions by call id: a late or repeated "
        "decision is refused by name, across continue-as-new too.",
    )
    events: list[TurnEvent] = Field(
        default_factory=list, description="The newest turn events (orchestrator.events)."
    )
    next_event: int = Field(default=0, description="The next turn event's offset.")
    loaded_tools: list[str] = Field(
        default_factory=list,
        description="Tools whose full schemas the model asked for (orchestrator.disclosure), "
        "oldest first; bounded by max_loaded_tools.",
    )

    def for_next_run(self, answers_budget: int) -> CarriedState:
        """What continue-as-new hands on: the answers and recent turns kept only as far as the
        newest of each fit `answers_budget` bytes of JSON."""
        answered = dict(_newest_within(list(self.answered.items()), answers_budget))
        recent = [t for _, t in _newest_within(list(enumerate(self.recent_turns)), answers_budget)]
        return self.model_copy(
            update={"answered": answered, "recent_turns": recent, "events": carried(self.events)}
        )


def _newest_within(items: list[tuple[K, TurnResult]], budget: int) -> list[tuple[K, TurnResult]]:
    """The most recent items whose JSON fits `budget` bytes, oldest first as they came."""
    kept: list[tuple[K, TurnResult]] = []
    used = 0
    for key, result in reversed(items):
        used += len(result.model_dump_json())
        if used > budget:
            break
        kept.append((key, result))
    return kept[::-1]


class ConversationInput(BaseModel):
    conversation_id: str
    user: str = Field(default="", max_length=200, description="Who the conversation is for.")
    carried: CarriedState | None = None


class ReadConversationInput(BaseModel):
    conversation_id: str
    offset: int = 0
    limit: int = 500


class LlmRequest(BaseModel):
    """One model step: only the messages new since the last step travel; the rest is in the store."""

    conversation_id: str
    new_messages: list[StoredMessage]
    reply_seq: int = Field(description="Sequence number the model's reply is stored under.")
    tools: list[dict[str, Any]] | None = Field(
        default=None,
        description="The whole tool list, sent only when the store may not hold it yet; "
        "otherwise the step loads the list stored under `tools_digest`.",
    )
    tools_digest: str = ""
    user: str = Field(default="", description="Who the conversation is for (budgets, usage).")
    model: str | None = Field(
        default=None, description="This turn's model, first of the list (one of its models)."
    )
    # Where the step's token deltas are filed for readers (orchestrator.events). A local
    # activity's input is not recorded in history, so these cost no history bytes.
    turn: int = 0
    step: int = 0

    @property
    def stored_before(self) -> int:
        """How many messages the store must already hold: every sequence number before this
        step's first new one (sequence numbers start at 0 and have no gaps)."""
        return self.new_messages[0].seq if self.new_messages else self.reply_seq


class LlmStepResult(BaseModel):
    content: str | None = None
    tool_calls: list[LlmToolCall] = Field(default_factory=list)
    usage: Usage = Field(
        default_factory=Usage,
        description="This step's tokens and cost; `unpriced_steps` is 1 when the model has no "
        "known price (then `cost_usd` is 0 because it is unknown, not because it was free).",
    )
    model: str = ""
    compacted: bool = Field(default=False, description="Older turns were summarised this step.")
    fallbacks: list[str] = Field(
        default_factory=list,
        description="Models of the list passed over this step, and why (LLM_FALLBACK_MODELS).",
    )


class RecordTurnInput(BaseModel):
    conversation_id: str
    turn: int
    result: TurnResult
    user: str = Field(default="", description="Whose usage the turn's team agents spent.")


class RecordApprovalInput(BaseModel):
    conversation_id: str
    record: ApprovalRecord


MODEL_NAME = re.compile(r"\S{1,200}")


def model_problem(model: str | None) -> str | None:
    """Why a turn's model override cannot be used; which models exist, the model step knows."""
    if model is None or (isinstance(model, str) and MODEL_NAME.fullmatch(model)):
        return None
    return "the model name must be 1 to 200 characters without spaces"
