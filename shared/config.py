"""Settings for every process, read from the environment (and an optional `.env`) by pydantic-settings.

Each deployable reads the same `TEMPORAL_*` variables; only the defaults differ per service, so one
environment file per service per target is all a deployment needs.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from pydantic import Field, ValidationError, create_model, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from shared.tools import ToolError

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


# A Bool search attribute of the orchestrator's namespace: true while a conversation waits for a
# person's approval, so `agent approvals` finds those conversations with one visibility query.
# Set up by infrastructure/setup.py (make up, compose) and Terraform; without it, conversations
# run unchanged and `agent approvals` asks every running conversation instead.
AWAITING_APPROVAL_ATTRIBUTE = "AgentAwaitingApproval"


def temporal_settings_for(namespace: str, task_queue: str) -> type[TemporalSettings]:
    """TemporalSettings whose defaults are one service's namespace and task queue.

    A team's defaults come from its manifest (shared.manifest), not from a class per team here:
    the SDK knows no team. TEMPORAL_NAMESPACE / TEMPORAL_TASK_QUEUE still override them (on
    Temporal Cloud the namespace is `<name>.<account>`).
    """
    return create_model(
        "ServiceTemporalSettings",
        __base__=TemporalSettings,
        namespace=(str, Field(default=namespace, min_length=1)),
        task_queue=(str, Field(default=task_queue, min_length=1)),
    )


class ToolServiceSettings(BaseSettings):
    """How a team's Nexus handler runs tools."""

    model_config = SettingsConfigDict(**_ENV, env_prefix="TOOL_")

    fast_path_budget_ms: int = Field(
        default=5000,
        ge=0,
        le=9000,
        description="How long the handler waits for a tool workflow before completing async "
        "(never past the request's deadline: Temporal Cloud gives a handler < 10 s). "
        "0 disables the fast path.",
    )

    max_result_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="Tool results larger than this (as JSON) are truncated with a marker.",
    )

    ledger_path: Path | None = Field(
        default=None,
        description="SQLite file where side-effect tools record each effect by call id (the "
        "chaos run reads it). State: in a container it belongs on a volume.",
    )

    @property
    def fast_path_budget(self) -> timedelta:
        return timedelta(milliseconds=self.fast_path_budget_ms)


# Where secret values come from as files, one file per setting, named like the setting's
# environment variable in lower case (`nexus_auth_verify_keys`, `llm_api_key`): pydantic-settings'
# secrets directory. Kubernetes and Docker secrets and Vault agent templates deliver secrets this
# way, and `make up` writes one such directory per process, so no key has to sit in an environment
# variable that every child process and crash dump inherits. An environment variable (or `.env`
# entry) of the same name still wins over the file.
SECRETS_DIR_VARIABLE = "SECRETS_DIR"


def secret_file_name(settings_type: type[BaseSettings], field: str) -> str:
    """The file in the secrets directory that holds `field` of `settings_type`."""
    if field not in settings_type.model_fields:
        raise ValueError(f"{settings_type.__name__} has no setting '{field}'")
    prefix = str(settings_type.model_config.get("env_prefix", ""))
    # pydantic-settings looks the name up case-insensitively; lower case is its documented form.
    return f"{prefix}{field}".lower()


def secrets_dir() -> Path | None:
    """The directory named by SECRETS_DIR, or None when unset. A named but missing directory is an
    error, not a silent fallback: a secret mount that failed must not start a process without its
    keys."""
    value = os.environ.get(SECRETS_DIR_VARIABLE, "").strip()
    if not value:
        return None
    directory = Path(value).expanduser()
    if not directory.is_dir():
        raise ConfigError(
            f"invalid configuration: {SECRETS_DIR_VARIABLE}: {directory} is not a directory"
        )
    return directory


def load_settings(settings_type: type[SettingsT]) -> SettingsT:
    """Build settings from the environment, `.env` and the SECRETS_DIR files, turning any error
    into one readable ConfigError."""
    directory = secrets_dir()
    try:
        return settings_type(_secrets_dir=directory)
    except SettingsError as err:
        raise ConfigError(_settings_error_message(settings_type, err, directory)) from None
    except ValidationError as err:
        prefix = str(settings_type.model_config.get("env_prefix", ""))
        problems = []
        for error in err.errors(include_url=False):
            field = ".".join(str(p) for p in error["loc"])
            name = f"{prefix}{field}".upper() if field else settings_type.__name__
            problems.append(f"{name}: {error['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None


def _settings_error_message(
    settings_type: type[BaseSettings], err: SettingsError, directory: Path | None
) -> str:
    """One line for a value pydantic-settings could not read or decode (a complex value such as a
    dict must be JSON, in a variable or a file alike)."""
    text = str(err)
    # pydantic-settings names the field and the source: 'error ... field "x" from source "Y"'.
    quoted = text.split('"')
    field = quoted[1] if len(quoted) > 1 else ""
    source = quoted[3] if len(quoted) > 3 else ""
    if not field or field not in settings_type.model_fields:
        return f"invalid configuration: {settings_type.__name__}: {text}"
    if source == "SecretsSettingsSource" and directory is not None:
        path = directory / secret_file_name(settings_type, field)
        cause = err.__cause__
        if isinstance(cause, OSError):
            problem = f"unreadable ({cause.strerror or type(cause).__name__})"
        elif isinstance(cause, UnicodeError):
            problem = "not UTF-8 text"
        else:
            problem = "expected a JSON value"
        return f"invalid configuration: secret file {path}: {problem}"
    prefix = str(settings_type.model_config.get("env_prefix", ""))
    return f"invalid configuration: {prefix.upper()}{field.upper()}: expected a JSON value"


def integration_settings(settings_type: type[SettingsT]) -> SettingsT:
    """Settings a tool reads when it runs (API base URLs, tokens from SECRETS_DIR): a bad value is
    the tool's non-retryable error, which the model and the user see, not a retried crash."""
    try:
        return load_settings(settings_type)
    except ConfigError as err:
        raise ToolError(str(err)) from None
