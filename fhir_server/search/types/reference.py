"""Reference search parameters: index keys and query matching side by side.

https://hl7.org/fhir/R4/search.html#reference

Stored (`idx`): `<code>` holds one key per reference (a scalar when there is one): `Type/id`, also
for an absolute URL that ends with `Type/id` (as storage/documents.py reads the patient compartment;
the query side normalises the same way), else the URL as written;
`<code>:identifier` holds token keys of `Reference.identifier` (for `:identifier`), `<code>:sort`
the smallest key. Contained references (`#id`) are not indexed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fhir_server.search.types import token
from fhir_server.search.types.common import QueryContext, stored, unescape, unique

MODIFIERS = frozenset({"identifier"})
"""Besides `:[type]`, any resource type name."""

_TYPED = re.compile(r"(?:.*/)?([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})")


def reference_type(text: str) -> str | None:
    """The resource type a reference text (`Type/id`, `.../Type/id`, with or without `_history`) names."""
    match = _TYPED.fullmatch(_without_history(text))
    return match.group(1) if match else None


def _without_history(text: str) -> str:
    return text.split("/_history/")[0].rstrip("/")


def _is_absolute(text: str) -> bool:
    return "://" in text or text.startswith(("urn:", "//"))


def reference_key(text: str) -> str | None:
    """The index key of one `Reference.reference` text; None for a contained reference."""
    if not text or text.startswith("#"):
        return None
    text = _without_history(text)
    if not _is_absolute(text):
        return text
    match = _TYPED.fullmatch(text)
    return f"{match.group(1)}/{match.group(2)}" if match else text


def extract(code: str, values: Sequence[Any]) -> dict[str, Any]:
    keys: list[str] = []
    identifiers: list[str] = []
    for value in values:
        text = (
            value
            if isinstance(value, str)
            else value.get("reference")
            if isinstance(value, Mapping)
            else None
        )
        key = reference_key(text) if isinstance(text, str) else None
        if key is not None:
            keys.append(key)
        if isinstance(value, Mapping):
            identifier = value.get("identifier")
            if isinstance(identifier, Mapping) and isinstance(identifier.get("value"), str):
                identifiers.extend(token.coding_keys(identifier.get("system"), identifier["value"]))
    entries: dict[str, Any] = {}
    if keys:
        entries[code] = stored(unique(keys))
        entries[f"{code}:sort"] = min(keys)
    if identifiers:
        entries[f"{code}:identifier"] = unique(identifiers)
    return entries


@dataclass(frozen=True)
class ReferenceValue:
    keys: tuple[str, ...]
    """Index keys any of which matches."""
    any_type_id: str | None = None
    """A bare id for a parameter whose targets are not enumerated: `<any type>/<id>` matches."""


def parse_value(raw: str, context: QueryContext) -> ReferenceValue:
    text = unescape(raw)
    if not text:
        raise ValueError("empty reference")
    if context.modifier == "identifier":
        return ReferenceValue((token.parse_value(raw, context),))
    base = context.base_url.rstrip("/") + "/"
    if text.startswith(base):
        text = text[len(base) :]
    text = _without_history(text)
    if context.modifier is not None:
        resource_id = text.rsplit("/", 1)[-1]
        if "/" in text and reference_type(text) != context.modifier:
            raise ValueError(f"reference {text!r} is not a {context.modifier}")
        return ReferenceValue((f"{context.modifier}/{resource_id}",))
    if _is_absolute(text):
        return ReferenceValue((reference_key(text) or text,))
    if "/" in text:
        if reference_type(text) is None:
            raise ValueError(f"{text!r} is not a Type/id reference")
        return ReferenceValue((text,))
    known = tuple(target for target in context.targets if target != "Resource")
    if known:
        return ReferenceValue(tuple(f"{target}/{text}" for target in known))
    return ReferenceValue((), any_type_id=text)


def to_mongo(field: str, values: Sequence[ReferenceValue], context: QueryContext) -> dict[str, Any]:
    if context.modifier == "identifier":
        keys = [key for value in values for key in value.keys]
        return {f"{field}:identifier": keys[0] if len(keys) == 1 else {"$in": keys}}
    keys = unique(key for value in values for key in value.keys)
    conditions: list[dict[str, Any]] = []
    if keys:
        conditions.append({field: keys[0] if len(keys) == 1 else {"$in": keys}})
    for value in values:
        if value.any_type_id is not None:
            conditions.append({field: {"$regex": rf"^[A-Z][A-Za-z]+/{re.escape(value.any_type_id)}$"}})
    if not conditions:
        return {field: {"$in": []}}  # every value named what the caller may not see (interactions/views.py)
    return conditions[0] if len(conditions) == 1 else {"$or": conditions}
