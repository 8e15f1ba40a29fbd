"""Tool-call arguments as a model writes them: JSON text, read with the limits every loop keeps.

A model's arguments reach workflow code, and from there payloads: text too long or nested too
deep would make a payload that cannot be encoded or decoded, and fail the workflow task on every
retry. Both the orchestrator's loop and a team agent's read them through here.
"""

from __future__ import annotations

import json
from typing import Any

MAX_ARGUMENT_DEPTH = 32


def nesting_depth(value: Any) -> int:
    """How deeply lists and objects nest in a JSON value (iteratively: deep input is the point)."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            deepest = max(deepest, depth)
            pending.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, depth)
            pending.extend((child, depth + 1) for child in item)
    return deepest


def read_arguments(text: str, max_chars: int) -> tuple[dict[str, Any] | None, str]:
    """The arguments object, or None and why it cannot be used."""
    if len(text or "") > max_chars:
        return None, f"arguments are {len(text)} characters; the limit is {max_chars}"
    try:
        args = json.loads(text or "{}")
    except json.JSONDecodeError as err:
        return None, f"arguments are not valid JSON ({err.msg} at position {err.pos})"
    except RecursionError:
        return None, f"arguments are nested more than {MAX_ARGUMENT_DEPTH} levels deep"
    if not isinstance(args, dict):
        return None, "arguments must be a JSON object"
    depth = nesting_depth(args)
    if depth > MAX_ARGUMENT_DEPTH:
        return None, f"arguments are nested {depth} levels deep; the limit is {MAX_ARGUMENT_DEPTH}"
    return args, ""
