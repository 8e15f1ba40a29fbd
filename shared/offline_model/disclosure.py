"""Tools disclosed on demand, as the offline model meets them.

A platform with too many tools to describe at once offers a loader instead: a tool named
`load_tools` whose description is an index, one line per tool (`service/name: summary`), and
which takes `{"names": [...]}`. Tools already loaded come with their full schemas beside it. The
model routes a request against the index entries (name and summary, like any tool's words), asks
the loader for the picked tools it has no schema of, and, once the loader has answered, routes
the request again against the full schemas.
"""

from __future__ import annotations

import re
from typing import Any

from shared.offline_model.schema import Tool
from shared.offline_model.text import get

# The platform's loader (orchestrator.disclosure.LOAD_TOOLS; a test checks they agree).
LOADER = "load_tools"
MAX_NAMES = 20
_INDEX_LINE = re.compile(r"^[A-Za-z0-9_.-]+/([A-Za-z][A-Za-z0-9_]*):[ \t]*(.*)$", re.MULTILINE)


def index_of(specs: Any) -> list[Tool] | None:
    """The loader's index as tools without arguments (name and summary), or None when the
    request has no loader with an index."""
    for spec in specs or []:
        function = get(spec, "function")
        if function is None or get(function, "name") != LOADER:
            continue
        entries = _INDEX_LINE.findall(str(get(function, "description") or ""))
        tools = [
            Tool.from_openai({"type": "function", "function": {"name": name, "description": text}})
            for name, text in entries
        ]
        found = [tool for tool in tools if tool is not None]
        if found:
            return found
    return None


def answered_by_loader(message: Any, names: dict[str, str]) -> bool:
    """Whether a tool message is the loader's answer."""
    name = get(message, "name") or names.get(get(message, "tool_call_id") or "")
    return name == LOADER
