"""An OpenAI-compatible fake model on 127.0.0.1: the only stand-in in the suite.

LiteLLM talks to it over real HTTP (`openai/<name>` with `api_base`). Tests script its replies
with the helpers below; each request is recorded, so a test can read what the model was sent.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from typing import Any

from tests.support.fake_http import FakeHttpServer, RecordedRequest, Reply

_ids = itertools.count(1)


def completion(
    content: str | None = None,
    tool_calls: list[tuple[str, dict[str, Any] | str]] | None = None,
    *,
    prompt_tokens: int = 20,
    completion_tokens: int = 5,
    stream_delay: float = 0.0,
    gate: threading.Event | None = None,
    gate_after_words: int = 1,
) -> Reply:
    """A 200 chat completion; `tool_calls` arguments may be a raw string (to send broken JSON).

    Asked with `"stream": true` (the model step streams by default), the same reply is sent as
    server-sent chunks, one word of the content per chunk, `stream_delay` seconds apart; with a
    `gate`, the first `gate_after_words` words are sent and the rest only once it is set."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = [
            {
                "id": f"call_{next(_ids)}",
                "type": "function",
                "function": {
                    "name": name,
                    "arguments": args if isinstance(args, str) else json.dumps(args),
                },
            }
            for name, args in tool_calls
        ]
    body = {
        "id": f"chatcmpl-{next(_ids)}",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "fake-model",
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if tool_calls else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    # The role chunk comes first, then a chunk per word.
    return Reply(200, body, chunk_delay=stream_delay, gate=gate, gate_after=1 + gate_after_words)


def words(content: str) -> list[str]:
    """How a streamed reply splits its content: one word per chunk, with its trailing space."""
    return re.findall(r"\s*\S+\s*", content) or ([content] if content else [])


def as_stream(reply: Reply) -> Reply:
    """The chat completion `reply` as OpenAI's streaming format: a role chunk, one chunk per word
    of the content, one per tool call, the finish reason, the usage, and `[DONE]`."""
    body = reply.body
    choice = body["choices"][0]
    message = choice["message"]
    head = {key: body[key] for key in ("id", "created", "model")}

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        data = head | {
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(data | extra)}\n\n".encode()

    pieces = [chunk({"role": "assistant", "content": ""})]
    pieces += [chunk({"content": word}) for word in words(message.get("content") or "")]
    for index, call in enumerate(message.get("tool_calls") or []):
        pieces.append(chunk({"tool_calls": [call | {"index": index}]}))
    pieces.append(chunk({}, choice["finish_reason"]))
    usage = head | {"object": "chat.completion.chunk", "choices": [], "usage": body["usage"]}
    pieces.append(f"data: {json.dumps(usage)}\n\n".encode())
    pieces.append(b"data: [DONE]\n\n")
    return Reply(
        200,
        chunks=tuple(pieces),
        delay=reply.delay,
        chunk_delay=reply.chunk_delay,
        headers=reply.headers,
        gate=reply.gate,
        gate_after=reply.gate_after,
    )


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply(
        status,
        {"error": {"message": message, "type": "fake_error", "code": str(status)}},
        headers=headers or {},
    )


class FakeModelServer(FakeHttpServer):
    def _next_reply(self, request: RecordedRequest) -> Reply:
        reply = super()._next_reply(request)
        if _streaming(request) and _is_completion(reply):
            return as_stream(reply)
        return reply

    def reset(self) -> None:
        """Forget the previous test's script and requests (the server is shared by the session)."""
        with self._lock:
            self._script.clear()
            self._requests.clear()

    def chat_requests(self) -> list[dict[str, Any]]:
        return [r.json() for r in self.requests if r.path.endswith("/chat/completions")]


def _streaming(request: RecordedRequest) -> bool:
    if not request.path.endswith("/chat/completions"):
        return False
    try:
        return bool(request.json().get("stream"))
    except (ValueError, AttributeError):
        return False


def _is_completion(reply: Reply) -> bool:
    body = reply.body
    return (
        reply.status == 200 and isinstance(body, dict) and body.get("object") == "chat.completion"
    )


def last_tool_messages(request: RecordedRequest) -> list[dict[str, Any]]:
    messages = request.json()["messages"]
    tail = []
    for message in reversed(messages):
        if message["role"] != "tool":
            break
        tail.append(message)
    return list(reversed(tail))
