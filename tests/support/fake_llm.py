"""An OpenAI-compatible fake model on 127.0.0.1: the only stand-in in the suite.

LiteLLM talks to it over real HTTP (`openai/<name>` with `api_base`). Tests script its replies
with the helpers below; each request is recorded, so a test can read what the model was sent.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from tests.support.fake_http import FakeHttpServer, RecordedRequest, Reply

_ids = itertools.count(1)


def completion(
    content: str | None = None,
    tool_calls: list[tuple[str, dict[str, Any] | str]] | None = None,
    *,
    prompt_tokens: int = 20,
    completion_tokens: int = 5,
) -> Reply:
    """A 200 chat completion; `tool_calls` arguments may be a raw string (to send broken JSON)."""
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
    return Reply(200, body)


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply(
        status,
        {"error": {"message": message, "type": "fake_error", "code": str(status)}},
        headers=headers or {},
    )


class FakeModelServer(FakeHttpServer):
    def reset(self) -> None:
        """Forget the previous test's script and requests (the server is shared by the session)."""
        with self._lock:
            self._script.clear()
            self._requests.clear()

    def chat_requests(self) -> list[dict[str, Any]]:
        return [r.json() for r in self.requests if r.path.endswith("/chat/completions")]


def last_tool_messages(request: RecordedRequest) -> list[dict[str, Any]]:
    messages = request.json()["messages"]
    tail = []
    for message in reversed(messages):
        if message["role"] != "tool":
            break
        tail.append(message)
    return list(reversed(tail))
