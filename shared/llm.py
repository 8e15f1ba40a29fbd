"""LiteLLM errors, sorted into what Temporal should retry and what it must not.

LiteLLM's own retries are off (`num_retries=0`): the activity's retry policy owns retries, and a
rate limit's Retry-After becomes the next retry delay.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch the cost map at import
# OpenAI and OpenAI-compatible providers through LiteLLM's own HTTP handler instead of the openai
# SDK, which re-walks every message and tool schema against its types on each call: a step with
# 100 messages went from ~55 to ~8 ms of CPU, with a byte-identical request body and the same
# errors (bench/README.md). Set EXPERIMENTAL_OPENAI_BASE_LLM_HTTP_HANDLER=False to opt out.
os.environ.setdefault("EXPERIMENTAL_OPENAI_BASE_LLM_HTTP_HANDLER", "True")

import litellm
import litellm.exceptions as litellm_errors
from temporalio.exceptions import ApplicationError

from shared.contract import AgentUsage
from shared.llm_names import (
    LLM_AUTH_ERROR,
    LLM_BAD_REQUEST,
    LLM_CONTEXT_WINDOW,
    LLM_UNREACHABLE,
    OFFLINE_MODEL,
    ModelChoice,
)
from shared.log import get_logger

log = get_logger(__name__)

# Otherwise LiteLLM prints provider lists to stdout whenever it prices a model it does not know.
litellm.suppress_debug_info = True
# LiteLLM logs every call at INFO through its own handler ("LiteLLM completion() model= ..."):
# a line per model step that our own "model answered" line already covers, and ~4% of the
# worker's CPU under load. Its warnings and errors still show.
for _name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
    logging.getLogger(_name).setLevel(logging.WARNING)

# `litellm` is re-exported: importing it through this module sets the variable above first.
__all__ = [
    "classify_llm_error",
    "connection_failure",
    "litellm",
    "litellm_errors",
    "retry_after",
]

MAX_RETRY_AFTER = timedelta(minutes=10)
# A provider that refuses connections or whose name does not resolve is a configuration problem
# far more often than an outage: retry briefly, then tell the user, instead of the long schedule
# that rate limits and 5xx keep (8 attempts, ~107 s).
UNREACHABLE_RETRY_DELAY = timedelta(seconds=2)
UNREACHABLE_GIVE_UP_AFTER = timedelta(seconds=10)


def classify_llm_error(err: Exception, *, trying_since: datetime | None = None) -> ApplicationError:
    """Map a LiteLLM exception onto an ApplicationError with the right retry behaviour.

    `trying_since` is when the step's first attempt was scheduled: an unreachable provider is
    given up on once UNREACHABLE_GIVE_UP_AFTER has passed since then.
    """
    if isinstance(err, ApplicationError):
        return err  # classified where it was raised (a model the deployment does not have)
    provider = getattr(err, "llm_provider", "") or "the model provider"
    detail = _short(getattr(err, "message", None) or str(err))
    unreachable = connection_failure(err)
    if unreachable is not None:
        elapsed = datetime.now(UTC) - trying_since if trying_since else timedelta(0)
        give_up = elapsed + UNREACHABLE_RETRY_DELAY >= UNREACHABLE_GIVE_UP_AFTER
        return ApplicationError(
            f"cannot reach {provider}: {unreachable}"
            + (
                f" (still failing after {elapsed.total_seconds():.0f} s). Check LLM_API_BASE "
                "and the network, or unset LLM_MODEL to use the offline model."
                if give_up
                else "; retrying"
            ),
            type=LLM_UNREACHABLE,
            non_retryable=give_up,
            next_retry_delay=None if give_up else UNREACHABLE_RETRY_DELAY,
        )
    if isinstance(err, litellm_errors.ContextWindowExceededError):
        return ApplicationError(
            f"the conversation no longer fits the model's context window: {detail}",
            type=LLM_CONTEXT_WINDOW,
            non_retryable=True,
        )
    if isinstance(err, litellm_errors.AuthenticationError | litellm_errors.PermissionDeniedError):
        return ApplicationError(
            f"{provider} rejected the credentials ({_status(err)}): check LLM_API_KEY or the "
            f"provider's key variable. {detail}",
            type=LLM_AUTH_ERROR,
            non_retryable=True,
        )
    if isinstance(err, litellm_errors.RateLimitError):
        delay = retry_after(err)
        return ApplicationError(
            f"{provider} is rate limiting requests; retrying"
            + (f" after {delay.total_seconds():.0f}s" if delay else ""),
            type="LlmRateLimited",
            next_retry_delay=delay,
        )
    if isinstance(
        err,
        litellm_errors.Timeout
        | litellm_errors.APIConnectionError
        | litellm_errors.InternalServerError
        | litellm_errors.ServiceUnavailableError
        | litellm_errors.BadGatewayError,
    ):
        return ApplicationError(
            f"{provider} is unavailable ({type(err).__name__}): {detail}", type="LlmUnavailable"
        )
    if isinstance(
        err,
        litellm_errors.BadRequestError
        | litellm_errors.NotFoundError
        | litellm_errors.UnprocessableEntityError,
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


def connection_failure(err: BaseException) -> str | None:
    """'connection refused' or 'host not found' when the error chain shows no connection was
    ever made; None for anything else (timeouts, resets and HTTP errors keep their retries)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        if isinstance(current, socket.gaierror) or type(current).__name__ in _DNS_ERRORS:
            return "host name not found"
        current = current.__cause__ or current.__context__
    return None


_DNS_ERRORS = {"ClientConnectorDNSError", "gaierror"}


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


def usage_of(response: Any, model: str | None) -> AgentUsage:
    """One model step's tokens, and its cost from LiteLLM's price map (or unpriced)."""
    usage = getattr(response, "usage", None)
    cost = price(response, model)
    return AgentUsage(
        prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        cost_usd=cost or 0.0,
        unpriced_steps=0 if cost is not None else 1,
        model_steps=1,
    )


def price(response: Any, model: str | None) -> float | None:
    """The reply's cost in USD from LiteLLM's price map, or None when no price is known.

    Unknown is not free: a model LiteLLM cannot price (local, fake, a name missing from the map)
    is None, and so is the offline model, whose zero price is registered only so LiteLLM's
    lookups answer for it. A price LiteLLM computed for the call itself (under the model asked
    for) comes first; then the map under the model asked for, then under the reply's own name.
    """
    names = {str(model or ""), str(getattr(response, "model", "") or "")}
    if any(name == OFFLINE_MODEL or name.startswith(_OFFLINE_PREFIX) for name in names):
        return None
    hidden = getattr(response, "_hidden_params", None)
    computed = hidden.get("response_cost") if isinstance(hidden, dict) else None
    if isinstance(computed, int | float) and not isinstance(computed, bool):
        return float(computed)
    for name in (model, None):
        try:
            if name:
                cost = litellm.completion_cost(completion_response=response, model=name)
            else:
                cost = litellm.completion_cost(completion_response=response)
        except Exception:  # not in the price map (or no usage to price): try the next name
            continue
        if cost is not None:
            return float(cost)
    return None


_OFFLINE_PREFIX = OFFLINE_MODEL.split("/", 1)[0] + "/"


# Errors that mean "this model cannot answer now", where the next model of a list may:
# an outage, a rate limit, or a prompt larger than this model's context window.
_FALLBACK_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (litellm_errors.ContextWindowExceededError, "context window exceeded"),
    (litellm_errors.RateLimitError, "rate limited"),
    (litellm_errors.Timeout, "timed out"),
    (litellm_errors.ServiceUnavailableError, "unavailable"),
    (litellm_errors.BadGatewayError, "unavailable"),
    (litellm_errors.InternalServerError, "failed (5xx)"),
    (litellm_errors.APIConnectionError, "unreachable"),
)


def fallback_reason(err: BaseException) -> str | None:
    """Why the next model of a list should be tried after `err`; None when it should not (bad
    credentials and refused requests would fail the same way on a retry of the list)."""
    if connection_failure(err) is not None:
        return "unreachable"
    for kind, reason in _FALLBACK_REASONS:
        if isinstance(err, kind):
            return reason
    status = getattr(err, "status_code", None)
    if isinstance(status, int) and (status >= 500 or status == 429):
        return f"failed ({status})"
    return None


CompletionT = TypeVar("CompletionT")


async def complete_with_fallback(
    models: Sequence[ModelChoice],
    complete: Callable[[ModelChoice, int], Awaitable[CompletionT]],
) -> tuple[CompletionT, ModelChoice, list[str]]:
    """Ask the models in order until one answers: the answer, the model that gave it, and one
    line per model passed over. The last model's error is raised as is, for the activity's retry
    policy: the next attempt starts again from the first model (it may be back)."""
    passed_over: list[str] = []
    for index, choice in enumerate(models):
        try:
            return await complete(choice, index), choice, passed_over
        except Exception as err:
            reason = fallback_reason(err)
            if reason is None or index == len(models) - 1:
                raise
            following = models[index + 1].model
            passed_over.append(f"model {choice.model} {reason}; fell back to {following}")
            log.warning("model failed; trying the next", model=choice.model, reason=reason)
    raise ValueError("no model to ask")


def provider_arguments(choice: ModelChoice) -> dict[str, Any]:
    """LiteLLM's api_base and api_key for a model of a list (the key read from its variable)."""
    arguments: dict[str, Any] = {}
    if choice.api_base:
        arguments["api_base"] = _expanded(choice.api_base)
    if choice.api_key_env:
        key = os.environ.get(choice.api_key_env)
        if key:
            arguments["api_key"] = key
    return arguments


def _expanded(text: str) -> str:
    """`${VAR}` in a model's address, from the worker's environment (set per deployment)."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ApplicationError(
                f"the model address names ${{{name}}}, which is not set in this worker",
                type=LLM_BAD_REQUEST,
                non_retryable=True,
            )
        return os.environ[name]

    return re.sub(r"\$\{([A-Z][A-Z0-9_]*)\}", value, text)
