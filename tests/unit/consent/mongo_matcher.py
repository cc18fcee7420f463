"""A small in-memory MongoDB query matcher for the operator subset consent/filter.py documents.

$and, $or, $nor, $not (on an operator document), $in, $nin, $ne, $elemMatch (document and operator
forms), $exists, $lte, $gte and implicit equality, with MongoDB's rules: a path crosses arrays, a
numeric segment indexes an array, equality on an array field matches any element, comparisons stay
within one type (dates with dates).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

_MISSING = object()


def matches(document: Mapping[str, Any], query: Mapping[str, Any]) -> bool:
    for key, condition in query.items():
        if key == "$and":
            ok = all(matches(document, part) for part in condition)
        elif key == "$or":
            ok = any(matches(document, part) for part in condition)
        elif key == "$nor":
            ok = not any(matches(document, part) for part in condition)
        elif key.startswith("$"):
            raise ValueError(f"operator outside the subset: {key}")
        else:
            ok = _field(_values(document, key.split(".")), condition)
        if not ok:
            return False
    return True


def _values(value: Any, path: list[str]) -> list[Any]:
    """The values a path reaches (none when it reaches nothing)."""
    if not path:
        return [value]
    head, rest = path[0], path[1:]
    if isinstance(value, Mapping):
        return _values(value[head], rest) if head in value else []
    if isinstance(value, list):
        if head.isdigit():
            index = int(head)
            return _values(value[index], rest) if index < len(value) else []
        return [
            found for item in value if isinstance(item, Mapping) for found in _values(item, [head, *rest])
        ]
    return []


def _candidates(values: list[Any]) -> list[Any]:
    """Each reached value, and the elements of a reached array."""
    out: list[Any] = []
    for value in values:
        out.append(value)
        if isinstance(value, list):
            out.extend(value)
    return out


def _is_operator_document(condition: Any) -> bool:
    return (
        isinstance(condition, Mapping) and bool(condition) and all(str(k).startswith("$") for k in condition)
    )


def _equal(values: list[Any], expected: Any) -> bool:
    return any(_same(candidate, expected) for candidate in _candidates(values))


def _same(left: Any, right: Any) -> bool:
    return type(left) is type(right) and left == right


def _field(values: list[Any], condition: Any) -> bool:
    if not _is_operator_document(condition):
        return _equal(values, condition)
    for operator, operand in condition.items():
        if not _operator(values, operator, operand):
            return False
    return True


def _operator(values: list[Any], operator: str, operand: Any) -> bool:
    if operator == "$not":
        if not _is_operator_document(operand):
            raise ValueError("$not takes an operator document")
        return not _field(values, operand)
    if operator == "$ne":
        return not _equal(values, operand)
    if operator == "$in":
        return any(_equal(values, item) for item in operand)
    if operator == "$nin":
        return not any(_equal(values, item) for item in operand)
    if operator == "$exists":
        return bool(values) is operand
    if operator in ("$lte", "$gte"):
        for candidate in _candidates(values):
            if isinstance(candidate, datetime) and isinstance(operand, datetime):
                if candidate <= operand if operator == "$lte" else candidate >= operand:
                    return True
        return False
    if operator == "$elemMatch":
        for value in values:
            if not isinstance(value, list):
                continue
            for element in value:
                if _is_operator_document(operand):
                    if _field([element], operand):
                        return True
                elif isinstance(element, Mapping) and matches(element, operand):
                    return True
        return False
    raise ValueError(f"operator outside the subset: {operator}")
