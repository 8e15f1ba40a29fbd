"""The tools of a request as the offline model sees them: names, words and argument schemas.

Everything here comes from the OpenAI-shaped `tools` of the request; nothing names a tool.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from shared.offline_model.text import STOP_WORDS, get, words

# Words of a tool name that say nothing about what the tool is for ("get_", "run_").
_NAME_NOISE = STOP_WORDS | {"query", "run"}
# Examples in descriptions ("e.g. Paris") are sample values, not what the tool is about.
_EXAMPLE = re.compile(r"\b(?:e\.g\.|for example|such as)[^.;)]*", re.IGNORECASE)
# A string property described like this takes a formula: the text's arithmetic goes to it.
_ARITHMETIC = re.compile(r"arithmetic|\bmath|formula|equation", re.IGNORECASE)
# An address property: by its JSON-schema format (ipv4, ipv6, ipvanyaddress) or its description.
_ADDRESS_FORMAT = re.compile(r"ipv(4|6|any)", re.IGNORECASE)
_ADDRESS_DESCRIPTION = re.compile(r"\bip(v4|v6)?\b.*\baddress", re.IGNORECASE)


@dataclass(frozen=True)
class Property:
    """One argument of a tool: its name, its JSON schema and whether it is required."""

    name: str
    schema: dict[str, Any]
    required: bool

    @property
    def _variants(self) -> list[dict[str, Any]]:
        nested = [self.schema.get(key, []) for key in ("anyOf", "oneOf", "allOf")]
        return [self.schema, *(v for group in nested for v in group if isinstance(v, dict))]

    def first(self, key: str) -> Any:
        """A schema keyword's value, from the schema itself or its first variant (anyOf...)."""
        return next((v[key] for v in self._variants if key in v), None)

    @property
    def types(self) -> set[str]:
        kinds = [v.get("type") for v in self._variants]
        flat = [k for kind in kinds for k in (kind if isinstance(kind, list) else [kind])]
        return {k for k in flat if isinstance(k, str)} - {"null"} or {"string"}

    @property
    def text(self) -> str:
        """The property's name, title and description."""
        parts = [self.first("title"), self.first("description")]
        return " ".join([self.name.replace("_", " "), *(p for p in parts if isinstance(p, str))])

    @property
    def numeric(self) -> bool:
        return bool(self.types & {"number", "integer"})

    @property
    def integer_only(self) -> bool:
        return self.types & {"number", "integer"} == {"integer"}

    @property
    def address_family(self) -> str | None:
        """ "4", "6" or "any" for a property that takes an IP address, else None."""
        fmt = self.first("format")
        found = _ADDRESS_FORMAT.search(fmt) if isinstance(fmt, str) else None
        if found is not None:
            return found.group(1).lower()
        return "any" if _ADDRESS_DESCRIPTION.search(self.text) else None

    @property
    def arithmetic(self) -> bool:
        return "string" in self.types and bool(_ARITHMETIC.search(self.text))

    @property
    def name_words(self) -> list[str]:
        return [w for w in self.name.lower().split("_") if w]


@dataclass(frozen=True)
class Tool:
    """A tool offered in the request."""

    name: str
    properties: tuple[Property, ...]
    name_tokens: tuple[str, ...]  # the meaningful words of the tool's own name
    keywords: frozenset[str]  # the words of its description, service and arguments

    @classmethod
    def from_openai(cls, spec: Any) -> Tool | None:
        function = get(spec, "function") if get(spec, "type") in (None, "function") else None
        name = get(function, "name") if function is not None else None
        if not isinstance(name, str) or not name:
            return None
        parameters = get(function, "parameters")
        parameters = parameters if isinstance(parameters, dict) else {}
        required = set(parameters.get("required", []))
        properties = tuple(
            Property(prop, schema if isinstance(schema, dict) else {}, prop in required)
            for prop, schema in parameters.get("properties", {}).items()
        )
        # "team__tool_name": the part before "__" names the service, the rest is the tool.
        service, _, base = name.rpartition("__")
        name_tokens = [w for w in base.lower().split("_") if w and not w.isdigit()]
        text = [str(get(function, "description") or ""), service, *(p.text for p in properties)]
        keywords = words(_EXAMPLE.sub(" ", " ".join(text)).replace("_", " "))
        return cls(
            name=name,
            properties=properties,
            name_tokens=tuple(w for w in name_tokens if w not in _NAME_NOISE),
            keywords=frozenset(keywords),
        )


def tools_of(specs: Any) -> list[Tool]:
    """The usable tools among the request's `tools` (others are ignored)."""
    return [t for t in (Tool.from_openai(spec) for spec in specs or []) if t is not None]
