"""The offline router behind an OpenAI-compatible HTTP endpoint, measuring what it is sent.

LiteLLM talks to it over real HTTP (`openai/<name>` with `api_base`), so what it records is the
request as a provider would receive it: its bytes, and its tokens as LiteLLM counts them for an
OpenAI model (messages and tools). Unscripted requests are answered the way the built-in offline
model answers (`shared.offline_model.respond`), tools disclosed on demand included; replies carry
the counted prompt tokens, so a turn's usage adds up what was really sent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm  # after the environment above (see DESIGN.md)

from shared.offline_model import respond
from tests.support.fake_http import RecordedRequest, Reply
from tests.support.fake_llm import FakeModelServer, completion

# Whose tokenizer counts prompts: a current OpenAI model's (o200k), shipped with LiteLLM.
TOKENIZER_MODEL = "gpt-4o"


@dataclass(frozen=True)
class PromptSize:
    """One model request as the provider received it."""

    bytes: int
    tokens: int
    tool_names: list[str]

    @property
    def tools(self) -> int:
        return len(self.tool_names)


def prompt_size(request: RecordedRequest) -> PromptSize:
    body = request.json()
    tools = body.get("tools") or []
    tokens = litellm.token_counter(
        model=TOKENIZER_MODEL, messages=body["messages"], tools=tools or None
    )
    return PromptSize(
        bytes=len(request.body),
        tokens=int(tokens),
        tool_names=[tool["function"]["name"] for tool in tools],
    )


def offline_reply(request: RecordedRequest) -> Reply:
    """The offline router's answer to a chat request, as an OpenAI chat completion."""
    body: dict[str, Any] = request.json()
    answer = respond(body["messages"], body.get("tools"), body.get("tool_choice"))
    calls: list[tuple[str, dict[str, Any] | str]] = [
        (call["function"]["name"], call["function"]["arguments"]) for call in answer["tool_calls"]
    ]
    return completion(
        answer["content"],
        tool_calls=calls or None,
        prompt_tokens=prompt_size(request).tokens,
        completion_tokens=8,
    )


class OfflineRouterServer(FakeModelServer):
    """A fake model that answers like the offline model once its script (if any) is used up."""

    def _next_reply(self, request: RecordedRequest) -> Reply:
        with self._lock:
            if not self._script:
                self._script.append(offline_reply)
        return super()._next_reply(request)

    def prompt_sizes(self) -> list[PromptSize]:
        """Every chat request so far, in order."""
        return [prompt_size(r) for r in self.requests if r.path.endswith("/chat/completions")]
