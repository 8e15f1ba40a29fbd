"""Settings for every process, read from the environment (and an optional `.env`) by pydantic-settings.

Each deployable reads the same `TEMPORAL_*` variables; only the defaults differ per service, so one
environment file per service per target is all a deployment needs.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

SettingsT = TypeVar("SettingsT", bound=BaseSettings)

_ENV = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")


class ConfigError(Exception):
    """A setting is missing or wrong. The message is one line a person can act on."""


class TemporalSettings(BaseSettings):
    """Where a process finds Temporal and which namespace and task queue it serves."""

    model_config = SettingsConfigDict(**_ENV, env_prefix="TEMPORAL_")

    address: str = Field(default="localhost:7233", min_length=1)
    namespace: str = Field(default="default", min_length=1)
    task_queue: str = Field(default="default", min_length=1)
    api_key: str | None = None
    tls: bool | None = Field(
        default=None, description="Defaults to on when an API key or client cert is set."
    )
    tls_cert_path: Path | None = None
    tls_key_path: Path | None = None
    tls_server_ca_path: Path | None = None

    @model_validator(mode="after")
    def _check_tls(self) -> TemporalSettings:
        if (self.tls_cert_path is None) != (self.tls_key_path is None):
            raise ValueError(
                "TEMPORAL_TLS_CERT_PATH and TEMPORAL_TLS_KEY_PATH must be set together"
            )
        if self.tls is False and (self.api_key or self.tls_cert_path):
            raise ValueError("an API key or client certificate needs TLS; unset TEMPORAL_TLS=false")
        for path in (self.tls_cert_path, self.tls_key_path, self.tls_server_ca_path):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file not found: {path}")
        return self

    @property
    def tls_enabled(self) -> bool:
        if self.tls is not None:
            return self.tls
        return bool(self.api_key or self.tls_cert_path)


class OrchestratorTemporalSettings(TemporalSettings):
    namespace: str = "orchestrator"
    task_queue: str = "orchestrator"


class ITTemporalSettings(TemporalSettings):
    namespace: str = "it"
    task_queue: str = "it-tools"


class FinanceTemporalSettings(TemporalSettings):
    namespace: str = "finance"
    task_queue: str = "finance-tools"


class ToolServiceSettings(BaseSettings):
    """How a team's Nexus handler runs tools."""

    model_config = SettingsConfigDict(**_ENV, env_prefix="TOOL_")

    fast_path_budget_ms: int = Field(
        default=500,
        ge=0,
        le=5000,
        description="How long the handler waits for a tool workflow before completing async. "
        "0 disables the fast path.",
    )

    @property
    def fast_path_budget(self) -> timedelta:
        return timedelta(milliseconds=self.fast_path_budget_ms)


def load_settings(settings_type: type[SettingsT]) -> SettingsT:
    """Build settings, turning a validation error into one readable ConfigError."""
    try:
        return settings_type()
    except SettingsError as err:  # a complex value (list, dict) that is not valid JSON
        prefix = str(settings_type.model_config.get("env_prefix", "")).upper()
        field = str(err).split('"')[1] if '"' in str(err) else ""
        name = f"{prefix}{field.upper()}" if field else settings_type.__name__
        raise ConfigError(f"invalid configuration: {name}: expected a JSON value") from None
    except ValidationError as err:
        prefix = str(settings_type.model_config.get("env_prefix", ""))
        problems = []
        for error in err.errors(include_url=False):
            field = ".".join(str(p) for p in error["loc"])
            name = f"{prefix}{field}".upper() if field else settings_type.__name__
            problems.append(f"{name}: {error['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
