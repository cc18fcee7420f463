"""Keyset paging: cursors and the after-filter, checked on an in-memory model of MongoDB ordering.

Covers: R4 http.html#paging and search.html (paging links are opaque); issue 3 (keyset cursors, no
offset: walking every page returns each match exactly once), mixed asc/desc keys, missing values.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_server.fhir.errors import FhirError
from fhir_server.search.paging import (
    NEXT,
    PREVIOUS,
    Cursor,
    after_filter,
    decode_cursor,
    encode_cursor,
    page_query,
    sort_values,
)


def _get(document: dict[str, Any], field: str) -> Any:
    value: Any = document
    for part in field.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _matches(condition: dict[str, Any], document: dict[str, Any]) -> bool:
    """MongoDB semantics of the operators paging emits, on scalar fields ($in only for NOTHING)."""
    for key, test in condition.items():
        if key == "$or":
            if not any(_matches(part, document) for part in test):
                return False
        elif key == "$and":
            if not all(_matches(part, document) for part in test):
                return False
        else:
            value = _get(document, key)
            if not isinstance(test, dict):
                if value != test:  # equality; None matches missing and null
                    return False
            elif "$ne" in test:
                if value is None:
                    return False
            elif "$gt" in test:
                if value is None or not value > test["$gt"]:
                    return False
            elif "$lt" in test:
                if value is None or not value < test["$lt"]:
                    return False
            elif "$in" in test:
                if value not in test["$in"]:
                    return False
    return True


def _compare(sort: list[tuple[str, int]], left: dict[str, Any], right: dict[str, Any]) -> int:
    for field, order in sort:
        a, b = _get(left, field), _get(right, field)
        if a == b:
            continue
        if a is None:
            return -order
        if b is None:
            return order
        return order if a > b else -order
    return 0


def _sorted(documents: list[dict[str, Any]], sort: list[tuple[str, int]]) -> list[dict[str, Any]]:
    return sorted(documents, key=functools.cmp_to_key(functools.partial(_compare, sort)))


def _page(
    documents: list[dict[str, Any]], sort: list[tuple[str, int]], token: str | None, count: int
) -> list[dict[str, Any]]:
    cursor = decode_cursor(token, sort) if token else None
    extra, run_sort = page_query(sort, cursor)
    found = _sorted([d for d in documents if _matches(extra, d)], run_sort)[:count]
    return list(reversed(found)) if cursor is not None and cursor.direction == PREVIOUS else found


T0 = datetime(2024, 1, 1, tzinfo=UTC)
documents_strategy = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "lu": st.integers(0, 4).map(lambda n: T0 + timedelta(days=n)),
            "idx": st.fixed_dictionaries({}, optional={"s:sort": st.sampled_from(["a", "b", "c"])}),
        },
    ),
    max_size=25,
)
sorts = st.sampled_from(
    [
        [("_id", 1)],
        [("lu", -1), ("_id", 1)],
        [("idx.s:sort", 1), ("lu", -1), ("_id", 1)],
        [("idx.s:sort", -1), ("lu", 1), ("_id", -1)],
    ]
)


@settings(max_examples=150, deadline=None)
@given(documents_strategy, sorts, st.integers(1, 4))
def test_walking_next_pages_returns_every_document_once_in_order(
    documents: list[dict[str, Any]], sort: list[tuple[str, int]], count: int
) -> None:
    for position, document in enumerate(documents):
        document["_id"] = f"id{position:03d}"
    seen: list[dict[str, Any]] = []
    token: str | None = None
    for _ in range(len(documents) + 2):
        page = _page(documents, sort, token, count)
        seen.extend(page)
        if len(page) < count:
            break
        token = encode_cursor(sort, page[-1], direction=NEXT)
    assert [d["_id"] for d in seen] == [d["_id"] for d in _sorted(documents, sort)]


@settings(max_examples=100, deadline=None)
@given(documents_strategy, sorts, st.integers(1, 4))
def test_previous_cursor_returns_the_page_before(
    documents: list[dict[str, Any]], sort: list[tuple[str, int]], count: int
) -> None:
    for position, document in enumerate(documents):
        document["_id"] = f"id{position:03d}"
    ordered = _sorted(documents, sort)
    if len(ordered) <= count:
        return
    second = ordered[count : 2 * count]
    previous = _page(documents, sort, encode_cursor(sort, second[0], direction=PREVIOUS), count)
    assert [d["_id"] for d in previous] == [d["_id"] for d in ordered[:count]]


def test_cursor_round_trips_datetimes_and_missing_values() -> None:
    sort = [("idx.date:lo", 1), ("lu", -1), ("_id", 1)]
    document = {"_id": "x", "lu": T0}
    token = encode_cursor(sort, document, direction=NEXT)
    assert decode_cursor(token, sort) == Cursor((None, T0, "x"), NEXT)
    assert "=" not in token and "+" not in token and "/" not in token


@pytest.mark.parametrize("token", ["not-base64!", "e30", "bm9wZQ"])
def test_malformed_cursor_is_400(token: str) -> None:
    with pytest.raises(FhirError) as raised:
        decode_cursor(token, [("_id", 1)])
    assert raised.value.status == 400 and raised.value.issues[0].expression == ("_cursor",)


def test_cursor_made_for_another_sort_is_400() -> None:
    token = encode_cursor([("lu", 1), ("_id", 1)], {"_id": "x", "lu": T0}, direction=NEXT)
    with pytest.raises(FhirError):
        decode_cursor(token, [("_id", 1)])


def test_after_the_lowest_value_in_descending_order_nothing_remains_for_that_key() -> None:
    assert after_filter([("lu", -1)], [None]) == {"_id": {"$in": []}}


def test_sort_values_follow_dotted_paths() -> None:
    assert sort_values(
        {"_id": "a", "idx": {"date:lo": T0}}, [("idx.date:lo", 1), ("idx.x", 1), ("_id", 1)]
    ) == (T0, None, "a")
