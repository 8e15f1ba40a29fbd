"""Data that crosses the orchestrator's boundaries: workflow input, updates, queries, activities.

Imported by workflow code and by the CLI, so it must stay free of I/O and of litellm.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from shared.tools import ToolSpec

CONVERSATION_WORKFLOW = "ConversationWorkflow"
SEND_MESSAGE_UPDATE = "send_message"
END_UPDATE = "end"
REFRESH_TOOLS_UPDATE = "refresh_tools"
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


class ToolCallRecord(BaseModel):
    """One executed tool call, as the CLI's `--json` shows it."""

    name: str
    service: str
    args: dict[str, Any] | str
    ok: bool
    result: Any = None


class TurnResult(BaseModel):
    conversation_id: str
    answer: str
    message: str = Field(default="", description="The user message this turn answered.")
    tool_calls: list[ToolCallRecord] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    ok: bool = True
    error: str | None = None
    notes: list[str] = Field(default_factory=list)


class RunningTool(BaseModel):
    name: str
    service: str


ConversationPhase = Literal["starting", "idle", "thinking", "running_tools", "ended"]


class ConversationStatus(BaseModel):
    conversation_id: str
    state: ConversationPhase
    running: list[RunningTool] = Field(default_factory=list)
    turns: int = 0
    model: str = ""
    offline_model: bool = False
    tools: list[str] = Field(default_factory=list)
    unavailable_endpoints: list[str] = Field(default_factory=list)


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
    rediscover_after_seconds: float = Field(
        default=10.0,
        ge=0,
        description="At a turn's start, ask unavailable tool endpoints again once this long "
        "has passed since the last discovery.",
    )


class AgentConfig(LoopSettings):
    """The worker's settings, read once per run by a local activity so replay sees the same."""

    tool_endpoints: list[str]
    missing_endpoints: list[str] = Field(default_factory=list)
    model: str
    offline_model: bool
    llm_timeout_seconds: float


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
