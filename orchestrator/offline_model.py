"""A built-in offline "model": a deterministic keyword router exposed to LiteLLM as a provider.

    register_offline_model()
    await litellm.acompletion(model="offline/keyword-router", messages=..., tools=..., num_retries=0)

It is not an LLM. For a user message it splits the text into clauses, picks for each clause the
tool whose name and description best match it, and fills the arguments from the text, guided only
by the tool's JSON schema (patterns, formats, numeric types, property names). After tool results it
answers with a short readable summary of them. It never names a tool of ours: everything it knows
comes from the `tools` of the request. Same input, same output: no randomness, no clock.
"""

from __future__ import annotations

import ast
import hashlib
import ipaddress
import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

# The environment above must be set before litellm is imported (see DESIGN.md).
import litellm
from litellm import ModelResponse
from litellm.llms.custom_llm import CustomLLM
from litellm.utils import custom_llm_setup

from orchestrator.models import OFFLINE_MODEL

OFFLINE_PROVIDER = OFFLINE_MODEL.split("/", 1)[0]
_RESPONSE_CREATED = 0  # a fixed timestamp: the response must not depend on the clock

# A clause needs at least this score to pick a tool: one name-token hit (3), or an arithmetic
# expression for a tool that takes one (4), or several description hits.
MIN_SCORE = 2.0
_NAME_HIT = 3.0
_KEYWORD_HIT = 1.0
_UNMATCHED_NAME_TOKEN = 0.5
_EXPRESSION_BONUS = 4.0
_FILLED_BONUS = 1.0
_MAX_SUMMARY_CHARS = 300
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

_STOP_WORDS = frozenset(
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
# Verbs a tool name may start with that say nothing about what the tool is for.
_GENERIC_NAME_TOKENS = frozenset(
    {"get", "show", "list", "fetch", "read", "query", "lookup", "find", "do", "run"}
)
_PREPOSITIONS = frozenset({"in", "for", "of", "to", "on", "at", "about", "from", "near", "into"})
_EXPRESSION_NAMES = ("expression", "expr", "formula", "equation", "calculation")
_META_KEYS = frozenset({"source", "note", "conversation_id", "call_id"})

_WORD = re.compile(r"[a-z0-9]+")
_EXAMPLE = re.compile(r"\b(?:e\.g\.|for example|such as)[^.;)]*", re.IGNORECASE)
_CLAUSE_SPLIT = re.compile(
    r"\s*(?:;|,(?!\d{3}(?!\d))|\band\b|\bthen\b|\balso\b|[?!](?=\s|$)|\.(?=\s))\s*",
    re.IGNORECASE,
)
_RAW_TOKEN = re.compile(r"[^\s,;!?\"'()\[\]{}]+")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.]*\d)")
_IPV6 = re.compile(r"(?<![\w:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:%\w+)?(?![\w:])")
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:,\d{3})*(?:\.\d+)?(?![\w.]*\d)")
_EXPRESSION_SPAN = re.compile(r"[-+(]*[\d.]+(?:[\s\d.()]*[-+*/%^][\s\d.()*/+-]*)+")
_WORD_OPERATORS = (
    (re.compile(r"\bplus\b", re.IGNORECASE), "+"),
    (re.compile(r"\bminus\b", re.IGNORECASE), "-"),
    (re.compile(r"\b(?:times|multiplied by)\b", re.IGNORECASE), "*"),
    (re.compile(r"\bdivided by\b", re.IGNORECASE), "/"),
    (re.compile(r"(?<=\d)\s*[x\u00d7]\s*(?=[\d(])"), " * "),
    (re.compile("\u00f7"), "/"),
)


# ----------------------------------------------------------------------------------------------
# Text helpers


def _words(text: str) -> list[str]:
    """Lower-case word tokens, stop words, single letters and bare numbers removed."""
    return [
        w
        for w in _WORD.findall(text.lower())
        if len(w) > 1 and not w.isdigit() and w not in _STOP_WORDS
    ]


def _similar(a: str, b: str) -> bool:
    """Equal, or the same word stem (price/prices, track/tracked, calculate/calculator)."""
    if a == b:
        return True
    if len(a) < 4 or len(b) < 4:
        return False
    common = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        common += 1
    return common >= max(4, min(len(a), len(b)) - 2)


def _split_clauses(text: str) -> list[str]:
    return [c.strip(" .") for c in _CLAUSE_SPLIT.split(text) if c and c.strip(" .")]


def _message_text(content: Any) -> str:
    """The text of an OpenAI message content: a string or a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return " ".join(parts)
    return str(content)


def _get(obj: Any, key: str) -> Any:
    """A field of a message or tool call, whether it is a dict or a LiteLLM/pydantic object."""
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


# ----------------------------------------------------------------------------------------------
# Tools as the router sees them


@dataclass(frozen=True)
class _Property:
    name: str
    schema: dict[str, Any]
    required: bool

    def _variants(self) -> list[dict[str, Any]]:
        variants = [self.schema]
        for key in ("anyOf", "oneOf", "allOf"):
            variants += [v for v in self.schema.get(key, []) if isinstance(v, dict)]
        return variants

    def types(self) -> set[str]:
        found: set[str] = set()
        for variant in self._variants():
            kind = variant.get("type")
            if isinstance(kind, str):
                found.add(kind)
            elif isinstance(kind, list):
                found.update(k for k in kind if isinstance(k, str))
        return found - {"null"} or {"string"}

    def first(self, key: str) -> Any:
        for variant in self._variants():
            if key in variant:
                return variant[key]
        return None

    @property
    def numeric(self) -> bool:
        return bool(self.types() & {"number", "integer"})

    @property
    def integer_only(self) -> bool:
        return self.types() & {"number", "integer"} == {"integer"}

    @property
    def ip_format(self) -> str | None:
        fmt = self.first("format")
        if isinstance(fmt, str) and "ip" in fmt.lower():
            return fmt.lower()
        if self.name.lower() in {"ip", "ip_address", "ipaddress", "ip_addr"}:
            return "ipvanyaddress"
        return None

    @property
    def expression_like(self) -> bool:
        return "string" in self.types() and any(n in self.name.lower() for n in _EXPRESSION_NAMES)

    @property
    def name_words(self) -> list[str]:
        return [w for w in self.name.lower().split("_") if w]


@dataclass(frozen=True)
class _Tool:
    name: str
    description: str
    properties: tuple[_Property, ...]
    name_tokens: tuple[str, ...]  # the meaningful words of the tool's own name
    keywords: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_openai(cls, spec: Any) -> _Tool | None:
        function = _get(spec, "function") if _get(spec, "type") in (None, "function") else None
        if function is None:
            return None
        name = _get(function, "name")
        if not isinstance(name, str) or not name:
            return None
        description = _get(function, "description") or ""
        parameters = _get(function, "parameters") or {}
        properties_schema = parameters.get("properties", {}) if isinstance(parameters, dict) else {}
        required = set(parameters.get("required", [])) if isinstance(parameters, dict) else set()
        properties = tuple(
            _Property(prop, schema if isinstance(schema, dict) else {}, prop in required)
            for prop, schema in properties_schema.items()
        )
        # "it__get_ip": the part before "__" names the service, the rest is the tool.
        service, _, base = name.rpartition("__")
        name_tokens = tuple(
            w
            for w in base.lower().split("_")
            if w and not w.isdigit() and w not in _GENERIC_NAME_TOKENS and w not in _STOP_WORDS
        )
        keyword_text = [description, service.replace("_", " ")]
        for prop in properties:
            keyword_text.append(prop.name.replace("_", " "))
            for key in ("description", "title"):
                value = prop.first(key)
                if isinstance(value, str):
                    keyword_text.append(value)
        # Examples in descriptions ("e.g. Paris") are sample values, not what the tool is about.
        text = _EXAMPLE.sub(" ", " ".join(keyword_text)).replace("_", " ")
        keywords = frozenset(_words(text))
        return cls(
            name=name,
            description=str(description),
            properties=properties,
            name_tokens=name_tokens,
            keywords=keywords,
        )


# ----------------------------------------------------------------------------------------------
# Argument extraction


def _find_ips(text: str, fmt: str) -> list[str]:
    found: list[tuple[int, str]] = []
    if "6" not in fmt:
        found += [(m.start(), m.group()) for m in _IPV4.finditer(text)]
    if "4" not in fmt:
        found += [(m.start(), m.group()) for m in _IPV6.finditer(text)]
    valid = []
    for _, candidate in sorted(found):
        try:
            ipaddress.ip_address(candidate.split("%")[0])
        except ValueError:
            continue
        valid.append(candidate)
    return valid


def _mask_ips(text: str) -> str:
    for ip in _find_ips(text, "ipvanyaddress"):
        text = text.replace(ip, " " * len(ip))
    return text


def _numbers(text: str) -> list[tuple[int, int, float | int]]:
    """(start, end, value) for each number in the text, IP addresses excluded."""
    found = []
    for match in _NUMBER.finditer(_mask_ips(text)):
        raw = match.group().replace(",", "")
        value: float | int = float(raw) if "." in raw else int(raw)
        found.append((match.start(), match.end(), value))
    return found


def _expression(text: str) -> str | None:
    """The longest arithmetic sub-expression of the text, if it has an operator."""
    text = _mask_ips(text)
    for pattern, operator in _WORD_OPERATORS:
        text = pattern.sub(operator, text)
    best: str | None = None
    for match in _EXPRESSION_SPAN.finditer(text):
        candidate = _tidy_expression(match.group())
        if candidate and (best is None or len(candidate) > len(best)):
            best = candidate
    return best


def _tidy_expression(candidate: str) -> str | None:
    candidate = " ".join(candidate.split())
    candidate = candidate.rstrip("+-*/%^ .").lstrip("*/%^ ")
    # Drop parentheses that do not pair up at either end.
    while candidate.count("(") > candidate.count(")") and candidate.startswith("("):
        candidate = candidate[1:].lstrip()
    while candidate.count(")") > candidate.count("(") and candidate.endswith(")"):
        candidate = candidate[:-1].rstrip()
    if not re.search(r"\d\s*\)*\s*[-+*/%^]", candidate):
        return None
    try:
        ast.parse(candidate.replace("^", "**"), mode="eval")
    except SyntaxError:
        return None
    return candidate


def _raw_tokens(text: str) -> list[tuple[int, str]]:
    return [(m.start(), m.group().strip(".:")) for m in _RAW_TOKEN.finditer(text)]


def _named_value(text: str, taken: set[str], skip: Callable[[str], bool]) -> str | None:
    """A capitalised or upper-case word (or run of them) after a preposition, else anywhere."""
    tokens = _raw_tokens(text)

    def usable(word: str) -> bool:
        return (
            bool(word)
            and word[0].isupper()
            and word.lower() not in _STOP_WORDS
            and word not in taken
            and not skip(word)
        )

    for index, (_, word) in enumerate(tokens[:-1]):
        if word.lower() not in _PREPOSITIONS:
            continue
        run: list[str] = []
        for _, following in tokens[index + 1 :]:
            if not usable(following) or (run and following.isupper() != run[-1].isupper()):
                break
            run.append(following)
            if following.isupper():
                break
        if run:
            return " ".join(run)
    # No preposition: an upper-case word (a ticker, a key), then a capitalised one not first.
    for _, word in tokens:
        if len(word) > 1 and word.isupper() and word.isalpha() and usable(word):
            return word
    for _, word in tokens[1:]:
        if usable(word) and word.isalpha():
            return word
    return None


def _placeholder(prop: _Property) -> Any:
    """A best-effort value for a required property the text does not give: the service says why."""
    types = prop.types()
    if "integer" in types or "number" in types:
        return 0
    if "boolean" in types:
        return False
    if "array" in types:
        return []
    if "object" in types:
        return {}
    return ""


def _fill_arguments(tool: _Tool, text: str) -> tuple[dict[str, Any], int]:
    """Arguments for `tool` taken from `text`, and how many required ones were really found."""
    args: dict[str, Any] = {}
    taken: set[str] = set()
    name_words = set(tool.name_tokens)

    def is_name_word(word: str) -> bool:
        return any(_similar(word.lower(), n) for n in name_words)

    # Numbers: a number right before a word like a property's name goes to it ("5 years"), the
    # rest fill the remaining numeric properties in order (required ones first).
    numbers = _numbers(text)
    numeric = [p for p in tool.properties if p.numeric]
    used_numbers: set[int] = set()
    for prop in numeric:
        for index, (_, end, value) in enumerate(numbers):
            following = _WORD.findall(text[end : end + 24].lower())[:1]
            if index not in used_numbers and following:
                if any(_similar(following[0], w) for w in prop.name_words if len(w) > 2):
                    args[prop.name] = value
                    used_numbers.add(index)
                    break
    for prop in sorted(numeric, key=lambda p: not p.required):
        if prop.name in args:
            continue
        for index, (_, _, value) in enumerate(numbers):
            if index not in used_numbers:
                args[prop.name] = value
                used_numbers.add(index)
                break

    for prop in tool.properties:
        if prop.name in args:
            continue
        value = _string_value(prop, text, taken, is_name_word)
        if value is not None:
            args[prop.name] = value
            taken.add(str(value))

    for prop in tool.properties:
        if prop.name in args and prop.integer_only and isinstance(args[prop.name], float):
            number = args[prop.name]
            args[prop.name] = int(number) if number.is_integer() else number

    found_required = sum(1 for p in tool.properties if p.required and p.name in args)
    for prop in tool.properties:
        if prop.required and prop.name not in args:
            args[prop.name] = _placeholder(prop)
    ordered = {p.name: args[p.name] for p in tool.properties if p.name in args}
    return ordered, found_required


def _string_value(
    prop: _Property, text: str, taken: set[str], is_name_word: Callable[[str], bool]
) -> Any:
    types = prop.types()
    enum = prop.first("enum")
    if isinstance(enum, list) and enum:
        lowered = text.lower()
        hits = [
            v
            for v in enum
            if isinstance(v, str) and re.search(rf"\b{re.escape(v.lower())}\b", lowered)
        ]
        return hits[0] if hits else None
    if "string" not in types:
        return None
    ip_format = prop.ip_format
    if ip_format is not None:
        ips = [ip for ip in _find_ips(text, ip_format) if ip not in taken]
        return ips[0] if ips else None
    if prop.expression_like:
        return _expression(text)
    pattern = prop.first("pattern")
    if isinstance(pattern, str):
        try:
            compiled = re.compile(pattern)
        except re.error:
            compiled = None
        if compiled is not None:
            candidates = [
                word
                for _, word in _raw_tokens(text)
                if word not in taken and compiled.search(word) and not is_name_word(word)
            ]
            return candidates[0] if candidates else None
    if not prop.required:
        return None  # free text we cannot tell apart from the request itself: leave it out
    return _named_value(text, taken, is_name_word)


# ----------------------------------------------------------------------------------------------
# Routing


@dataclass
class _Choice:
    tool: _Tool
    score: float
    text: str


def _score(tool: _Tool, clause: str) -> float:
    tokens = list(dict.fromkeys(_words(clause)))
    score = 0.0
    matched_names: set[str] = set()
    argument_words = {w for p in tool.properties for w in p.name_words}
    for token in tokens:
        hits = [n for n in tool.name_tokens if _similar(token, n)]
        if hits and not any(_similar(token, w) for w in argument_words):
            score += _NAME_HIT
            matched_names.update(hits)
        elif hits or any(_similar(token, k) for k in tool.keywords):
            # A word naming an argument ("in the OPS project") describes a value, not the intent.
            score += _KEYWORD_HIT
            matched_names.update(hits)
    score -= _UNMATCHED_NAME_TOKEN * len(set(tool.name_tokens) - matched_names)
    if any(p.expression_like for p in tool.properties) and _expression(clause):
        score += _EXPRESSION_BONUS
    if score > 0:
        args, found_required = _fill_arguments(tool, clause)
        placeholders = sum(1 for p in tool.properties if p.required) - found_required
        score += _FILLED_BONUS * (len(args) - placeholders)
    return score


def _best_tool(tools: list[_Tool], clause: str) -> _Choice | None:
    best: _Choice | None = None
    for tool in tools:  # ties go to the shorter name, then to the first tool offered
        score = _score(tool, clause)
        if score < MIN_SCORE:
            continue
        if (
            best is None
            or score > best.score
            or (score == best.score and len(tool.name_tokens) < len(best.tool.name_tokens))
        ):
            best = _Choice(tool, score, clause)
    return best


def _route(tools: list[_Tool], text: str) -> list[tuple[str, dict[str, Any]]]:
    """(tool name, arguments) for each clause of the request that some tool matches."""
    choices: list[_Choice] = []
    for clause in _split_clauses(text):
        choice = _best_tool(tools, clause)
        if choice is not None:
            choices.append(choice)
        elif choices:
            # "ROI on 10000 at 7%, over 5 years": a clause that names no tool carries arguments.
            choices[-1].text = f"{choices[-1].text}, {clause}"
    calls: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for choice in choices:
        args, _ = _fill_arguments(choice.tool, choice.text)
        key = choice.tool.name + json.dumps(args, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        calls.append((choice.tool.name, args))
    return calls


# ----------------------------------------------------------------------------------------------
# Summaries of tool results


def _label(key: str) -> str:
    return key.replace("_", " ").strip()


def _render(value: Any, depth: int = 0) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "none"
    if isinstance(value, (int, float, str)):
        return str(value)
    if isinstance(value, list):
        if not value:
            return "none"
        shown = [_render(item, depth + 1) for item in value[:5]]
        more = f" (+{len(value) - 5} more)" if len(value) > 5 else ""
        return "[" + ", ".join(shown) + "]" + more
    if isinstance(value, dict):
        if depth > 0:
            # An item in a list: its first non-meta scalar is what identifies it.
            for key, item in value.items():
                if key not in _META_KEYS and isinstance(item, (str, int, float)) and item != "":
                    return str(item)
        return _render_fields(value)
    return str(value)


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, str) and re.fullmatch(r"-?\d+(?:\.\d+)?", value) is not None


def _render_fields(data: dict[str, Any]) -> str:
    parts: list[str] = []
    previous_numeric = False
    for key, value in data.items():
        if key in _META_KEYS or key.endswith("_at") or value == "" or value is None:
            continue
        if isinstance(value, str) and not _is_number(value):
            if previous_numeric and len(value) <= 4 and value.isupper() and parts:
                parts[-1] = f"{parts[-1]} {value}"  # a unit after its amount: "price 123.45 USD"
            else:
                parts.append(value)
            previous_numeric = False
            continue
        parts.append(f"{_label(key)} {_render(value, 1)}")
        previous_numeric = _is_number(value)
    return ", ".join(parts) if parts else "done"


def _demo_notes(value: Any) -> tuple[bool, list[str]]:
    """Whether the value is labelled demo data, and the labels it carries."""
    demo = False
    notes: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("source", "note") and isinstance(item, str) and "demo" in item.lower():
                demo = True
                if key == "note":
                    notes.append(item)
            elif isinstance(item, (dict, list)):
                inner_demo, inner_notes = _demo_notes(item)
                demo, notes = demo or inner_demo, notes + inner_notes
    elif isinstance(value, list):
        for item in value:
            inner_demo, inner_notes = _demo_notes(item)
            demo, notes = demo or inner_demo, notes + inner_notes
    return demo, notes


def _summarise_result(name: str, content: str) -> tuple[str, list[str]]:
    try:
        data: Any = json.loads(content)
    except (ValueError, TypeError):
        data = content
    if isinstance(data, dict) and "ok" in data and ("output" in data or "error" in data):
        if data.get("ok") is False:
            kind = data.get("error_kind") or "error"
            data = {"error": kind, "message": data.get("error") or ""}
        else:
            data = data.get("output")
    if isinstance(data, dict) and "error" in data and data.get("ok") is not True:
        kind, message = data.get("error"), data.get("message")
        if message is None and isinstance(kind, str) and not re.fullmatch(r"[a-z_]+", kind):
            kind, message = "error", kind
        text = f"{name}: error ({kind})" + (f": {message}" if message else "")
        return _shorten(text), []
    demo, notes = _demo_notes(data)
    if isinstance(data, dict):
        result = data.get("result")
        body = (
            str(result)
            if isinstance(result, (str, int, float)) and not isinstance(result, bool)
            else _render_fields(data)
        )
    else:
        body = _render(data)
    text = _shorten(f"{name}: {body}") + (" (demo data)" if demo else "")
    return text, notes


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_SUMMARY_CHARS else text[: _MAX_SUMMARY_CHARS - 3] + "..."


def _trailing_tool_messages(messages: list[Any]) -> list[Any]:
    trailing: list[Any] = []
    for message in reversed(messages):
        if _get(message, "role") != "tool":
            break
        trailing.append(message)
    trailing.reverse()
    return trailing


def _summarise(messages: list[Any], results: list[Any]) -> str:
    """One line per tool result, then the demo-data labels the results carry."""
    names: dict[str, str] = {}
    for message in messages:
        for call in _get(message, "tool_calls") or []:
            function = _get(call, "function")
            call_id, call_name = _get(call, "id"), _get(function, "name")
            if isinstance(call_id, str) and isinstance(call_name, str):
                names[call_id] = call_name
    lines: list[str] = []
    labels: list[str] = []
    for message in results:
        name = _get(message, "name") or names.get(_get(message, "tool_call_id") or "") or "tool"
        line, notes = _summarise_result(str(name), _message_text(_get(message, "content")))
        lines.append(line)
        labels += [n for n in notes if n not in labels]
    lines += [f"Note: {label}" for label in labels]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The provider


def _word_count(value: Any) -> int:
    if value is None:
        return 0
    if not isinstance(value, str):
        value = json.dumps(value, sort_keys=True, default=str)
    return len(value.split())


def _estimate_tokens(words: int) -> int:
    return max(1, (words * 4 + 2) // 3)


def respond(
    messages: list[Any], tools: Iterable[Any] | None, tool_choice: Any = None
) -> dict[str, Any]:
    """The router's answer as an OpenAI chat-completion message: role, content, tool_calls.

    `tool_choice` is honoured as providers do: "none" answers without tools, a named function is
    the only tool considered and is called even when no clause names it.
    """
    available = [t for t in (_Tool.from_openai(spec) for spec in tools or []) if t is not None]
    if messages and _get(messages[-1], "role") == "tool":
        return _answer(_summarise(messages, _trailing_tool_messages(messages)))
    user_text, since_user = "", list(messages)
    for index in range(len(messages) - 1, -1, -1):
        if _get(messages[index], "role") == "user":
            user_text = _message_text(_get(messages[index], "content"))
            since_user = list(messages[index + 1 :])
            break
    if tool_choice == "none":
        results = [m for m in since_user if _get(m, "role") == "tool"]
        if results:
            return _answer(_summarise(messages, results))
        available = []
    forced = _get(tool_choice, "function") if isinstance(tool_choice, dict) else None
    if forced is not None:
        available = [t for t in available if t.name == _get(forced, "name")]
    calls = _route(available, user_text) if available else []
    if not calls and forced is not None and available:
        calls = [(available[0].name, _fill_arguments(available[0], user_text)[0])]
    if not calls:
        names = ", ".join(t.name for t in available) or "none"
        return _answer(
            "The offline model (a keyword router, not an LLM) found no tool for this request. "
            f"It can use these tools: {names}."
        )
    seed = _digest(str(len(messages)), user_text)
    tool_calls = []
    for number, (name, args) in enumerate(calls, start=1):
        arguments = json.dumps(args, separators=(",", ":"))
        call_id = f"offline-{number}-{_digest(seed, name, arguments)[:12]}"
        tool_calls.append(
            {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
        )
    return {"role": "assistant", "content": None, "tool_calls": tool_calls}


def _answer(content: str) -> dict[str, Any]:
    return {"role": "assistant", "content": content, "tool_calls": []}


def _model_response(
    model: str, messages: list[Any], optional_params: dict[str, Any]
) -> ModelResponse:
    tools = optional_params.get("tools")
    message = respond(messages, tools, optional_params.get("tool_choice"))
    prompt_words = sum(
        _word_count(_message_text(_get(m, "content"))) + _word_count(_get(m, "tool_calls"))
        for m in messages
    ) + _word_count(tools)
    completion_words = _word_count(message["content"]) + sum(
        _word_count(c["function"]["name"]) + _word_count(c["function"]["arguments"])
        for c in message["tool_calls"]
    )
    prompt_tokens = _estimate_tokens(prompt_words)
    completion_tokens = _estimate_tokens(completion_words)
    finish_reason = "tool_calls" if message["tool_calls"] else "stop"
    choice_message: dict[str, Any] = {"role": "assistant", "content": message["content"]}
    if message["tool_calls"]:
        choice_message["tool_calls"] = message["tool_calls"]
    response_id = (
        "chatcmpl-offline-"
        + _digest(
            json.dumps([_message_text(_get(m, "content")) for m in messages]),
            json.dumps(message, sort_keys=True),
        )[:24]
    )
    return ModelResponse(
        id=response_id,
        created=_RESPONSE_CREATED,
        model=model,
        object="chat.completion",
        choices=[{"index": 0, "finish_reason": finish_reason, "message": choice_message}],
        usage={
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    )


class OfflineKeywordRouter(CustomLLM):
    """LiteLLM provider `offline`: routes requests by keywords, answers tool results plainly."""

    def completion(
        self, model: str, messages: list[Any], *args: Any, **kwargs: Any
    ) -> ModelResponse:
        return _model_response(_full_name(model), messages, _optional_params(args, kwargs))

    async def acompletion(
        self, model: str, messages: list[Any], *args: Any, **kwargs: Any
    ) -> ModelResponse:
        return _model_response(_full_name(model), messages, _optional_params(args, kwargs))


def _full_name(model: str) -> str:
    """LiteLLM hands the provider the bare name; responses carry the routable one."""
    prefix = f"{OFFLINE_PROVIDER}/"
    return model if model.startswith(prefix) else prefix + model


def _optional_params(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    params = kwargs.get("optional_params")
    if params is None and len(args) >= 8:
        params = args[7]  # positional order of CustomLLM.completion after model and messages
    return params if isinstance(params, dict) else {}


def register_offline_model() -> None:
    """Make `offline/keyword-router` a LiteLLM model. Idempotent; other providers are kept.

    Also registers the model's (zero) price, so `completion_cost` and `supports_function_calling`
    answer for it as for any catalogued model.
    """
    providers = litellm.custom_provider_map
    if not any(
        entry.get("provider") == OFFLINE_PROVIDER
        and isinstance(entry.get("custom_handler"), OfflineKeywordRouter)
        for entry in providers
    ):
        providers[:] = [e for e in providers if e.get("provider") != OFFLINE_PROVIDER]
        providers.append({"provider": OFFLINE_PROVIDER, "custom_handler": OfflineKeywordRouter()})
        litellm.custom_provider_map = providers
    # The provider must be known before the price is registered: LiteLLM resolves it on the way.
    custom_llm_setup()  # type: ignore[no-untyped-call]
    if OFFLINE_MODEL not in litellm.model_cost:
        litellm_logger = logging.getLogger("LiteLLM")
        level = litellm_logger.level
        litellm_logger.setLevel(logging.ERROR)  # it warns that a custom model has no cache prices
        try:
            litellm.register_model({OFFLINE_MODEL: _MODEL_INFO})
        finally:
            litellm_logger.setLevel(level)
