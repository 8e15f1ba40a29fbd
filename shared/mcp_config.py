"""How a team declares an MCP server whose tools it publishes: `[[mcp_servers]]` in team.toml.

    [[mcp_servers]]
    name = "time"                                   # names the source: logs, session ids
    command = ["{python}", "-m", "mcp_server_time"] # stdio: argv; {python} is the worker's Python
    # url = "https://mcp.example.com/mcp"           # or streamable HTTP
    # headers = { Authorization = "Bearer ${IT_TIME_TOKEN}", X-User = "{user}" }
    allow = ["get_current_time", "convert_time"]    # optional: only these tools
    deny = []                                       # optional: never these
    approval = { convert_time = { mode = "always" } }
    session = "shared"                              # or "conversation": one session each
    rebuild = []                                    # conversation sessions: calls replayed on rebuild

Data only, like the rest of the manifest: setup and the orchestrator read it without starting
anything. `${NAME}` in `env`/`headers` is read from the worker's environment when the session
opens (secrets stay in the team's worker, never in a manifest or in history); `{user}` is the
caller's user, bound by its signed token.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.approval import ApprovalPolicy
from shared.contract import TOOL_NAME_PATTERN

SOURCE_NAME_PATTERN = r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$"
ENVIRONMENT_REFERENCE = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")
USER_PLACEHOLDER = "{user}"
PYTHON_PLACEHOLDER = "{python}"
# An MCP tool name must also be one of ours once prefixed (letters, digits, underscores).
PREFIX_PATTERN = r"^([a-zA-Z][a-zA-Z0-9_]{0,30})?$"


class McpSampleCall(BaseModel):
    """A call of one of the server's tools (its own name) with valid arguments: `bench.mcp`
    times these against a Python tool's call."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tool: str = Field(pattern=TOOL_NAME_PATTERN)
    args: dict[str, Any] = Field(default_factory=dict)


class McpServerSource(BaseModel):
    """One MCP server a team publishes tools from. Exactly one of `command` and `url`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=SOURCE_NAME_PATTERN)
    command: list[str] | None = Field(default=None, min_length=1)
    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    # http(s)://..., or a ${VARIABLE} holding it: deployments differ, the manifest does not.
    url: str | None = Field(default=None, pattern=r"^(https?://\S+|\$\{[A-Z][A-Z0-9_]*\})$")
    headers: dict[str, str] = Field(default_factory=dict)
    prefix: str = Field(default="", pattern=PREFIX_PATTERN)
    allow: list[str] = Field(default_factory=list)
    deny: list[str] = Field(default_factory=list)
    approval: dict[str, ApprovalPolicy] = Field(default_factory=dict)
    session: Literal["shared", "conversation"] = "shared"
    rebuild: list[str] = Field(default_factory=list)
    timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    max_attempts: int = Field(default=3, ge=1, le=20)
    startup_timeout_seconds: float = Field(default=20.0, gt=0, le=300)
    # Fast calls that change nothing; and, for a conversation session, calls that add to it.
    sample_calls: list[McpSampleCall] = Field(default_factory=list)
    session_sample_calls: list[McpSampleCall] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_transport_and_known_names(self) -> McpServerSource:
        if (self.command is None) == (self.url is None):
            raise ValueError(f"MCP server '{self.name}': give exactly one of 'command' and 'url'")
        if self.command is None and self.env:
            raise ValueError(f"MCP server '{self.name}': 'env' is for a command; use 'headers'")
        if self.url is None and self.headers:
            raise ValueError(f"MCP server '{self.name}': 'headers' are for a url; use 'env'")
        if any(USER_PLACEHOLDER in part for part in self.command or []):
            raise ValueError(
                f"MCP server '{self.name}': a command line is visible to every local user; "
                "pass {user} through 'env' (session = \"conversation\")"
            )
        templated = [*self.env.values(), *self.headers.values(), self.url or ""]
        for value in templated:
            if "${" in ENVIRONMENT_REFERENCE.sub("", value):
                raise ValueError(
                    f"MCP server '{self.name}': '{value}' has a malformed reference; "
                    "write ${UPPER_CASE_NAME}"
                )
        if self.rebuild and self.session != "conversation":
            raise ValueError(
                f"MCP server '{self.name}': 'rebuild' replays calls into a conversation's own "
                'session; set session = "conversation"'
            )
        if self.session == "shared" and any(USER_PLACEHOLDER in v for v in self.env.values()):
            raise ValueError(
                f"MCP server '{self.name}': a shared process serves every user, so its 'env' "
                'cannot name one; use session = "conversation" or headers'
            )
        for listed in ("allow", "deny", "rebuild"):
            for tool in getattr(self, listed):
                if not re.match(TOOL_NAME_PATTERN, tool):
                    raise ValueError(f"MCP server '{self.name}': {listed} '{tool}' is no tool name")
        samples = [call.tool for call in [*self.sample_calls, *self.session_sample_calls]]
        for tool in [*self.approval, *self.rebuild, *samples]:
            if not self.publishes(tool):
                raise ValueError(
                    f"MCP server '{self.name}': '{tool}' is named but not published "
                    "(check allow/deny)"
                )
        return self

    def publishes(self, mcp_tool: str) -> bool:
        """Whether the server's tool `mcp_tool` is published, by the allow and deny lists."""
        return (not self.allow or mcp_tool in self.allow) and mcp_tool not in self.deny

    def published_name(self, mcp_tool: str) -> str:
        return f"{self.prefix}{mcp_tool}"

    @property
    def per_user(self) -> bool:
        """Whether each user needs their own session: their name goes into env or headers."""
        return any(USER_PLACEHOLDER in v for v in [*self.env.values(), *self.headers.values()])
