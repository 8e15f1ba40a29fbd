"""Agents a team publishes through its own Nexus endpoint, beside its tools.

A team declares an agent in its `team.toml`, in the same typed style as its tools:

    [[agents]]
    name = "triage"
    description = "Triage a host incident: ..."
    instructions = "You are the IT team's triage agent. ..."
    models = ["openai/gpt-4o-mini", { model = "anthropic/claude-3-5-haiku-latest" }]
    tools = ["get_ip_history", "jira_metrics", "create_ticket"]
    max_steps = 6
    budget = { max_tokens = 20000, max_cost_usd = 0.05 }

Callers discover it as one more tool (`kind = "agent"`) with a typed input (`AgentTask`) and a
typed output (`AgentAnswer`). A call starts `TeamAgentWorkflow` in the team's namespace: the
team's own durable loop, with the team's instructions, models and budget, calling the team's tools
as child workflows inside the team. Its usage travels back with the result and rolls up into the
caller's. A call its tool's approval policy holds back is not run by the agent: it is proposed to
the caller, whose own loop (and the person approving there) decides. This module holds the types
only; it imports no LiteLLM, so the orchestrator and tool-only teams can read them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from temporalio import activity

from shared.config import ConfigError
from shared.contract import TOOL_NAME_PATTERN, AgentUsage, ToolCall, ToolSpec
from shared.llm_names import ModelChoice
from shared.log import get_logger
from shared.tools import RegisteredTool, ToolError, ToolRegistry

log = get_logger(__name__)

AGENT_WORKFLOW_NAME = "TeamAgentWorkflow"
AGENT_MODEL_STEP_ACTIVITY = "agent_model_step"
# What one tool result may add to an agent's transcript, which lives in workflow history.
AGENT_TOOL_RESULT_CHARS = 4_000
AGENT_ANSWER_CHARS = 8_000
AGENT_ARGUMENT_CHARS = 16_000
# The transcript travels in every model step's input: the loop stops, saying so, past this.
AGENT_TRANSCRIPT_CHARS = 400_000


class AgentBudget(BaseModel):
    """What one call of the agent may spend; the loop stops, with a note, once a limit is hit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_tokens: int = Field(default=50_000, gt=0, description="Prompt plus completion tokens.")
    max_cost_usd: float | None = Field(default=None, gt=0)


class AgentDeclaration(BaseModel):
    """One `[[agents]]` entry of a team manifest."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=TOOL_NAME_PATTERN)
    description: str = Field(min_length=1, max_length=1000)
    instructions: str = Field(min_length=1, max_length=20_000)
    models: list[ModelChoice] = Field(
        min_length=1,
        description="Tried in order: a provider outage, a rate limit or a context "
        "window overflow moves the step to the next one.",
    )
    tools: list[str] = Field(default_factory=list, description="The team's tools it may call.")
    task_template: str = Field(
        default="{task}",
        max_length=4_000,
        description="How the caller's task reaches the agent's model as its first message: the "
        "team frames it ('Triage this incident: {task}').",
    )
    max_steps: int = Field(default=6, ge=1, le=20)
    budget: AgentBudget = Field(default_factory=AgentBudget)
    timeout_seconds: float = Field(default=600, gt=0, le=86_400)
    temperature: float = Field(default=0.2, ge=0, le=2)
    model_timeout_seconds: float = Field(default=60, gt=0, le=600)

    @field_validator("models", mode="before")
    @classmethod
    def _names_are_models(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"model": item} if isinstance(item, str) else item for item in value]
        return value

    @model_validator(mode="after")
    def _never_itself(self) -> AgentDeclaration:
        if self.name in self.tools:
            raise ValueError(f"agent '{self.name}' lists itself among its tools")
        if self.task_template.count("{task}") != 1:
            raise ValueError(f"agent '{self.name}': task_template must hold {{task}} once")
        if len(set(self.tools)) != len(self.tools):
            raise ValueError(f"agent '{self.name}' lists a tool twice")
        return self


class AgentTask(BaseModel):
    """An agent tool's arguments: what the caller's model hands over."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1, max_length=8_000, description="What the agent should do.")
    context: str | None = Field(
        default=None,
        max_length=16_000,
        description="Anything the agent should know that the task does not say.",
    )


class AgentToolCall(BaseModel):
    """One call the agent made (or proposed), as its caller reads it."""

    tool: str
    args: dict[str, Any] = Field(default_factory=dict)
    ok: bool = True
    output: Any = None


class ProposedCall(BaseModel):
    """A call the agent wanted to make that its policy holds for a person's approval: the caller
    may make it itself, through its own approval gate."""

    tool: str
    service: str
    args: dict[str, Any] = Field(default_factory=dict)
    reason: str


class AgentAnswer(BaseModel):
    """An agent tool's output."""

    answer: str
    tool_calls: list[AgentToolCall] = Field(default_factory=list)
    proposed_calls: list[ProposedCall] = Field(default_factory=list)
    usage: AgentUsage = Field(default_factory=AgentUsage)
    steps: int = 0
    models: list[str] = Field(default_factory=list, description="Which model answered each step.")
    notes: list[str] = Field(default_factory=list)


class AgentToolLimits(BaseModel):
    """How the agent's loop runs one of its tools: the spec the model reads, and the limits the
    team's tool workflow needs (the registry itself stays outside workflow code)."""

    spec: ToolSpec
    max_attempts: int = 5
    local_activity: bool = True


class AgentRunInput(BaseModel):
    """What a call of an agent tool starts: the call, the declaration, and its tools' specs."""

    call: ToolCall
    service: str
    agent: AgentDeclaration
    task: AgentTask
    tools: list[AgentToolLimits] = Field(default_factory=list)
    # Agents of the same team this one may delegate to, by name (their own runs are children).
    agents: dict[str, AgentDeclaration] = Field(default_factory=dict)


class AgentModelRequest(BaseModel):
    """One model step of a team agent: its transcript so far and the tools it may call."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = Field(default_factory=list)
    models: list[ModelChoice]
    timeout_seconds: float = 60
    temperature: float = 0.2


class AgentToolRequest(BaseModel):
    """A tool call the model asked for, as the agent's model step read it."""

    id: str
    name: str
    arguments: str


class AgentModelReply(BaseModel):
    content: str | None = None
    tool_calls: list[AgentToolRequest] = Field(default_factory=list)
    usage: AgentUsage = Field(default_factory=AgentUsage)
    model: str = Field(description="The model that answered.")
    fallbacks: list[str] = Field(
        default_factory=list, description="Why earlier models of the list did not answer."
    )


def describe_agent_run(output: Any) -> str:
    """One line on a team agent's run (its tool's output), for the people watching its caller."""
    try:
        run = AgentAnswer.model_validate(output)
    except ValueError:  # not an agent's answer after all: say no more than that
        return "agent answered"
    names = ", ".join(call.tool for call in run.tool_calls) or "none"
    line = f"agent: {run.steps} model steps, {len(run.tool_calls)} tool calls ({names})"
    if run.proposed_calls:
        line += f", {len(run.proposed_calls)} proposed for approval"
    return line[:300]


def agent_spec(declaration: AgentDeclaration, service: str) -> ToolSpec:
    """How callers discover an agent: a tool with the task as input and the answer as output."""
    parameters = AgentTask.model_json_schema()
    parameters.pop("title", None)
    output = AgentAnswer.model_json_schema()
    return ToolSpec(
        name=declaration.name,
        description=declaration.description,
        parameters=parameters,
        timeout_seconds=declaration.timeout_seconds,
        service=service,
        kind="agent",
        output_schema=output,
        agent_tools=list(declaration.tools),
    )


async def _runs_as_a_workflow(**_: Any) -> Any:
    raise ToolError("an agent runs as its own workflow (TeamAgentWorkflow), not as a tool activity")


@dataclass(frozen=True)
class RegisteredAgent(RegisteredTool):
    """An agent in the team's registry: discovered like a tool, run by TeamAgentWorkflow."""

    declaration: AgentDeclaration | None = None


def publish_agents(
    package: str, agents: list[AgentDeclaration], registry: ToolRegistry, *, later: bool = False
) -> None:
    """Add the manifest's agents to the team's registry. A tool an agent names must be the team's
    (or, with `later`, may be an MCP server's still being listed): checked here, at start."""
    names = {agent.name for agent in agents}
    for agent in agents:
        if registry.get(agent.name) is not None:
            raise ConfigError(f"{package}: agent '{agent.name}' has the name of a tool")
        for tool in agent.tools:
            if tool in names or registry.get(tool) is not None:
                continue
            if later:
                log.warning("agent names a tool not listed yet", agent=agent.name, tool=tool)
                continue
            known = ", ".join(sorted(registry.names())) or "none"
            raise ConfigError(
                f"{package}: agent '{agent.name}' names tool '{tool}', which the team does not "
                f"publish (tools: {known})"
            )
    for agent in agents:
        registry.add_registered(
            RegisteredAgent(
                spec=agent_spec(agent, registry.service),
                function=_runs_as_a_workflow,
                arguments_model=AgentTask,
                context_parameter=None,
                max_attempts=1,
                declaration=agent,
            )
        )


def agent_run_input(
    call: ToolCall, registered: RegisteredAgent, registry: ToolRegistry
) -> AgentRunInput:
    """What the handler starts for a call of an agent: the team's current specs of the tools it
    may call, and of those of the agents it may delegate to (their runs read the same input)."""
    assert registered.declaration is not None
    tools: dict[str, AgentToolLimits] = {}
    agents: dict[str, AgentDeclaration] = {}
    waiting = [registered.declaration]
    while waiting:
        declaration = waiting.pop()
        for name in declaration.tools:
            found = registry.get(name)
            if found is None or name in tools:
                continue  # an MCP server's tool not listed yet: the model is told it is unknown
            if isinstance(found, RegisteredAgent) and found.declaration is not None:
                agents[name] = found.declaration
                waiting.append(found.declaration)
            tools[name] = AgentToolLimits(
                spec=found.spec,
                max_attempts=found.max_attempts,
                local_activity=found.local_activity,
            )
    return AgentRunInput(
        call=call,
        service=registry.service,
        agent=registered.declaration,
        task=AgentTask.model_validate(call.args),
        tools=list(tools.values()),
        agents=agents,
    )


class AgentModelActivities:
    """The team worker's `agent_model_step` activity. LiteLLM takes seconds to import, so the
    step's module (shared.agent_activity) is loaded in a thread as the worker starts, and a
    restarted worker polls for its tools' calls at once; the first model step waits for it."""

    def __init__(self) -> None:
        loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="litellm-import")
        self._step = loader.submit(_import_model_step)
        loader.shutdown(wait=False)

    @activity.defn(name=AGENT_MODEL_STEP_ACTIVITY)
    async def agent_model_step(self, request: AgentModelRequest) -> AgentModelReply:
        step = await asyncio.wrap_future(self._step)
        return await step(request)


def _import_model_step() -> Callable[[AgentModelRequest], Awaitable[AgentModelReply]]:
    from shared.agent_activity import model_step

    return model_step
