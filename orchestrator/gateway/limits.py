"""Request size limit: a body over the limit is refused with 413 before any route reads it."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# A refused body up to this size is read (and dropped) before the 413 goes out: a client still
# sending it would otherwise see its connection reset instead of the answer. Larger ones are cut.
DRAIN_BYTES = 8 * 1024 * 1024


class BodyLimit:
    """Pure ASGI middleware: refuses a declared Content-Length over `max_bytes` at once, and reads
    an undeclared (chunked) body only up to `max_bytes` before refusing it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _refuse(send, 400, "invalid_request", "Content-Length is not a number")
                return
            if length > self.max_bytes:
                if length <= DRAIN_BYTES:
                    await _drain(receive)
                await _refuse(send, 413, "payload_too_large", self._too_large(length))
                return
            await self.app(scope, receive, send)
            return
        if scope.get("method") in {"GET", "HEAD", "OPTIONS", "DELETE"}:
            await self.app(scope, receive, send)
            return
        # No length declared: read the body here, up to the limit, and hand it on whole.
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body.extend(message.get("body", b""))
            if len(body) > self.max_bytes:
                if message.get("more_body", False):
                    await _drain(receive, len(body))
                await _refuse(send, 413, "payload_too_large", self._too_large(None))
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _too_large(self, length: int | None) -> str:
        size = f"is {length} bytes" if length is not None else "is larger than that"
        return (
            f"the request body {size}; the limit is {self.max_bytes} bytes "
            f"({self.max_bytes // 1024} KiB)"
        )


async def _drain(receive: Receive, already: int = 0) -> None:
    received = already
    while received <= DRAIN_BYTES:
        message = await receive()
        if message["type"] != "http.request":
            return
        received += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def _refuse(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
