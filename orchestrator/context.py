"""What the model sees: system prompt, a summary of older turns, recent turns, all within budget.

Runs inside the LLM activity. The store keeps the full transcript; this only decides the view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.models import ChatMessage, StoredMessage
from orchestrator.store import ConversationStore, Summary
from shared.llm import litellm

DEFAULT_CONTEXT_TOKENS = 8192
BUDGET_FRACTION = 0.75  # leave room for the tools' schemas and the reply
SUMMARY_PROMPT = (
    "Summarise this conversation so far for your own later use: the user's goals, facts and "
    "numbers learned from tools, decisions made, and anything still open. Be concise."
)


@dataclass
class ContextWindow:
    model: str
    context_tokens: int | None
    keep_recent_turns: int
    max_tool_output_chars: int
    offline: bool
    # Also compact once this many turns sit unsummarised: bounds the per-step cost (LiteLLM's
    # request handling grows with the message count) even when the token budget is far away.
    compact_after_turns: int | None = None
    _budget: int | None = None

    def budget(self) -> int:
        if self._budget is None:
            self._budget = self._compute_budget()
        return self._budget

    def _compute_budget(self) -> int:
        window = self.context_tokens
        if window is None:
            try:
                info = litellm.get_model_info(self.model)
                window = int(info.get("max_input_tokens") or info.get("max_tokens") or 0) or None
            except Exception:  # models LiteLLM does not know: fake, local, offline
                window = None
        return int((window or DEFAULT_CONTEXT_TOKENS) * BUDGET_FRACTION)

    def count(self, messages: list[dict[str, Any]]) -> int:
        try:
            return int(litellm.token_counter(model=self.model, messages=messages))
        except Exception:
            return sum(len(str(m.get("content") or "")) for m in messages) // 4

    def view(self, message: ChatMessage) -> dict[str, Any]:
        """The message as the model gets it: long tool outputs cut, with a visible marker."""
        payload = to_openai_message(message)
        content = payload.get("content")
        if message.role == "tool" and isinstance(content, str):
            limit = self.max_tool_output_chars
            if len(content) > limit:
                payload["content"] = (
                    content[:limit] + f"\n…[truncated {len(content) - limit} characters]"
                )
        return payload


async def build_context(
    store: ConversationStore,
    conversation_id: str,
    window: ContextWindow,
    summarise: Any,
    *,
    force_compaction: bool = False,
) -> tuple[list[dict[str, Any]], bool]:
    """Return (messages for the model, whether older turns were compacted now)."""
    rows = await store.context_rows(conversation_id)
    system, summary, recent = rows.system, rows.summary, rows.recent
    messages = _assemble(window, system, summary, recent)
    user_turns = sum(1 for m in recent if m.message.role == "user")
    too_many_turns = (
        window.compact_after_turns is not None and user_turns > window.compact_after_turns
    )
    if not force_compaction and not too_many_turns and window.count(messages) <= window.budget():
        return messages, False

    keep_turns = 1 if force_compaction else window.keep_recent_turns
    cut = _cut_index(recent, keep_turns)
    if cut == 0:
        return messages, False  # nothing older to fold away; the provider decides
    older, kept = recent[:cut], recent[cut:]
    text = await summarise(
        [window.view(m.message) for m in older], summary.text if summary else None
    )
    new_summary = Summary(upto_seq=older[-1].seq, text=text)
    await store.put_summary(conversation_id, new_summary)
    return _assemble(window, system, new_summary, kept), True


def _assemble(
    window: ContextWindow,
    system: list[StoredMessage],
    summary: Summary | None,
    recent: list[StoredMessage],
) -> list[dict[str, Any]]:
    messages = [window.view(m.message) for m in system if m.message.role == "system"]
    if summary is not None:
        messages.append(
            {"role": "system", "content": f"Summary of the earlier conversation:\n{summary.text}"}
        )
    messages.extend(window.view(m.message) for m in recent if m.message.role != "system")
    return messages


def _cut_index(recent: list[StoredMessage], keep_turns: int) -> int:
    """Index of the first message to keep: the start of the last `keep_turns` user turns.

    Cutting at a user message keeps every tool result next to the call that asked for it.
    """
    user_positions = [i for i, m in enumerate(recent) if m.message.role == "user"]
    if len(user_positions) <= keep_turns:
        return 0
    return user_positions[-keep_turns]


def to_openai_message(message: ChatMessage) -> dict[str, Any]:
    payload: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        payload["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        payload["tool_call_id"] = message.tool_call_id
    if message.name is not None and message.role == "tool":
        payload["name"] = message.name
    return payload


def extractive_summary(messages: list[dict[str, Any]], previous: str | None) -> str:
    """The offline model's summary: the first words of each message, no model call."""
    lines = [previous] if previous else []
    for message in messages:
        content = str(message.get("content") or "")
        if message.get("tool_calls"):
            names = ", ".join(c["function"]["name"] for c in message["tool_calls"])
            content = f"called {names}"
        if content:
            lines.append(f"{message['role']}: {' '.join(content.split())[:160]}")
    return "\n".join(lines)[-6000:]
