"""Orchestrator and LLM settings (pydantic-settings, from the environment or `.env`)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from temporalio.exceptions import ApplicationError

from orchestrator.loop_settings import LoopSettings
from shared.llm_names import LLM_BAD_REQUEST, OFFLINE_MODEL, ModelChoice
from shared.manifest import discovered_endpoints


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
    stream: bool = Field(
        default=True,
        description="Stream the model's tokens to readers (gateway, CLI) as they arrive; the "
        "reply the workflow acts on is the same either way.",
    )

    fallback_models: Annotated[list[ModelChoice], NoDecode] = Field(
        default_factory=list,
        description="Models tried in order when the model cannot answer (outage, rate limit, "
        "context window): names separated by commas, or a JSON list of names and "
        '{"model", "api_base", "api_key_env"} objects.',
    )

    @field_validator("fallback_models", mode="before")
    @classmethod
    def _model_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as err:
                    raise ValueError(f"not a JSON list: {err.msg}") from None
            else:
                value = [name.strip() for name in text.split(",") if name.strip()]
        if isinstance(value, list):
            return [{"model": item} if isinstance(item, str) else item for item in value]
        return value

    @property
    def resolved_model(self) -> str:
        return self.model or OFFLINE_MODEL

    def models_for(self, chosen: str | None) -> list[ModelChoice]:
        """The list with an operator's choice for a turn first; a name that is not one of the
        deployment's models is refused (LlmBadRequest), not asked of a provider."""
        models = self.models
        if chosen is None:
            return models
        picked = [m for m in models if m.model == chosen]
        if not picked:
            names = ", ".join(m.model for m in models)
            raise ApplicationError(
                f"model '{chosen}' is not one of this deployment's models ({names}): set it in "
                "LLM_MODEL or LLM_FALLBACK_MODELS first",
                type=LLM_BAD_REQUEST,
                non_retryable=True,
            )
        return [*picked, *(m for m in models if m.model != chosen)]

    @property
    def models(self) -> list[ModelChoice]:
        """The model, then its fallbacks: what a model step tries, in order."""
        return [ModelChoice(model=self.resolved_model), *self.fallback_models]

    @property
    def offline(self) -> bool:
        return self.resolved_model == OFFLINE_MODEL


class OrchestratorSettings(BaseSettings, LoopSettings):
    """`ORCHESTRATOR_*`: the loop's own settings (LoopSettings, which the workflow reads through
    AgentConfig) plus what only the worker needs: endpoints to discover, store, context window."""

    model_config = SettingsConfigDict(env_prefix="ORCHESTRATOR_", env_file=".env", extra="ignore")

    # Default: the endpoints declared by the team manifests (`*/team.toml`) next to `shared/`,
    # read as data: the orchestrator never imports team code. An image without team folders gets
    # an empty default and sets ORCHESTRATOR_TOOL_ENDPOINTS instead.
    tool_endpoints: Annotated[list[str], NoDecode] = Field(
        default_factory=discovered_endpoints,
        description="Comma-separated Nexus endpoint names to discover tools on.",
    )
    store_url: str = Field(
        default="sqlite:///.run/conversations.db",
        description="Where transcripts live: sqlite:///file.db or postgresql://user@host/db.",
    )
    store_password: SecretStr | None = Field(
        default=None,
        description="The PostgreSQL store's password, kept out of the URL: best as the file "
        "`orchestrator_store_password` in SECRETS_DIR (the compose stack's setup job writes it).",
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
    workflow_sandbox: bool = Field(
        default=False,
        description="Run the conversation workflows in Temporal's workflow sandbox. Off by "
        "default: the sandbox re-enters its restricted environment on every activation and "
        "payload, ~30% of a turn's worker CPU (bench/README.md). The test suite and the replay "
        "tests run the same code with it on, so a non-deterministic call still fails in CI.",
    )

    # Budgets, checked by each model step before the model is called, from the usage the store
    # recorded (table usage_steps). Unset: no limit.
    budget_conversation_tokens: int | None = Field(
        default=None,
        description="Tokens (prompt + completion) one conversation may use; once reached, its "
        "turns fail with a message saying so until the setting is raised.",
    )
    budget_conversation_usd: float | None = Field(
        default=None,
        description="US dollars one conversation may spend. Counts priced model steps only: "
        "steps of a model with no known price (the offline model, local models) cost nothing here.",
    )
    budget_user_day_tokens: int | None = Field(
        default=None,
        description="Tokens one user's conversations may use per UTC day (resets at 00:00 UTC). "
        "Conversations started without a user are not counted against any user.",
    )
    budget_user_day_usd: float | None = Field(
        default=None,
        description="US dollars one user's conversations may spend per UTC day (resets at "
        "00:00 UTC). Counts priced model steps only.",
    )

    @field_validator(
        "budget_conversation_tokens",
        "budget_conversation_usd",
        "budget_user_day_tokens",
        "budget_user_day_usd",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator(
        "budget_conversation_tokens",
        "budget_conversation_usd",
        "budget_user_day_tokens",
        "budget_user_day_usd",
    )
    @classmethod
    def _check_budget(cls, value: float | None) -> float | None:
        if value is not None and not value > 0:
            raise ValueError(f"a budget must be greater than 0, not {value}; unset it for no limit")
        return value

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
