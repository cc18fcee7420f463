"""Composing MongoDB filters so that planners can use an index.

A conjunction is merged into one flat document wherever the conditions name different fields:
planners pick an index from the top-level fields of a filter, and the embedded database only uses
an index when no top-level operator (`$and`, `$or`) is present (docs/architecture.md). What cannot be merged
stays under `$and`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def _members(conditions: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The conditions with nested `{"$and": [...]}` documents spliced in (AND is associative)."""
    flat: list[Mapping[str, Any]] = []
    for condition in conditions:
        if set(condition) == {"$and"}:
            flat.extend(_members(condition["$and"]))
        elif condition:
            flat.append(condition)
    return flat


def conjunction(conditions: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """AND of filters, as flat as their keys allow; `{}` when there is nothing to AND."""
    merged: dict[str, Any] = {}
    rest: list[Mapping[str, Any]] = []
    for condition in _members(conditions):
        if condition.keys() & merged.keys():
            rest.append(condition)
        else:
            merged.update(condition)
    if not rest:
        return merged
    return {"$and": [merged, *rest]} if merged else {"$and": rest}
