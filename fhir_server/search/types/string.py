"""String search parameters: index values and query matching side by side.

https://hl7.org/fhir/R4/search.html#string

Stored (`idx`): `<code>` holds the folded strings, every part of a HumanName or Address (a scalar
when there is one), `<code>:exact` the same strings as written (for `:exact`), `<code>:sort` the
smallest folded string.
Default matching is "equals or starts with" on folded text, `:contains` matches anywhere.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from fhir_server.search.types.common import QueryContext, fold, starts_with, stored, unescape, unique

MODIFIERS = frozenset({"exact", "contains"})

_NOT_TEXT = frozenset({"use", "type", "id", "extension", "period"})
"""Elements of HumanName / Address that are codes or structure, not searchable text."""

MAX_QUERY_CHARACTERS = 256
"""Longer values name nothing real, and would become regular expressions the database refuses."""


def _strings(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        if value.strip():
            out.append(value.strip())
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if key in _NOT_TEXT:
                continue
            if isinstance(item, list):
                for element in item:
                    if isinstance(element, str):
                        _strings(element, out)
            elif isinstance(item, str):
                _strings(item, out)


def extract(code: str, values: Sequence[Any]) -> dict[str, Any]:
    raw: list[str] = []
    for value in values:
        _strings(value, raw)
    if not raw:
        return {}
    exact = unique(raw)
    folded = unique(fold(text) for text in exact)
    return {code: stored(folded), f"{code}:exact": exact, f"{code}:sort": min(folded)}


def parse_value(raw: str, context: QueryContext) -> str:
    text = unescape(raw)
    if not text:
        raise ValueError("empty string")
    if len(text) > MAX_QUERY_CHARACTERS:
        raise ValueError(f"a string value is limited to {MAX_QUERY_CHARACTERS} characters")
    return text if context.modifier == "exact" else fold(text)


def to_mongo(field: str, values: Sequence[str], context: QueryContext) -> dict[str, Any]:
    if context.modifier == "exact":
        return {f"{field}:exact": values[0] if len(values) == 1 else {"$in": list(values)}}
    if context.modifier == "contains":
        conditions = [{field: {"$regex": re.escape(value)}} for value in values]
    else:
        conditions = [{field: starts_with(value)} for value in values]
    return conditions[0] if len(conditions) == 1 else {"$or": conditions}
