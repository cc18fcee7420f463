"""Token search parameters: index keys and query matching side by side.

https://hl7.org/fhir/R4/search.html#token

Stored (`idx`): `<code>` holds composed keys (a scalar when there is one, common.stored), built
per Coding / Identifier so that a system is never paired with another coding's code: `C`, `S|C`,
`S|` (with a system) or `C`, `|C` (without); a primitive (code, string, boolean as `true`/`false`)
and a ContactPoint give their value alone. `<code>:text` holds the folded CodeableConcept.text,
Coding.display and Identifier.type.text (for `:text`), `<code>:of-type` holds
`typeSystem|typeCode|value` per Identifier.type coding (for `:of-type`), `<code>:sort` the
smallest plain code (for `_sort`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fhir_server.search.types.common import (
    QueryContext,
    fold,
    split_unescaped,
    starts_with,
    stored,
    unescape,
    unique,
)

MODIFIERS = frozenset({"not", "text", "of-type"})

_CONTACT_SYSTEMS = frozenset({"phone", "fax", "email", "pager", "url", "sms", "other"})


def coding_keys(system: Any, code: Any) -> list[str]:
    if not isinstance(code, str) or not code:
        return [f"{system}|"] if isinstance(system, str) and system else []
    if isinstance(system, str) and system:
        return [code, f"{system}|{code}", f"{system}|"]
    return [code, f"|{code}"]


def _collect(value: Any, keys: list[str], texts: list[str], of_type: list[str], plain: list[str]) -> None:
    if isinstance(value, bool):
        keys.append("true" if value else "false")
        plain.append(keys[-1])
    elif isinstance(value, str):
        if value:
            keys.append(value)
            plain.append(value)
    elif isinstance(value, Mapping):
        if "coding" in value or "text" in value:
            for coding in value.get("coding") or ():
                _collect(coding, keys, texts, of_type, plain)
            if isinstance(value.get("text"), str):
                texts.append(fold(value["text"]))
        elif "value" in value:
            item = value.get("value")
            if not isinstance(item, str) or not item:
                return
            system = value.get("system")
            if system in _CONTACT_SYSTEMS or "rank" in value:
                keys.append(item)
            else:
                keys.extend(coding_keys(system, item))
                identifier_type = value.get("type") or {}
                for coding in identifier_type.get("coding") or ():
                    if coding.get("code"):
                        of_type.append(f"{coding.get('system') or ''}|{coding['code']}|{item}")
                if isinstance(identifier_type.get("text"), str):
                    texts.append(fold(identifier_type["text"]))
            plain.append(item)
        else:
            keys.extend(coding_keys(value.get("system"), value.get("code")))
            if isinstance(value.get("code"), str) and value["code"]:
                plain.append(value["code"])
            if isinstance(value.get("display"), str):
                texts.append(fold(value["display"]))


def extract(code: str, values: Sequence[Any]) -> dict[str, Any]:
    keys: list[str] = []
    texts: list[str] = []
    of_type: list[str] = []
    plain: list[str] = []
    for value in values:
        _collect(value, keys, texts, of_type, plain)
    entries: dict[str, Any] = {}
    if keys:
        entries[code] = stored(unique(keys))
    if texts:
        entries[f"{code}:text"] = unique(texts)
    if of_type:
        entries[f"{code}:of-type"] = unique(of_type)
    if plain:
        entries[f"{code}:sort"] = min(plain)
    return entries


def parse_value(raw: str, context: QueryContext) -> str:
    """The index key (or folded text for `:text`) a search value matches; ValueError if malformed."""
    if context.modifier == "text":
        text = fold(unescape(raw))
        if not text:
            raise ValueError("empty text")
        return text
    parts = split_unescaped(raw, "|")
    if context.modifier == "of-type":
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise ValueError("expected type-system|type-code|value")
        return "|".join(parts)
    if len(parts) == 1 and parts[0]:
        return parts[0]
    if len(parts) == 2 and (parts[0] or parts[1]):
        return f"{parts[0]}|{parts[1]}"
    raise ValueError("expected code, system|code, |code or system|")


def to_mongo(field: str, values: Sequence[str], context: QueryContext) -> dict[str, Any]:
    if context.modifier == "text":
        patterns = [{f"{field}:text": starts_with(value)} for value in values]
        return patterns[0] if len(patterns) == 1 else {"$or": patterns}
    if context.modifier == "of-type":
        return {f"{field}:of-type": _one_of(values)}
    if context.modifier == "not":
        return {field: {"$nin": list(values)}}
    return {field: _one_of(values)}


def _one_of(values: Sequence[str]) -> Any:
    return values[0] if len(values) == 1 else {"$in": list(values)}
