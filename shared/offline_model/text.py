"""Words of a request, and the fields of chat messages whether they are dicts or objects."""

from __future__ import annotations

import re
from typing import Any

STOP_WORDS = frozenset(
    """
    a about after all also am an and any are as at be been before being but by can could did do
    does doing e eg for from g had has have having he her here hers him his how i if in into is it
    its itself just let me mine more most my myself no not now of off on once only or other our ours
    out over own please s same she should so some such than that the their theirs them then there
    these they this those through to too under until up very was we were what whats when where which
    while who whom why will with would you your yours t d ll m re ve thanks thank hi hello hey tell
    give show get list fetch return returns display find look lookup check see read want need like
    know current currently latest
    """.split()
)
WORD = re.compile(r"[a-z0-9]+")
_CLAUSE_SPLIT = re.compile(
    r"\s*(?:;|,(?!\d{3}(?!\d))|\band\b|\bthen\b|\balso\b|[?!](?=\s|$)|\.(?=\s))\s*",
    re.IGNORECASE,
)


def words(text: str) -> list[str]:
    """Lower-case word tokens, stop words, single letters and bare numbers removed."""
    found = WORD.findall(text.lower())
    return [w for w in found if len(w) > 1 and not w.isdigit() and w not in STOP_WORDS]


def similar(a: str, b: str) -> bool:
    """Equal, or the same word stem (price/prices, track/tracked, compute/computer)."""
    if a == b or len(a) < 4 or len(b) < 4:
        return a == b
    shortest = min(len(a), len(b))
    common = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), shortest)
    return common >= max(4, shortest - 2)


def split_clauses(text: str) -> list[str]:
    """ "A, and B; then C" -> [A, B, C]; thousands separators ("10,000") are not split."""
    return [c.strip(" .") for c in _CLAUSE_SPLIT.split(text) if c and c.strip(" .")]


def get(obj: Any, key: str) -> Any:
    """A field of a message or tool call, whether it is a dict or a LiteLLM/pydantic object."""
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def message_text(content: Any) -> str:
    """The text of an OpenAI message content: a string or a list of content parts."""
    if isinstance(content, list):
        parts = [p if isinstance(p, str) else get(p, "text") for p in content]
        return " ".join(p for p in parts if isinstance(p, str))
    return "" if content is None else content if isinstance(content, str) else str(content)
