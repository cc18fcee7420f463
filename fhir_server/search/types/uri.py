"""Uri search parameters: index values and query matching side by side.

https://hl7.org/fhir/R4/search.html#uri

Stored (`idx`): `<code>` holds the URIs as written (a scalar when there is one), `<code>:sort` the
smallest. Matching is exact; `:below` matches URIs that start with the value, `:above` URIs that
the value starts with (by path segment).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fhir_server.search.types.common import QueryContext, starts_with, stored, unescape, unique

MODIFIERS = frozenset({"below", "above"})


def extract(code: str, values: Sequence[Any]) -> dict[str, Any]:
    uris = unique(value for value in values if isinstance(value, str) and value)
    return {code: stored(uris), f"{code}:sort": min(uris)} if uris else {}


def parse_value(raw: str, context: QueryContext) -> str:  # noqa: ARG001 (ParameterType signature)
    text = unescape(raw)
    if not text:
        raise ValueError("empty uri")
    return text


def _ancestors(uri: str) -> list[str]:
    """`uri` and every prefix of it that ends before a `/` path segment."""
    scheme_end = uri.find("://")
    floor = uri.find("/", scheme_end + 3) if scheme_end >= 0 else 0
    prefixes = [uri]
    position = len(uri)
    while (position := uri.rfind("/", 0, position)) > max(floor, 0):
        prefixes.append(uri[:position])
    if floor > 0:
        prefixes.append(uri[:floor])
    return unique(prefixes)


def to_mongo(field: str, values: Sequence[str], context: QueryContext) -> dict[str, Any]:
    if context.modifier == "below":
        conditions = [{field: starts_with(value)} for value in values]
        return conditions[0] if len(conditions) == 1 else {"$or": conditions}
    if context.modifier == "above":
        return {field: {"$in": unique(prefix for value in values for prefix in _ancestors(value))}}
    return {field: values[0] if len(values) == 1 else {"$in": list(values)}}
