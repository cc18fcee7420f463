"""A MongoDB filter evaluated on one stored document, in Python (pure).

The scope confinement (interactions/confinement.py) is a query filter for searches and, for the decision on
one resource (a read, a write about to happen), the same filter evaluated here, so that both answer
alike. Covered: the operators the search compiler emits (search/types/) — field equality, `$in`,
`$nin`, `$ne`, `$gt`, `$gte`, `$lt`, `$lte`, `$exists`, `$regex`, `$not`, `$elemMatch`, `$and`,
`$or`, `$nor` — with MongoDB's semantics on arrays (a condition on an array field holds when one
element satisfies it) and on missing fields (`$nin`/`$ne`/`$not` hold). Any other operator raises
ValueError: a filter this module cannot read must not be taken as a match.
https://www.mongodb.com/docs/manual/reference/operator/query/
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

_MISSING = object()


def matches(query: Mapping[str, Any], document: Mapping[str, Any]) -> bool:
    """True when `document` satisfies `query`."""
    for key, condition in query.items():
        if key == "$and":
            if not all(matches(part, document) for part in condition):
                return False
        elif key == "$or":
            if not any(matches(part, document) for part in condition):
                return False
        elif key == "$nor":
            if any(matches(part, document) for part in condition):
                return False
        elif key.startswith("$"):
            raise ValueError(f"unsupported top-level operator {key}")
        elif not _field_matches(_values(document, key), condition):
            return False
    return True


def _values(document: Any, path: str) -> list[Any]:
    """The values at a dotted path; arrays on the way are crossed; `[_MISSING]` when there is none."""
    current: list[Any] = [document]
    for key in path.split("."):
        found: list[Any] = []
        for item in current:
            for element in item if isinstance(item, list) else [item]:
                if isinstance(element, Mapping) and key in element:
                    found.append(element[key])
        current = found
    return current or [_MISSING]


def _candidates(value: Any) -> list[Any]:
    """A field value and, for an array, each of its elements (MongoDB compares both)."""
    return [value, *value] if isinstance(value, list) else [value]


def _field_matches(values: Sequence[Any], condition: Any) -> bool:
    if isinstance(condition, Mapping) and condition and all(key.startswith("$") for key in condition):
        return all(_operator(values, name, operand) for name, operand in condition.items())
    return _any(values, lambda item: _equal(item, condition))


def _any(values: Sequence[Any], test: Callable[[Any], bool]) -> bool:
    return any(test(item) for value in values if value is not _MISSING for item in _candidates(value))


def _equal(item: Any, expected: Any) -> bool:
    if isinstance(item, bool) or isinstance(expected, bool):
        return type(item) is type(expected) and item == expected
    try:
        return bool(item == expected)
    except TypeError:
        return False


def _compare(item: Any, bound: Any, test: Callable[[Any, Any], bool]) -> bool:
    if isinstance(item, bool) or isinstance(bound, bool) or isinstance(item, Mapping | list):
        return False
    try:
        return test(item, bound)
    except TypeError:
        return False


_COMPARISONS: Mapping[str, Callable[[Any, Any], bool]] = {
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
}


def _operator(values: Sequence[Any], name: str, operand: Any) -> bool:
    present = [value for value in values if value is not _MISSING]
    if name == "$exists":
        return bool(present) == bool(operand)
    if name == "$in":
        return _any(values, lambda item: any(_equal(item, option) for option in operand))
    if name == "$nin":
        return not _any(values, lambda item: any(_equal(item, option) for option in operand))
    if name == "$ne":
        return not _any(values, lambda item: _equal(item, operand))
    if name in _COMPARISONS:
        test = _COMPARISONS[name]
        return _any(values, lambda item: _compare(item, operand, test))
    if name == "$regex":
        pattern = re.compile(operand)
        return _any(values, lambda item: isinstance(item, str) and pattern.search(item) is not None)
    if name == "$not":
        return not _field_matches(values, operand)
    if name == "$elemMatch":
        return any(
            isinstance(item, Mapping) and matches(operand, item)
            for value in present
            if isinstance(value, list)
            for item in value
        )
    raise ValueError(f"unsupported operator {name}")


__all__ = ["matches"]
