"""Names a model step shares with the workflows that run it, without importing LiteLLM.

Workflow code (the orchestrator's loop, a team agent's loop) retries on these error types and
reads the offline model's name; the activities that raise them (`shared.llm`) need LiteLLM, which
a team that publishes only tools never installs.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

LLM_AUTH_ERROR = "LlmAuthError"
LLM_BAD_REQUEST = "LlmBadRequest"
LLM_CONTEXT_WINDOW = "LlmContextWindowExceeded"
LLM_UNREACHABLE = "LlmUnreachable"
NON_RETRYABLE_LLM_ERRORS = [LLM_AUTH_ERROR, LLM_BAD_REQUEST, LLM_CONTEXT_WINDOW]
OFFLINE_MODEL = "offline/keyword-router"


class ModelChoice(BaseModel):
    """One model a step may use: a LiteLLM name, and where its provider is when that is not the
    provider's default. The key is named by an environment variable, never written in config."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(min_length=1, max_length=200, pattern=r"^\S+$")
    api_base: str | None = Field(default=None, max_length=2000)
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Z][A-Z0-9_]*$")
