"""Data that crosses the orchestrator's boundaries: workflow input, updates, queries, activities.

Imported by workflow code and by the CLI, so it must stay free of I/O and of litellm.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from shared.approval import ApprovalPolicy, Verdict
from shared.tools import ToolSpec

CONVERSATION_WORKFLOW = "ConversationWorkflow"
SEND_MESSAGE_UPDATE = "send_message"
END_UPDATE = "end"
REFRESH_TOOLS_UPDATE = "refresh_tools"
DECIDE_UPDATE = "decide"
CANCEL_UPDATE = "cancel"
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
LLM_AUTH_ERROR = "LlmAuthError"
LLM_BAD_REQUEST = "LlmBadRequest"
LLM_CONTEXT_WINDOW = "LlmContextWindowExceeded"
NON_RETRYABLE_LLM_ERRORS = [LLM_AUTH_ERROR, LLM_BAD_REQUEST, LLM_CONTEXT_WINDOW]
# Raised (non-retryable) by the model step when the store holds less than the workflow wrote.
STORE_BEHIND_ERROR = "ConversationStoreBehind"
# Raised (non-retryable) by the model step when no tool list is stored under the step's digest:
# the workflow sends the step again with the whole list.
TOOL_CATALOG_MISSING_ERROR = "ToolCatalogMissing"
OFFLINE_MODEL = "offline/keyword-router"


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
    cost_usd: float = 0.0

    def add(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cost_usd=round(self.cost_usd + other.cost_usd, 8),
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


class ToolCallRecord(BaseModel):
    """One executed tool call, as the CLI's `--json` shows it."""

    name: str
    service: str
    args: dict[str, Any] | str
    ok: bool
    result: Any = None
    approval: ApprovalRecord | None = None


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


class QueuedMessage(BaseModel):
    """A message accepted while another turn ran (double-texting `queue` or `interrupt`)."""

    message_id: str
    text: str


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
    records: list[ToolCallRecord] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    executed: list[str] = Field(default_factory=list, description="Signatures of calls made.")
    step_calls: list[PlannedCall] | None = Field(
        default=None, description="The step whose calls are running or awaiting decisions."
    )


class CarriedState(BaseModel):
    """Everything a conversation remembers between messages, and hands to its next run at
    continue-as-new. Small by design: the transcript is in the store, so only counters, totals,
    the unsent delta and the discovered tools travel."""

    usage: Usage = Field(default_factory=Usage)
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


class ConversationInput(BaseModel):
    conversation_id: str
    carried: CarriedState | None = None


class ReadConversationInput(BaseModel):
    conversation_id: str
    offset: int = 0
    limit: int = 500


DEFAULT_SYSTEM_PROMPT = (
    "You are an operations assistant. Use the tools you are given when they help; several "
    "independent tools may be called at once. If a tool reports an error, fix the arguments and "
    "try again, or explain the problem. Answer concisely."
)


class LoopSettings(BaseModel):
    """The settings the conversation workflow reads, defined once: OrchestratorSettings reads them
    from `ORCHESTRATOR_*`, and AgentConfig carries them into the workflow."""

    discovery_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    tool_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    max_steps: int = Field(default=8, ge=1, le=50)
    # Bounded so that a message, its echo in the turn's result and the carried answers stay far
    # below Temporal's 2 MB payload limit (4 bytes per character at worst in UTF-8).
    max_message_chars: int = Field(default=8000, ge=1, le=32_000)
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_tool_message_chars: int = Field(
        default=16_000,
        ge=1000,
        le=60_000,
        description="Longer tool results are cut, with a marker, before they enter the transcript.",
    )
    max_turns_per_run: int = Field(
        default=100, ge=1, le=1000, description="Continue-as-new after this many turns."
    )

    breaker_failures: int = Field(
        default=2, ge=1, description="Unavailable calls in a row that open an endpoint's breaker."
    )
    breaker_cooldown_seconds: float = Field(
        default=30.0, gt=0, description="How long an open breaker skips its endpoint."
    )
    # Temporal Cloud allows 30 in-flight Nexus operations per workflow; a step never schedules
    # more than this many tool calls at once, so no model reply can hit that limit.
    max_parallel_tools: int = Field(
        default=20,
        ge=1,
        le=30,
        description="Tool calls of one step in flight at once; more run as earlier ones finish.",
    )
    max_tool_calls_per_step: int = Field(
        default=64,
        ge=1,
        le=128,
        description="Tool calls run per model step; the model is told the rest were not run.",
    )
    max_tool_arguments_chars: int = Field(
        default=32_000,
        ge=100,
        le=256_000,
        description="Longer tool arguments are refused before anything is scheduled.",
    )
    model_step: Literal["local", "activity"] = Field(
        default="local",
        description="How a model step runs: `local`, a local activity in the conversation's "
        "worker (no task round trip through the server: half the workflow tasks of a turn and "
        "no activity tasks; a killed worker's step runs again after the workflow task timeout, "
        "10 s); `activity`, a regular activity that heartbeats (its own task, visible to "
        "queries while it runs).",
    )
    double_texting: DoubleTexting = Field(
        default="queue",
        description="A message sent while a turn runs: `queue` (answered after it, in order), "
        "`reject` (refused), or `interrupt` (the running turn is cancelled, then it is answered).",
    )
    max_queued_messages: int = Field(
        default=4,
        ge=0,
        le=8,
        description="Messages that may wait behind a running turn (`queue`, `interrupt`); more "
        "are refused. Each waiting message holds one of the server's in-flight updates per "
        "workflow (10 by default), and approve, deny, cancel and end need some left.",
    )
    approval_timeout_seconds: float = Field(
        default=3600.0,
        gt=0,
        le=30 * 86400,
        description="A call awaiting approval longer than this is denied, and the model told why.",
    )
    approval_policies: dict[str, ApprovalPolicy] = Field(
        default_factory=dict,
        description='Stricter approval per deployment, JSON: {"service.tool": policy} ("service.*" '
        "for every tool of a service). Adds to the team's policy, never relaxes it.",
    )
    rediscover_after_seconds: float = Field(
        default=10.0,
        ge=0,
        description="At a turn's start, ask unavailable tool endpoints again once this long "
        "has passed since the last discovery.",
    )

    @field_validator("approval_policies")
    @classmethod
    def _only_stricter(cls, value: dict[str, ApprovalPolicy]) -> dict[str, ApprovalPolicy]:
        for key, policy in value.items():
            service, dot, tool = key.partition(".")
            if not (dot and service and tool):
                raise ValueError(f"'{key}': name a tool as 'service.tool' or 'service.*'")
            if not policy.gated:
                raise ValueError(
                    f"'{key}': a deployment can only add approval, never remove it; "
                    "drop the entry instead of mode 'never'"
                )
        return value

    def deployment_policy(self, service: str, tool: str) -> ApprovalPolicy | None:
        return self.approval_policies.get(f"{service}.{tool}") or self.approval_policies.get(
            f"{service}.*"
        )


class AgentConfig(LoopSettings):
    """The worker's settings, read once per run by a local activity so replay sees the same."""

    tool_endpoints: list[str]
    missing_endpoints: list[str] = Field(default_factory=list)
    model: str
    offline_model: bool
    llm_timeout_seconds: float
    awaiting_approval_attribute: bool = Field(
        default=False,
        description="The namespace has the AgentAwaitingApproval search attribute: conversations "
        "set it while they wait for a decision.",
    )


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

    @property
    def stored_before(self) -> int:
        """How many messages the store must already hold: every sequence number before this
        step's first new one (sequence numbers start at 0 and have no gaps)."""
        return self.new_messages[0].seq if self.new_messages else self.reply_seq


class LlmStepResult(BaseModel):
    content: str | None = None
    tool_calls: list[LlmToolCall] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    model: str = ""
    compacted: bool = Field(default=False, description="Older turns were summarised this step.")


class RecordTurnInput(BaseModel):
    conversation_id: str
    turn: int
    result: TurnResult


class RecordApprovalInput(BaseModel):
    conversation_id: str
    record: ApprovalRecord
