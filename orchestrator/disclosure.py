"""Tools disclosed on demand: a large catalog reaches the model as an index, and the full schemas
of only the tools it asked for.

Workflow code: deterministic, no I/O. Below both thresholds (`disclose_tools_over_count`,
`disclose_tools_over_tokens`) the model gets every tool, exactly as before. Past either, its tool
list is `load_tools`, whose description is a compact index of every tool (one line each:
`service/name: first sentence`), followed by the full schemas of the tools this conversation
loaded (`CarriedState.loaded_tools`, carried across continue-as-new). A `load_tools` call is
answered in the workflow (dispatch.ToolDispatcher.resolve), with no Temporal command: the names
join the loaded set, and the next model step carries their schemas (a new list, so a new digest,
sent once like any other list). A loaded tool is called like any other.

`load_tools` is reserved: a team tool of that name is always given to the model qualified by its
service (`<service>__load_tools`, dispatch.build_routes), disclosure on or off, so it never hides
behind the meta-tool and its name does not change when the catalog crosses a threshold.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from orchestrator.loop_settings import LoopSettings
from orchestrator.models import CarriedState, ToolCallRecord, ToolRoute
from orchestrator.tools import LOCAL_SERVICE, openai_tool

LOAD_TOOLS = "load_tools"
MAX_NAMES_PER_LOAD = 20
SUMMARY_CHARS = 80
RECORDED_NAME_CHARS = 200  # a name as the turn's record keeps it
# The size estimate: about 4 characters of JSON per token, as for English text.
CHARS_PER_TOKEN = 4
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")

LOAD_TOOLS_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "names": {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 1,
            "maxItems": MAX_NAMES_PER_LOAD,
            "description": "Tool names as the index lists them (after the slash).",
        }
    },
    "required": ["names"],
    "additionalProperties": False,
}


def model_tools(routes: dict[str, ToolRoute]) -> list[dict[str, Any]]:
    """The routes as OpenAI tool definitions; a qualified name says which service it is."""
    return [
        openai_tool(
            route.model_name,
            route.spec.description
            if route.model_name == route.spec.name
            else f"[{route.spec.service}] {route.spec.description}",
            route.spec.parameters,
        )
        for route in routes.values()
    ]


def catalog_digest(tools: list[dict[str, Any]]) -> str:
    """The tool list's identity: model steps name the list by it instead of carrying it."""
    canonical = json.dumps(tools, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def estimated_tokens(tools: list[dict[str, Any]]) -> int:
    """The tool list's size in tokens, roughly: its compact JSON's characters / 4."""
    text = json.dumps(tools, separators=(",", ":"), ensure_ascii=False)
    return len(text) // CHARS_PER_TOKEN


def disclosure_needed(settings: LoopSettings, tools: list[dict[str, Any]]) -> bool:
    """Whether `tools` (every tool's full schema) is past either threshold; 0 is never."""
    count, tokens = settings.disclose_tools_over_count, settings.disclose_tools_over_tokens
    if count and len(tools) > count:
        return True
    return bool(tokens) and estimated_tokens(tools) > tokens


def disclosure_on(settings: LoopSettings, routes: dict[str, ToolRoute]) -> bool:
    return disclosure_needed(settings, model_tools(routes))


def visible_tools(settings: LoopSettings, state: CarriedState) -> list[dict[str, Any]]:
    """The tool list the model gets: every tool, or `load_tools` and the loaded tools."""
    every = model_tools(state.routes)
    if not disclosure_needed(settings, every):
        return every
    loaded = set(state.loaded_tools)
    shown = [tool for tool, name in zip(every, state.routes, strict=True) if name in loaded]
    return [load_tools_tool(state.routes), *shown]


def summary(description: str) -> str:
    """A description's first sentence, cut to SUMMARY_CHARS."""
    lines = description.strip().splitlines()
    first = _SENTENCE_END.split(lines[0] if lines else "", maxsplit=1)[0].strip()
    return first if len(first) <= SUMMARY_CHARS else first[: SUMMARY_CHARS - 1].rstrip() + "…"


def index_line(route: ToolRoute) -> str:
    return f"{route.spec.service}/{route.model_name}: {summary(route.spec.description)}"


def load_tools_tool(routes: dict[str, ToolRoute]) -> dict[str, Any]:
    """The meta-tool: its description is the index. The index lists every tool, loaded or not, so
    it stays the same from step to step (a stable prefix for providers that cache prompts)."""
    description = (
        f"{len(routes)} tools are available, too many to describe here. Each line below is one "
        "(service/name: what it does). Call load_tools with the names you need, at most "
        f"{MAX_NAMES_PER_LOAD} at once: their full descriptions and parameters are in your tool "
        "list from your next step, and they stay loaded. Then call them as usual.\n"
        + "\n".join(index_line(route) for route in routes.values())
    )
    return openai_tool(LOAD_TOOLS, description, LOAD_TOOLS_PARAMETERS)


@dataclass(frozen=True)
class LoadResult:
    """What a `load_tools` call did, as the model reads it."""

    requested: list[str] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # unloaded to stay within the bound
    problem: str = ""  # the call's arguments were unusable

    @property
    def ok(self) -> bool:
        return bool(self.loaded) and not self.problem

    @property
    def message(self) -> str:
        if self.problem:
            return self.problem
        parts = []
        if self.loaded:
            parts.append(
                f"Loaded {', '.join(self.loaded)}: their full schemas are in your tool list from "
                "your next step; call them as usual."
            )
        if self.unknown:
            parts.append(
                f"Unknown tool names: {', '.join(self.unknown)}. Use the names exactly as the "
                "index of load_tools lists them."
            )
        if self.dropped:
            parts.append(f"No longer loaded (the oldest): {', '.join(self.dropped)}.")
        return " ".join(parts)

    def record(self) -> ToolCallRecord:
        """The call as the turn's record keeps it."""
        names = [name[:RECORDED_NAME_CHARS] for name in self.requested]
        return ToolCallRecord(
            name=LOAD_TOOLS,
            service=LOCAL_SERVICE,
            args={"names": names},
            ok=self.ok,
            result=self.message,
        )

    def content(self) -> dict[str, Any]:
        """The tool message's content: an error when nothing was loaded."""
        if self.ok:
            return {"loaded": self.loaded, "unknown": self.unknown, "message": self.message}
        kind = "bad_request" if self.problem else "not_found"
        return {"error": kind, "message": self.message, "unknown": self.unknown}


def load(
    settings: LoopSettings, state: CarriedState, args: dict[str, Any] | None, problem: str = ""
) -> LoadResult:
    """Add the named tools to the conversation's loaded set (the most recent last, the oldest
    dropped past `max_loaded_tools`). `args` is None when they were unusable, for `problem`."""
    if args is None:
        return LoadResult(problem=problem)
    names = args.get("names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return LoadResult(problem='arguments must be {"names": [tool names]}')
    if len(names) > MAX_NAMES_PER_LOAD:
        return LoadResult(
            requested=names[:MAX_NAMES_PER_LOAD],
            problem=f"{len(names)} names; at most {MAX_NAMES_PER_LOAD} per call, load the rest next",
        )
    known: list[str] = []
    unknown: list[str] = []
    for given in names:
        name = route_name(state.routes, given)
        if name is None:
            unknown.append(given)
        elif name not in known:
            known.append(name)
    before = list(state.loaded_tools)
    for name in known:
        remember(settings, state, name)
    # Names loaded and dropped again by this same call count as dropped too.
    dropped = [name for name in [*before, *known] if name not in state.loaded_tools]
    loaded = [name for name in known if name in state.loaded_tools]
    return LoadResult(requested=names, loaded=loaded, unknown=unknown, dropped=dropped)


def remember(settings: LoopSettings, state: CarriedState, name: str) -> None:
    """Mark a tool loaded (again: it becomes the most recent)."""
    if name in state.loaded_tools:
        state.loaded_tools.remove(name)
    state.loaded_tools.append(name)
    del state.loaded_tools[: max(0, len(state.loaded_tools) - settings.max_loaded_tools)]


def route_name(routes: dict[str, ToolRoute], given: str) -> str | None:
    """The model-facing name `given` means: as the index shows it (`service/name`) or bare."""
    name = given.strip()
    if name in routes:
        return name
    service, slash, bare = name.partition("/")
    if not slash:
        return None
    # A name two teams share is routed qualified (`netops__inspect_vlan`).
    for candidate in (bare, f"{service}__{bare}"):
        route = routes.get(candidate)
        if route is not None and route.spec.service == service:
            return candidate
    return None
