"""LiteLLM errors, sorted into what Temporal should retry and what it must not.

LiteLLM's own retries are off (`num_retries=0`): the activity's retry policy owns retries, and a
rate limit's Retry-After becomes the next retry delay.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch the cost map at import

import litellm
from temporalio.exceptions import ApplicationError

from orchestrator.models import LLM_AUTH_ERROR, LLM_BAD_REQUEST, LLM_CONTEXT_WINDOW

MAX_RETRY_AFTER = timedelta(minutes=10)


def classify_llm_error(err: Exception) -> ApplicationError:
    """Map a LiteLLM exception onto an ApplicationError with the right retry behaviour."""
    provider = getattr(err, "llm_provider", "") or "the model provider"
    detail = _short(getattr(err, "message", None) or str(err))
    if isinstance(err, litellm.ContextWindowExceededError):
        return ApplicationError(
            f"the conversation no longer fits the model's context window: {detail}",
            type=LLM_CONTEXT_WINDOW,
            non_retryable=True,
        )
    if isinstance(err, litellm.AuthenticationError | litellm.PermissionDeniedError):
        return ApplicationError(
            f"{provider} rejected the credentials ({_status(err)}): check LLM_API_KEY or the "
            f"provider's key variable. {detail}",
            type=LLM_AUTH_ERROR,
            non_retryable=True,
        )
    if isinstance(err, litellm.RateLimitError):
        delay = retry_after(err)
        return ApplicationError(
            f"{provider} is rate limiting requests; retrying"
            + (f" after {delay.total_seconds():.0f}s" if delay else ""),
            type="LlmRateLimited",
            next_retry_delay=delay,
        )
    if isinstance(
        err,
        litellm.Timeout
        | litellm.APIConnectionError
        | litellm.InternalServerError
        | litellm.ServiceUnavailableError
        | litellm.BadGatewayError,
    ):
        return ApplicationError(
            f"{provider} is unavailable ({type(err).__name__}): {detail}", type="LlmUnavailable"
        )
    if isinstance(
        err,
        litellm.BadRequestError | litellm.NotFoundError | litellm.UnprocessableEntityError,
    ):
        return ApplicationError(
            f"{provider} refused the request ({_status(err)}): {detail}",
            type=LLM_BAD_REQUEST,
            non_retryable=True,
        )
    status = _status(err)
    if isinstance(status, int) and 400 <= status < 500 and status not in (408, 409, 429):
        return ApplicationError(
            f"{provider} refused the request ({status}): {detail}",
            type=LLM_BAD_REQUEST,
            non_retryable=True,
        )
    # Anything else (5xx, malformed bodies, unexpected client errors) may pass on a retry.
    return ApplicationError(f"model call failed ({type(err).__name__}): {detail}", type="LlmError")


def retry_after(err: Exception) -> timedelta | None:
    headers: Any = getattr(err, "litellm_response_headers", None)
    response = getattr(err, "response", None)
    if headers is None and response is not None:
        headers = getattr(response, "headers", None)
    if not headers:
        return None
    value = headers.get("retry-after") or headers.get("Retry-After")
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return min(timedelta(seconds=max(seconds, 0)), MAX_RETRY_AFTER)


def _status(err: Exception) -> Any:
    return getattr(err, "status_code", None) or "error"


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
