"""The one Nexus service contract every team serves, whatever its tools are, and its wire types.

Imported by workflow code on the caller side, so it holds types only: what crosses the Nexus
boundary (catalogs, calls, results) and the error type names both sides agree on.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Literal

import nexusrpc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.approval import ApprovalPolicy, CallApproval

TOOL_SERVICE_NAME = "ToolService"

# Error types a tool run can end with (ApplicationError.type). A retry cannot fix the first three.
TOOL_ERROR = "ToolError"  # the tool refused: out-of-range input, a 4xx upstream
TOOL_ARGUMENTS_ERROR = "ToolArgumentsError"  # arguments do not match the tool's schema
TOOL_NOT_FOUND = "ToolNotFound"  # no such tool in the registry
TOOL_TRANSIENT_ERROR = "ToolTransientError"  # the tool asked to be retried
TOOL_FAILED = "ToolFailed"  # anything else, after the tool workflow's retries
# A gated call that came without its approval: a team agent proposes it to its caller instead.
TOOL_NEEDS_APPROVAL = "ToolNeedsApproval"
NON_RETRYABLE_TOOL_ERRORS = [TOOL_ERROR, TOOL_ARGUMENTS_ERROR, TOOL_NOT_FOUND, TOOL_NEEDS_APPROVAL]


TOOL_NAME_PATTERN = r"^[a-zA-Z][a-zA-Z0-9_]{0,63}$"
# How many agents deep a call may be made: the conversation's own loop is depth 0, an agent it
# delegates to runs at 1, an agent that one delegates to at 2. A call deeper than this is refused,
# so agents that name each other cannot loop.
MAX_AGENT_DEPTH = 3
AGENT_DEPTH_ERROR = "AgentDepthExceeded"
ToolKind = Literal["tool", "agent"]


class AgentUsage(BaseModel):
    """What an agent tool's own model steps used: it rolls up into the caller's usage."""

    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    cost_usd: float = Field(default=0.0, ge=0)
    unpriced_steps: int = Field(default=0, ge=0)
    model_steps: int = Field(default=0, ge=0)

    def add(self, other: AgentUsage) -> AgentUsage:
        return AgentUsage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cost_usd=round(self.cost_usd + other.cost_usd, 8),
            unpriced_steps=self.unpriced_steps + other.unpriced_steps,
            model_steps=self.model_steps + other.model_steps,
        )


class ToolSpec(BaseModel):
    """What a caller learns about a tool at run time through `list_tools`."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(pattern=TOOL_NAME_PATTERN)
    description: str
    parameters: dict[str, Any] = Field(description="JSON schema of the arguments object.")
    version: str = "1.0.0"
    requires_approval: bool = Field(
        default=False, description="Whether any call may need approval: `approval` says when."
    )
    approval: ApprovalPolicy = Field(default_factory=ApprovalPolicy)
    timeout_seconds: float = Field(gt=0, description="Upper bound for one execution.")
    service: str = Field(description="The owning team's service name.")
    kind: ToolKind = Field(
        default="tool",
        description="'agent': calling it starts the team's own agent loop, which answers with "
        "`output_schema` and reports its usage.",
    )
    output_schema: dict[str, Any] | None = Field(
        default=None, description="JSON schema of the output, where the team publishes one."
    )
    agent_tools: list[str] = Field(
        default_factory=list,
        description="An agent's: the team's tools it may call (a caller's rules for them apply "
        "to the agent's call).",
    )

    @model_validator(mode="after")
    def _flag_follows_policy(self) -> ToolSpec:
        # A catalog from before policies says only `requires_approval`: read it as "always".
        if self.requires_approval and not self.approval.gated:
            object.__setattr__(self, "approval", ApprovalPolicy.always())
        object.__setattr__(self, "requires_approval", self.approval.gated)
        return self


class ToolCatalog(BaseModel):
    """A team's published tools."""

    service: str
    tools: list[ToolSpec]


class ToolCall(BaseModel):
    """One request to run a tool. `call_id` is stable across retries of the same call."""

    call_id: str = Field(min_length=1, max_length=200)
    tool: str = Field(min_length=1, max_length=128)
    args: dict[str, Any] = Field(default_factory=dict)
    conversation_id: str = Field(default="", max_length=200)
    user: str = Field(
        default="",
        max_length=200,
        description="Who asked: the conversation's user, as the orchestrator asserts it (bound by "
        "the token); empty: nobody named.",
    )
    approval: CallApproval | None = Field(
        default=None, description="The decision on a call that needed one (bound by the token)."
    )
    depth: int = Field(
        default=0,
        ge=0,
        le=MAX_AGENT_DEPTH + 1,
        description="How many agents deep the caller is: 0 for a conversation's own loop.",
    )

    @property
    def workflow_id(self) -> str:
        return tool_workflow_id(self.call_id)


class ToolResult(BaseModel):
    """The outcome of a successful tool execution."""

    call_id: str
    tool: str
    service: str
    output: Any = None
    usage: AgentUsage | None = Field(
        default=None, description="An agent tool's model usage, for the caller to add to its own."
    )


def tool_workflow_id(call_id: str) -> str:
    """Derive the tool workflow id from the call id, so a repeated start runs the tool once.

    Workflow ids have a length limit and call ids come from LLM providers, so long or unusual ids are
    hashed rather than trusted verbatim.
    """
    if re.fullmatch(r"[A-Za-z0-9._:@-]{1,120}", call_id):
        return f"tool-{call_id}"
    return "tool-" + hashlib.sha256(call_id.encode()).hexdigest()[:40]


class ListToolsRequest(BaseModel):
    """Room to grow (filters, caller identity) without changing the operation's signature."""

    caller: str = ""


@nexusrpc.service(name=TOOL_SERVICE_NAME)
class ToolService:
    list_tools: nexusrpc.Operation[ListToolsRequest, ToolCatalog]
    execute_tool: nexusrpc.Operation[ToolCall, ToolResult]
