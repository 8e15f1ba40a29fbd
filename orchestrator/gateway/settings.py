"""The gateway's own settings (`GATEWAY_*`), read from the environment or `.env`.

Where it finds Temporal (`TEMPORAL_*`, the orchestrator's namespace and task queue) and the
conversation store (`ORCHESTRATOR_STORE_URL`, `ORCHESTRATOR_STORE_PASSWORD`) are the settings the
orchestrator worker reads too: the gateway and the worker must agree on both.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MAX_BODY_BYTES = 300 * 1024


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", env_file=".env", extra="ignore")

    host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="Address to listen on. 0.0.0.0 only behind a TLS-terminating proxy.",
    )
    port: int = Field(default=8088, ge=0, le=65535, description="Port (0: any free port).")
    max_body_bytes: int = Field(
        default=DEFAULT_MAX_BODY_BYTES,
        ge=1024,
        le=16 * 1024 * 1024,
        description="Request bodies larger than this are refused with 413.",
    )
    keepalive_seconds: float = Field(
        default=15.0, gt=0, le=300, description="An SSE comment is sent after this much silence."
    )
    status_timeout_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="How long a conversation's status query may take (the server holds it while a "
        "model step runs; the conversation is returned without its status then).",
    )
