"""The final answer after tool results: each result rendered from its JSON, whatever its shape.

One line per result: the tool's name, then its short fields as "key value" pairs. A field whose
value is prose (a sentence: a caveat, an explanation) gets its own indented line, so what a tool
says about its result reaches the user as the tool wrote it. No field name is special.
"""

from __future__ import annotations

import json
import re
from typing import Any

from shared.offline_model.text import get, message_text

_MAX_LINE = 300
_LIST_ITEMS = 5
_PROSE_WORDS = 4  # a string with this many words is prose, not a value
_WORD = re.compile(r"[^\W\d_]{2,}")


def _is_prose(value: Any) -> bool:
    return isinstance(value, str) and len(_WORD.findall(value)) >= _PROSE_WORDS


def _label(key: Any) -> str:
    return str(key).replace("_", " ")


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == {}


def _render(value: Any, in_list: bool = False) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "none"
    if isinstance(value, list):
        shown = [_render(item, in_list=True) for item in value[:_LIST_ITEMS]]
        more = f" (+{len(value) - _LIST_ITEMS} more)" if len(value) > _LIST_ITEMS else ""
        return "[" + ", ".join(shown) + "]" + more if shown else "none"
    if isinstance(value, dict):
        if in_list:  # an item of a list: its first value is what identifies it
            scalars = (v for v in value.values() if isinstance(v, (str, int, float)))
            first = next((v for v in scalars if v != "" and not isinstance(v, bool)), None)
            if first is not None:
                return str(first)
        fields = [f"{_label(k)} {_render(v)}" for k, v in value.items() if not _empty(v)]
        return "(" + ", ".join(fields) + ")"
    return str(value)


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_LINE else text[: _MAX_LINE - 3] + "..."


def summarise_result(name: str, content: str) -> tuple[str, list[str]]:
    """The result's line, and the prose lines its fields carry."""
    try:
        data: Any = json.loads(content)
    except (ValueError, TypeError):
        data = content
    if not isinstance(data, dict):
        return _shorten(f"{name}: {_render(data)}"), []
    fields, prose = [], []
    for key, value in data.items():
        if _is_prose(value):
            prose.append(_shorten(f"{_label(key)}: {value}"))
        elif not _empty(value):
            fields.append(f"{_label(key)} {_render(value)}")
    if not fields and prose:
        return _shorten(f"{name}: {prose[0]}"), prose[1:]
    return _shorten(f"{name}: {', '.join(fields) or 'done'}"), prose


def trailing_tool_messages(messages: list[Any]) -> list[Any]:
    """The tool results at the end of the conversation: those of the last round of calls."""
    trailing: list[Any] = []
    for message in reversed(messages):
        if get(message, "role") != "tool":
            break
        trailing.append(message)
    return trailing[::-1]


def called_names(messages: list[Any]) -> dict[str, str]:
    """The tool each call id of the conversation went to."""
    names: dict[str, str] = {}
    for message in messages:
        for call in get(message, "tool_calls") or []:
            identifier, called = get(call, "id"), get(get(call, "function"), "name")
            if isinstance(identifier, str) and isinstance(called, str):
                names[identifier] = called
    return names


def summarise(messages: list[Any], results: list[Any]) -> str:
    """One line per tool result, each followed by the prose it carries (said once)."""
    names = called_names(messages)
    lines: list[str] = []
    said: set[str] = set()
    for message in results:
        name = get(message, "name") or names.get(get(message, "tool_call_id") or "") or "tool"
        line, prose = summarise_result(str(name), message_text(get(message, "content")))
        lines.append(line)
        lines += [f"  {p}" for p in prose if p not in said]
        said.update(prose)
    return "\n".join(lines)
