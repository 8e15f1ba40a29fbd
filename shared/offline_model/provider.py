"""The offline model as a LiteLLM provider: `offline/...` models answer through `respond`."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Iterable
from typing import Any

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

# The environment above must be set before litellm is imported (see DESIGN.md).
import litellm
from litellm import ModelResponse
from litellm.llms.custom_llm import CustomLLM
from litellm.types.utils import Choices, GenericStreamingChunk, Message, Usage
from litellm.utils import custom_llm_setup

from shared.llm_names import OFFLINE_MODEL
from shared.offline_model.disclosure import (
    LOADER,
    MAX_NAMES,
    answered_by_loader,
    index_of,
)
from shared.offline_model.extraction import fill_arguments
from shared.offline_model.routing import route
from shared.offline_model.schema import tools_of
from shared.offline_model.summary import called_names, summarise, trailing_tool_messages
from shared.offline_model.text import get, message_text

OFFLINE_PROVIDER = OFFLINE_MODEL.split("/", 1)[0]
_RESPONSE_CREATED = 0  # a fixed timestamp: the response must not depend on the clock
_MODEL_INFO: dict[str, Any] = {
    "litellm_provider": OFFLINE_PROVIDER,
    "mode": "chat",
    "input_cost_per_token": 0.0,
    "output_cost_per_token": 0.0,
    "max_tokens": 100_000,
    "max_input_tokens": 1_000_000,
    "max_output_tokens": 100_000,
    "supports_function_calling": True,
    "supports_parallel_function_calling": True,
    "supports_tool_choice": True,
}


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def _answer(content: str) -> dict[str, Any]:
    return {"role": "assistant", "content": content, "tool_calls": []}


def respond(
    messages: list[Any], tools: Iterable[Any] | None, tool_choice: Any = None
) -> dict[str, Any]:
    """The model's answer as an OpenAI chat-completion message: role, content, tool_calls.

    After tool results it summarises them. Otherwise it routes the last user message to tools.
    `tool_choice` is honoured as providers do: "none" answers without tools, a named function is
    the only tool considered and is called even when no clause names it. With a loader of tools
    disclosed on demand (`disclosure`), it first loads the tools it picks from the loader's index,
    then, after the loader's answer, routes the request again.
    """
    specs = list(tools or [])
    available = tools_of(specs)
    index = index_of(specs)
    if index is not None:
        available = [t for t in available if t.name != LOADER]
    if messages and get(messages[-1], "role") == "tool":
        results = trailing_tool_messages(messages)
        if index is not None:
            called = called_names(messages)
            results = [m for m in results if not answered_by_loader(m, called)]
        if results:
            return _answer(summarise(messages, results))
        index = None  # the loader answered: its tools are among the full schemas now
    users = [m for m in messages if get(m, "role") == "user"]
    user_text = message_text(get(users[-1], "content")) if users else ""
    if tool_choice == "none":
        available, index = [], None
    forced = get(tool_choice, "function") if isinstance(tool_choice, dict) else None
    if forced is not None:
        available, index = [t for t in available if t.name == get(forced, "name")], None
    if index is not None:
        having = {t.name for t in available}
        missing = [name for name, _ in route(index, user_text) if name not in having]
        if missing:
            return _calls(messages, user_text, [(LOADER, {"names": missing[:MAX_NAMES]})])
    calls = route(available, user_text) if available else []
    if not calls and forced is not None and available:
        calls = [(available[0].name, fill_arguments(available[0], user_text)[0])]
    if not calls:
        names = ", ".join(t.name for t in available) or "none"
        more = f" (and {len(index)} more it can load)" if index else ""
        return _answer(
            "The offline model (a keyword router, not an LLM) found no tool for this request. "
            f"It can use these tools: {names}{more}."
        )
    return _calls(messages, user_text, calls)


def _calls(
    messages: list[Any], user_text: str, calls: list[tuple[str, dict[str, Any]]]
) -> dict[str, Any]:
    seed = _digest(str(len(messages)), user_text)
    tool_calls = []
    for number, (name, args) in enumerate(calls, start=1):
        arguments = json.dumps(args, separators=(",", ":"))
        identifier = f"offline-{number}-{_digest(seed, name, arguments)[:12]}"
        function = {"name": name, "arguments": arguments}
        tool_calls.append({"id": identifier, "type": "function", "function": function})
    return {"role": "assistant", "content": None, "tool_calls": tool_calls}


def _estimate_tokens(*values: Any) -> int:
    """About 4 tokens for 3 words, as for English text."""
    count = 0
    for value in values:
        if value is not None:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            count += len(text.split())
    return max(1, (count * 4 + 2) // 3)


def _model_response(
    model: str, messages: list[Any], optional_params: dict[str, Any]
) -> ModelResponse:
    tools = optional_params.get("tools")
    answer = respond(messages, tools, optional_params.get("tool_choice"))
    contents = [message_text(get(m, "content")) for m in messages]
    prompt = _estimate_tokens(tools, *contents, *(get(m, "tool_calls") for m in messages))
    completion = _estimate_tokens(
        answer["content"], *(call["function"] for call in answer["tool_calls"])
    )
    calls = answer["tool_calls"] or None
    response_id = _digest(json.dumps(contents), json.dumps(answer, sort_keys=True))[:24]
    return ModelResponse(
        id=f"chatcmpl-offline-{response_id}",
        created=_RESPONSE_CREATED,
        model=model,
        object="chat.completion",
        choices=[
            Choices(
                index=0,
                finish_reason="tool_calls" if calls else "stop",
                message=Message(content=answer["content"], role="assistant", tool_calls=calls),
            )
        ],
        usage=Usage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        ),
    )


class OfflineKeywordRouter(CustomLLM):
    """LiteLLM provider `offline`: routes requests by keywords, answers tool results plainly."""

    def completion(
        self, model: str, messages: list[Any], *args: Any, **kwargs: Any
    ) -> ModelResponse:
        # LiteLLM hands over the bare model name; the response carries the routable one.
        name = model if model.startswith(f"{OFFLINE_PROVIDER}/") else f"{OFFLINE_PROVIDER}/{model}"
        return _model_response(name, messages, kwargs.get("optional_params") or {})

    async def acompletion(
        self, model: str, messages: list[Any], *args: Any, **kwargs: Any
    ) -> ModelResponse:
        return self.completion(model, messages, **kwargs)

    async def astreaming(  # type: ignore[override]
        self, model: str, messages: list[Any], *args: Any, **kwargs: Any
    ) -> AsyncIterator[GenericStreamingChunk]:
        for chunk in _stream_chunks(self.completion(model, messages, **kwargs)):
            yield chunk


def _stream_chunks(response: ModelResponse) -> list[GenericStreamingChunk]:
    """The response as LiteLLM's generic stream: a word of text per chunk, then each tool call,
    then the finish reason with the token counts."""
    choice = response.choices[0]
    message = choice.message
    usage = response.usage
    words = re.findall(r"\s*\S+\s*", message.content or "")
    chunks: list[GenericStreamingChunk] = [
        {"text": word, "tool_use": None, "is_finished": False, "finish_reason": "", "usage": None}
        for word in words
    ]
    for index, call in enumerate(message.tool_calls or []):
        chunks.append(
            {
                "text": "",
                "tool_use": {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                    "index": index,
                },
                "is_finished": False,
                "finish_reason": "",
                "usage": None,
            }
        )
    chunks.append(
        {
            "text": "",
            "tool_use": None,
            "is_finished": True,
            "finish_reason": choice.finish_reason or "stop",
            "usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
            },
        }
    )
    return chunks


def register_offline_model() -> None:
    """Make the offline model a LiteLLM model. Idempotent; other providers are kept.

    Also registers the model's (zero) price, so `completion_cost` and `supports_function_calling`
    answer for it as for any catalogued model.
    """
    providers = litellm.custom_provider_map
    if not any(isinstance(e.get("custom_handler"), OfflineKeywordRouter) for e in providers):
        # LiteLLM uses the last entry of a provider: keep one, and the other providers.
        providers[:] = [e for e in providers if e.get("provider") != OFFLINE_PROVIDER]
        providers.append({"provider": OFFLINE_PROVIDER, "custom_handler": OfflineKeywordRouter()})
    # The provider must be known before the price is registered: LiteLLM resolves it on the way.
    custom_llm_setup()  # type: ignore[no-untyped-call]  # litellm leaves it unannotated
    if OFFLINE_MODEL not in litellm.model_cost:
        litellm_logger = logging.getLogger("LiteLLM")
        level = litellm_logger.level
        litellm_logger.setLevel(logging.ERROR)  # it warns that a custom model has no cache prices
        try:
            litellm.register_model({OFFLINE_MODEL: _MODEL_INFO})
        finally:
            litellm_logger.setLevel(level)
