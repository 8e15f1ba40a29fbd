"""Arguments for a tool, taken from the user's text and guided only by the tool's JSON schema.

Numbers go to numeric properties, addresses to address-formatted ones, arithmetic to properties
described as formulas, enum members and `pattern` matches to theirs, and to a required free-text
property the words after a colon ("in OPS: VPN drops every hour") or else a capitalised name
("in New York", "of MSFT"). A required property the text does not give gets an empty value of its
type: the tool's own validation then says what is missing.
"""

from __future__ import annotations

import ast
import ipaddress
import re
from collections.abc import Callable
from typing import Any

from shared.offline_model.schema import Property, Tool
from shared.offline_model.text import STOP_WORDS, WORD, similar

_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.]*\d)")
_IPV6 = re.compile(r"(?<![\w:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:%\w+)?(?![\w:])")
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:,\d{3})*(?:\.\d+)?(?![\w.]*\d)")
_EXPRESSION_SPAN = re.compile(r"[-+(]*[\d.]+(?:[\s\d.()]*[-+*/%^][\s\d.()*/+-]*)+")
_OPERATOR_AFTER_DIGIT = re.compile(r"\d\s*\)*\s*[-+*/%^]")
_OPERATORS = {"plus": "+", "minus": "-", "times": "*", "multiplied by": "*", "divided by": "/"}
_WORD_OPERATOR = re.compile(r"\b(plus|minus|times|multiplied by|divided by)\b", re.IGNORECASE)
_SIGN_OPERATOR = re.compile("(?<=[\\d)])\\s*[x\u00d7\u00f7]\\s*(?=[\\d(])")
_AFTER_COLON = re.compile(r":\s+(\S.*)$", re.DOTALL)
_RAW_TOKEN = re.compile(r"[^\s,;!?\"'()\[\]{}]+")
_EMPTY: dict[str, Any] = {"integer": 0, "number": 0, "boolean": False, "array": [], "object": {}}


def find_addresses(text: str, family: str = "any") -> list[str]:
    """The valid IP addresses in the text, in order; `family` is "4", "6" or "any"."""
    found = [] if family == "6" else [(m.start(), m.group()) for m in _IPV4.finditer(text)]
    found += [] if family == "4" else [(m.start(), m.group()) for m in _IPV6.finditer(text)]
    valid = []
    for _, candidate in sorted(found):
        try:
            ipaddress.ip_address(candidate.split("%")[0])
            valid.append(candidate)
        except ValueError:
            pass
    return valid


def _mask_addresses(text: str) -> str:
    for address in find_addresses(text):
        text = text.replace(address, " " * len(address))
    return text


def numbers(text: str) -> list[tuple[int, float | int]]:
    """(end offset, value) for each number in the text, IP addresses excluded."""
    found: list[tuple[int, float | int]] = []
    for match in _NUMBER.finditer(_mask_addresses(text)):
        raw = match.group().replace(",", "")
        found.append((match.end(), float(raw) if "." in raw else int(raw)))
    return found


def expression(text: str) -> str | None:
    """The longest arithmetic sub-expression of the text that has an operator, if any."""
    text = _WORD_OPERATOR.sub(lambda m: _OPERATORS[m.group(1).lower()], _mask_addresses(text))
    text = _SIGN_OPERATOR.sub(lambda m: " / " if "\u00f7" in m.group() else " * ", text)
    candidates = [_tidy_expression(m.group()) for m in _EXPRESSION_SPAN.finditer(text)]
    return max((c for c in candidates if c), key=len, default=None)


def _tidy_expression(candidate: str) -> str | None:
    candidate = " ".join(candidate.split()).rstrip("+-*/%^ .").lstrip("*/%^ ")
    # Drop parentheses that do not pair up at either end.
    while candidate.count("(") > candidate.count(")") and candidate.startswith("("):
        candidate = candidate[1:].lstrip()
    while candidate.count(")") > candidate.count("(") and candidate.endswith(")"):
        candidate = candidate[:-1].rstrip()
    try:
        ast.parse(candidate.replace("^", "**"), mode="eval")
    except SyntaxError:
        return None
    return candidate if _OPERATOR_AFTER_DIGIT.search(candidate) else None


def _named_value(text: str, usable: Callable[[str], bool]) -> str | None:
    """The first run of capitalised words, not counting the clause's first word ("Show ...").
    A word may be a path of them, as place names are in IANA zones ("America/New_York")."""
    run: list[str] = []
    for match in list(_RAW_TOKEN.finditer(text))[1:]:
        word = match.group().strip(".:")
        if (
            all(p[:1].isupper() and p.replace("_", "").isalpha() for p in word.split("/"))
            and word.lower() not in STOP_WORDS
            and usable(word)
        ):
            run.append(word)
        elif run:
            break
    return " ".join(run) or None


def _string_value(prop: Property, text: str, usable: Callable[[str], bool]) -> Any:
    enum = prop.first("enum")
    if isinstance(enum, list) and enum:
        hits = (
            v for v in enum if isinstance(v, str) and re.search(rf"\b{re.escape(v)}\b", text, re.I)
        )
        return next(hits, None)
    family = prop.address_family if "string" in prop.types else None
    if family is not None:
        return next((a for a in find_addresses(text, family) if usable(a)), None)
    if "string" not in prop.types:
        return None
    if prop.arithmetic:
        return expression(text)
    pattern = prop.first("pattern")
    if isinstance(pattern, str):
        try:
            matches = re.compile(pattern).search
        except re.error:
            return None
        tokens = (m.group().strip(".:") for m in _RAW_TOKEN.finditer(text))
        return next((w for w in tokens if usable(w) and matches(w)), None)
    # Free text we cannot tell apart from the request itself is left out unless required.
    if not prop.required:
        return None
    # "...: <prose>" is how people put a sentence of their own after the request's keywords.
    after = _AFTER_COLON.search(text)
    prose = after.group(1).strip(" .") if after else ""
    return prose if prose and usable(prose) else _named_value(text, usable)


def fill_arguments(tool: Tool, text: str) -> tuple[dict[str, Any], int]:
    """Arguments for `tool` taken from `text`, and how many required ones were really found."""
    args: dict[str, Any] = {}

    def usable(word: str) -> bool:  # not used yet, and not a word of the tool's own name
        taken = {str(v) for v in args.values()}
        return word not in taken and not any(similar(word.lower(), n) for n in tool.name_tokens)

    # A number right before a word like a property's name goes to it ("5 years"); the others
    # fill the remaining numeric properties in order, required ones first.
    found = numbers(text)
    numeric = [p for p in tool.properties if p.numeric]
    for prop in numeric:
        for end, value in found:
            following = WORD.match(text[end:].lower().lstrip())
            if following and any(similar(following.group(), w) for w in prop.name_words):
                args[prop.name] = value
                found.remove((end, value))
                break
    for prop in sorted(numeric, key=lambda p: not p.required):
        if prop.name not in args and found:
            args[prop.name] = found.pop(0)[1]

    for prop in tool.properties:
        value = args[prop.name] if prop.name in args else _string_value(prop, text, usable)
        if prop.integer_only and isinstance(value, float) and value.is_integer():
            value = int(value)
        if value is not None:
            args[prop.name] = value

    found_required = sum(1 for p in tool.properties if p.required and p.name in args)
    for prop in tool.properties:
        if prop.required and prop.name not in args:
            args[prop.name] = next((_EMPTY[t] for t in sorted(prop.types) if t in _EMPTY), "")
    return {p.name: args[p.name] for p in tool.properties if p.name in args}, found_required
