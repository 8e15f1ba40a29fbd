"""HTTP helpers for tools that call upstream APIs.

Transient upstream failures (timeouts, connection errors, 429, 5xx) are raised as retryable
ToolErrors so the tool workflow's retry policy handles them; everything else is final.
"""

from __future__ import annotations

from typing import Any

import httpx

from shared.tools import ToolError

TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


async def request_json(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    upstream: str,
    **kwargs: Any,
) -> Any:
    try:
        response = await client.request(method, url, **kwargs)
    except httpx.TimeoutException:
        raise ToolError(f"{upstream} did not answer in time", retryable=True) from None
    except httpx.TransportError as err:
        raise ToolError(f"{upstream} is unreachable: {err}", retryable=True) from None
    if response.status_code in TRANSIENT_STATUS:
        raise ToolError(f"{upstream} answered {response.status_code}; will retry", retryable=True)
    if response.status_code in (401, 403):
        raise ToolError(f"{upstream} rejected the credentials ({response.status_code})")
    if response.status_code >= 400:
        raise ToolError(
            f"{upstream} refused the request ({response.status_code}): {_detail(response)}"
        )
    try:
        return response.json()
    except ValueError:
        raise ToolError(f"{upstream} answered with a body that is not JSON") from None


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        messages = body.get("errorMessages") or body.get("errors") or body.get("message")
        if messages:
            return str(messages)[:200]
    return str(body)[:200]
