"""Which tools fit a request: each clause of the text goes to the tool whose words match it best.

A tool's words are those of its name (strong), and of its description, service and argument
schemas (weak). A clause that names no tool carries arguments for the clause before it.
"""

from __future__ import annotations

import json
from typing import Any

from shared.offline_model.extraction import expression, fill_arguments
from shared.offline_model.schema import Tool
from shared.offline_model.text import similar, split_clauses, words

# A clause needs at least this score to pick a tool: one name-word hit, or arithmetic for a tool
# that takes a formula, or several description hits.
MIN_SCORE = 2.0
_NAME_HIT = 3.0
_KEYWORD_HIT = 1.0
_UNMATCHED_NAME_WORD = 0.5
_ARITHMETIC_BONUS = 4.0
_FILLED_BONUS = 1.0


def score(tool: Tool, clause: str) -> float:
    """How well `tool` fits `clause`: name and keyword hits, and the arguments it would get."""
    total = 0.0
    matched: set[str] = set()
    argument_words = {w for p in tool.properties for w in p.name_words}
    for token in dict.fromkeys(words(clause)):
        hits = [n for n in tool.name_tokens if similar(token, n)]
        matched.update(hits)
        if hits and not any(similar(token, w) for w in argument_words):
            total += _NAME_HIT
        elif hits or any(similar(token, k) for k in tool.keywords):
            # A word naming an argument ("in the ACME account") describes a value, not the intent.
            total += _KEYWORD_HIT
    total -= _UNMATCHED_NAME_WORD * len(set(tool.name_tokens) - matched)
    if any(p.arithmetic for p in tool.properties) and expression(clause):
        total += _ARITHMETIC_BONUS
    if total > 0:
        args, found_required = fill_arguments(tool, clause)
        guessed = sum(1 for p in tool.properties if p.required) - found_required
        total += _FILLED_BONUS * (len(args) - guessed)
    return total


def _best_tool(tools: list[Tool], clause: str) -> Tool | None:
    """The best-scoring tool; ties go to the shorter name, then to the first tool offered."""
    ranked = [(score(t, clause), -len(t.name_tokens), -i, t) for i, t in enumerate(tools)]
    best = max(ranked, key=lambda r: r[:3], default=None)
    return best[3] if best is not None and best[0] >= MIN_SCORE else None


def route(tools: list[Tool], text: str) -> list[tuple[str, dict[str, Any]]]:
    """(tool name, arguments) for each clause of the request that some tool matches."""
    chosen: list[tuple[Tool, str]] = []
    for clause in split_clauses(text):
        tool = _best_tool(tools, clause)
        if tool is not None:
            chosen.append((tool, clause))
        elif chosen:
            # "interest on 10000 at 7%, over 5 years": a clause naming no tool carries arguments.
            chosen[-1] = (chosen[-1][0], f"{chosen[-1][1]}, {clause}")
    calls: dict[str, tuple[str, dict[str, Any]]] = {}
    for tool, clause in chosen:  # the same tool with the same arguments twice is one call
        args, _ = fill_arguments(tool, clause)
        calls.setdefault(tool.name + json.dumps(args, sort_keys=True), (tool.name, args))
    return list(calls.values())
