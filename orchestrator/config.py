"""Orchestrator and LLM settings (pydantic-settings, from the environment or `.env`)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from orchestrator.models import OFFLINE_MODEL

DEFAULT_SYSTEM_PROMPT = (
    "You are an operations assistant. Use the tools you are given when they help; several "
    "independent tools may be called at once. If a tool reports an error, fix the arguments and "
    "try again, or explain the problem. Answer concisely."
)


class LLMSettings(BaseSettings):
    """Which model answers. Provider variables LiteLLM reads itself (OPENAI_API_KEY, ...) also work."""

    model_config = SettingsConfigDict(env_prefix="LLM_", env_file=".env", extra="ignore")

    model: str | None = Field(
        default=None,
        description="LiteLLM model name, e.g. openai/gpt-4o-mini. Unset: the offline model.",
    )
    api_base: str | None = None
    api_key: SecretStr | None = None
    timeout_seconds: float = Field(default=60.0, gt=0, le=600)
    temperature: float = Field(default=0.2, ge=0, le=2)

    @property
    def resolved_model(self) -> str:
        return self.model or OFFLINE_MODEL

    @property
    def offline(self) -> bool:
        return self.resolved_model == OFFLINE_MODEL


class OrchestratorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ORCHESTRATOR_", env_file=".env", extra="ignore")

    tool_endpoints: Annotated[list[str], NoDecode] = Field(
        default=["it-tools", "finance-tools"],
        description="Comma-separated Nexus endpoint names to discover tools on.",
    )
    discovery_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    tool_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    max_steps: int = Field(default=8, ge=1, le=50)
    # Bounded so that a message, its echo in the turn's result and the carried answers stay far
    # below Temporal's 2 MB payload limit (4 bytes per character at worst in UTF-8).
    max_message_chars: int = Field(default=8000, ge=1, le=32_000)
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    store_url: str = Field(
        default="sqlite:///.run/conversations.db",
        description="Where transcripts live: sqlite:///file.db or postgresql://user@host/db.",
    )
    context_tokens: int | None = Field(
        default=None,
        ge=512,
        description="Override the model's context window (tokens) used for the compaction budget.",
    )
    keep_recent_turns: int = Field(
        default=6, ge=1, le=100, description="Turns kept verbatim when older ones are summarised."
    )
    compact_after_turns: int | None = Field(
        default=12,
        ge=1,
        description="Also summarise once this many turns are unsummarised (unset: budget only).",
    )
    max_tool_output_chars: int = Field(
        default=4000, ge=200, description="Longer tool outputs are truncated for the model."
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
        default=10, ge=1, le=30, description="Tool calls of one step that run at the same time."
    )
    max_tool_calls_per_step: int = Field(
        default=32,
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
    rediscover_after_seconds: float = Field(
        default=10.0,
        ge=0,
        description="At a turn's start, ask unavailable tool endpoints again once this long "
        "has passed since the last discovery.",
    )

    @field_validator("store_url")
    @classmethod
    def _check_store(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("use sqlite:///path/to/file.db or postgresql://user@host:5432/db")
        return value

    @field_validator("tool_endpoints", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
