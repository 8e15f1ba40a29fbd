"""The loop's settings: what the conversation workflow reads, defined once.

`OrchestratorSettings` (orchestrator/config.py) reads them from `ORCHESTRATOR_*`; `AgentConfig`
carries them, with what the worker found at start-up, into each workflow run. Imported by workflow
code: no I/O.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from orchestrator.models import DoubleTexting
from shared.approval import ApprovalPolicy

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
    # Tools disclosed on demand (orchestrator.disclosure): past either threshold the model gets
    # an index and `load_tools` instead of every schema. 0 turns a measure off.
    disclose_tools_over_count: int = Field(
        default=40,
        ge=0,
        description="With more tools than this, the model gets `load_tools` (an index of every "
        "tool) and the full schemas of only the tools it loaded. 0: never by count.",
    )
    disclose_tools_over_tokens: int = Field(
        default=6000,
        ge=0,
        description="The same past this many estimated tokens of tool schemas (JSON characters "
        "of the whole tool list / 4). 0: never by size.",
    )
    max_loaded_tools: int = Field(
        default=30,
        ge=1,
        le=200,
        description="Tools a conversation keeps loaded with disclosure on; loading more drops "
        "the oldest.",
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
    models_in_list: int = Field(default=1, description="The model and its fallbacks.")
    offline_model: bool
    llm_timeout_seconds: float
    awaiting_approval_attribute: bool = Field(
        default=False,
        description="The namespace has the AgentAwaitingApproval search attribute: conversations "
        "set it while they wait for a decision.",
    )
    tracing: bool = Field(
        default=False,
        description="The worker traces (its client has the tracing plugin): a turn whose message "
        "came without a trace context starts its own trace.",
    )
