"""Keyset paging: opaque cursors and the filters that select the documents after (or before) one.

https://hl7.org/fhir/R4/http.html#paging

No skip/offset: a page is the first `_count` documents strictly after the last one of the previous
page in the (total) sort order, so walking every page returns each pre-existing match exactly
once while writes happen. Sort fields are scalars (`_id`, `lu`, `idx.<code>:sort`, `:lo`, `:hi`),
the same values the sort itself uses; a missing value sorts as null (first ascending, last
descending), as MongoDB orders it. A cursor is URL-safe base64 of JSON: the sort it was made for,
the boundary document's sort values (datetimes tagged), and its direction.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fhir_server.fhir.errors import FhirError, bad_request

NEXT = "next"
PREVIOUS = "previous"
CURSOR_PARAMETER = "_cursor"

SortSpec = Sequence[tuple[str, int]]


@dataclass(frozen=True)
class Cursor:
    values: tuple[Any, ...]
    """Sort values of the boundary document: the last of a page (next) or the first (previous)."""
    direction: str


def sort_values(document: Mapping[str, Any], sort: SortSpec) -> tuple[Any, ...]:
    """The values of `document` for each (dotted) sort field; None when missing."""
    values = []
    for field, _ in sort:
        value: Any = document
        for part in field.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        values.append(value)
    return tuple(values)


def _encode_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$d": value.isoformat()}
    return value


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        return datetime.fromisoformat(value["$d"])
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise ValueError("unexpected cursor value")


def encode_cursor(sort: SortSpec, document: Mapping[str, Any], *, direction: str) -> str:
    payload = {
        "s": [[field, order] for field, order in sort],
        "v": [_encode_value(value) for value in sort_values(document, sort)],
        "d": direction,
    }
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _invalid_cursor() -> FhirError:
    return bad_request("Invalid or expired paging cursor", expression=(CURSOR_PARAMETER,))


def decode_cursor(token: str, sort: SortSpec) -> Cursor:
    """Raises FhirError 400 when the cursor is malformed or was made for another sort."""
    try:
        payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        fields = [(str(field), int(order)) for field, order in payload["s"]]
        values = tuple(_decode_value(value) for value in payload["v"])
        direction = payload["d"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise _invalid_cursor() from None
    if fields != list(sort) or len(values) != len(fields) or direction not in (NEXT, PREVIOUS):
        raise _invalid_cursor()
    return Cursor(values, direction)


def reverse_sort(sort: SortSpec) -> list[tuple[str, int]]:
    return [(field, -order) for field, order in sort]


def _beyond(field: str, order: int, value: Any) -> dict[str, Any] | None:
    """Documents whose `field` comes strictly after `value` in `order`; None when nothing can."""
    if order > 0:
        return {field: {"$ne": None}} if value is None else {field: {"$gt": value}}
    if value is None:
        return None
    return {"$or": [{field: {"$lt": value}}, {field: None}]}


def after_filter(sort: SortSpec, values: Sequence[Any]) -> dict[str, Any]:
    """Documents strictly after the boundary `values` in `sort` order (the sort must be total)."""
    alternatives: list[dict[str, Any]] = []
    for position, (field, order) in enumerate(sort):
        beyond = _beyond(field, order, values[position])
        if beyond is None:
            continue
        equal = [{prior: values[index]} for index, (prior, _) in enumerate(sort[:position])]
        alternatives.append(beyond if not equal else {"$and": [*equal, beyond]})
    if not alternatives:
        return {"_id": {"$in": []}}
    return alternatives[0] if len(alternatives) == 1 else {"$or": alternatives}


def page_query(sort: SortSpec, cursor: Cursor | None) -> tuple[dict[str, Any], list[tuple[str, int]]]:
    """The extra filter and the sort to run for the page a cursor asks for.

    For a `previous` cursor the sort is reversed: the caller reverses the documents it reads.
    """
    if cursor is None:
        return {}, list(sort)
    if cursor.direction == PREVIOUS:
        reversed_sort = reverse_sort(sort)
        return after_filter(reversed_sort, cursor.values), reversed_sort
    return after_filter(sort, cursor.values), list(sort)


def compare(sort: SortSpec, left: Sequence[Any], right: Sequence[Any]) -> int:
    """-1, 0 or 1: the order of two documents' sort values as MongoDB sorts them (null lowest)."""
    for (_, order), a, b in zip(sort, left, right, strict=True):
        if a == b:
            continue
        if a is None:
            return -order
        if b is None:
            return order
        return order if a > b else -order
    return 0
