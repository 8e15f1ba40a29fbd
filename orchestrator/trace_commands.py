"""`agent trace CONVERSATION [TURN]`: where a turn's time went, from the spans file.

`make up` has every process (workers and the CLI) append its spans to `.run/traces.jsonl`
(`TELEMETRY_TRACES_FILE`). A turn is one trace: the client's update, the turn, each model step,
each tool call over Nexus, the team's handler, tool workflow and activity, and the tool's HTTP
call. Deployed stacks send the same spans over OTLP to Jaeger or Tempo instead.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel, ValidationError
from rich.markup import escape
from rich.tree import Tree

from orchestrator.cli_support import fail
from orchestrator.render import out
from shared.config import ConfigError, load_settings
from shared.telemetry import LOCAL_TRACES_FILE, TelemetrySettings

TURN_SPAN = "agent turn"
# Spans whose parent was not exported (a workflow run's own span ends only with the run).
ORPHANS = "(under the conversation's run)"


class SpanRecord(BaseModel):
    trace_id: str
    span_id: str
    parent_id: str | None = None
    name: str
    service: str = ""
    start_ns: int
    end_ns: int
    status: str = "UNSET"
    attributes: dict[str, Any] = {}

    @property
    def milliseconds(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


@dataclass
class TurnTrace:
    trace_id: str
    turn: int | None
    spans: list[SpanRecord]
    children: dict[str | None, list[SpanRecord]] = field(default_factory=dict)

    @property
    def start_ns(self) -> int:
        return min(s.start_ns for s in self.spans)

    @property
    def end_ns(self) -> int:
        return max(s.end_ns for s in self.spans)


def traces_file() -> Path:
    settings = load_settings(TelemetrySettings)
    return settings.telemetry_traces_file or LOCAL_TRACES_FILE


def read_spans(path: Path) -> list[SpanRecord]:
    """Every span in the file; a torn or foreign line is skipped, not fatal."""
    if not path.is_file():
        raise FileNotFoundError(path)
    spans = []
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            try:
                spans.append(SpanRecord.model_validate_json(line))
            except ValidationError:
                continue
    return spans


def conversation_traces(spans: list[SpanRecord], conversation_id: str) -> list[TurnTrace]:
    """The traces that touch the conversation, oldest first, each with its turn number."""
    mine = {
        s.trace_id
        for s in spans
        if conversation_id
        in (s.attributes.get("temporalWorkflowID"), s.attributes.get("conversation.id"))
    }
    by_trace: dict[str, list[SpanRecord]] = defaultdict(list)
    seen: set[tuple[str, str]] = set()
    for span in spans:
        if span.trace_id in mine and (span.trace_id, span.span_id) not in seen:
            seen.add((span.trace_id, span.span_id))
            by_trace[span.trace_id].append(span)
    traces = []
    for trace_id, members in by_trace.items():
        turns = [s.attributes.get("agent.turn") for s in members if s.name == TURN_SPAN]
        turn = turns[0] if turns and isinstance(turns[0], int) else None
        traces.append(TurnTrace(trace_id, turn, sorted(members, key=lambda s: s.start_ns)))
    traces.sort(key=lambda t: t.start_ns)
    for trace in traces:
        ids = {s.span_id for s in trace.spans}
        for span in trace.spans:
            parent = span.parent_id if span.parent_id in ids else None
            if span.parent_id is not None and parent is None:
                parent = ORPHANS
            trace.children.setdefault(parent, []).append(span)
    return traces


def select_turn(traces: list[TurnTrace], turn: int | None) -> TurnTrace:
    turns = [t for t in traces if t.turn is not None]
    if turn is None:
        return turns[-1] if turns else traces[-1]
    for trace in turns:
        if trace.turn == turn:
            return trace
    known = ", ".join(str(t.turn) for t in turns) or "none"
    raise LookupError(f"no trace of turn {turn} (turns traced: {known})")


def render_tree(trace: TurnTrace) -> Tree:
    start = trace.start_ns
    total = (trace.end_ns - start) / 1e6
    label = f"turn {trace.turn}" if trace.turn is not None else "trace"
    tree = Tree(f"[bold]{label}[/bold]  {total:.1f} ms  [dim]trace {trace.trace_id}[/dim]")

    def add(node: Tree, parent: str | None) -> None:
        for span in trace.children.get(parent, []):
            offset = (span.start_ns - start) / 1e6
            failed = " [red]error[/red]" if span.status == "ERROR" else ""
            child = node.add(
                f"{escape(span.name)}  [cyan]{span.milliseconds:.1f} ms[/cyan]"
                f"  [dim]+{offset:.1f} ms · {escape(span.service)}{_detail(span)}[/dim]{failed}"
            )
            add(child, span.span_id)

    add(tree, None)
    orphans = trace.children.get(ORPHANS)
    if orphans:
        branch = tree.add(f"[dim]{ORPHANS}[/dim]")
        for span in orphans:
            offset = (span.start_ns - start) / 1e6
            node = branch.add(
                f"{escape(span.name)}  [cyan]{span.milliseconds:.1f} ms[/cyan]  [dim]+{offset:.1f} ms[/dim]"
            )
            add(node, span.span_id)
    return tree


def _detail(span: SpanRecord) -> str:
    """The few attributes that say what a span did."""
    attributes = span.attributes
    parts = []
    if "gen_ai.usage.input_tokens" in attributes:
        parts.append(
            f"{attributes['gen_ai.usage.input_tokens']}+"
            f"{attributes.get('gen_ai.usage.output_tokens', 0)} tokens"
        )
        cost = attributes.get("agent.cost.usd")
        if attributes.get("agent.cost.priced") is False:
            parts.append("unpriced")
        elif isinstance(cost, int | float):
            parts.append(f"${cost:.6f}")
    for key in ("agent.tool.outcome", "http.response.status_code", "http.status_code"):
        if key in attributes:
            parts.append(f"{key.rsplit('.', 1)[-1]} {attributes[key]}")
    return (" · " + ", ".join(parts)) if parts else ""


def _as_json(trace: TurnTrace) -> dict[str, Any]:
    return {
        "trace_id": trace.trace_id,
        "turn": trace.turn,
        "duration_ms": round((trace.end_ns - trace.start_ns) / 1e6, 3),
        "spans": [s.model_dump() | {"duration_ms": round(s.milliseconds, 3)} for s in trace.spans],
    }


def trace_command(
    conversation_id: Annotated[str, typer.Argument(help="Conversation id.")],
    turn: Annotated[
        int | None, typer.Argument(min=1, help="Turn number (default: the latest traced).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a tree.")] = False,
) -> None:
    """Show where a turn's time went: the span tree from CLI to the tool's HTTP call."""
    try:
        path = traces_file()
        spans = read_spans(path)
    except ConfigError as error:
        fail(str(error))
    except FileNotFoundError:
        fail(
            f"no spans file at {path}: `make up` writes one (TELEMETRY_TRACES_FILE); a deployed "
            "stack sends its spans over OTLP to Jaeger or Tempo instead"
        )
    except OSError as error:
        fail(f"cannot read the spans file {path}: {error.strerror or error}")
    traces = conversation_traces(spans, conversation_id)
    if not traces:
        fail(f"no spans of conversation {conversation_id} in {path}")
    try:
        selected = select_turn(traces, turn)
    except LookupError as error:
        fail(str(error))
    if as_json:
        out.print_json(json.dumps(_as_json(selected)))
        return
    out.print(render_tree(selected))


def register(app: typer.Typer) -> None:
    app.command("trace")(trace_command)
