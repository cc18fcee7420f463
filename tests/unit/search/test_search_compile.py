"""SearchRequest -> MongoDB filter and sort, with chains and _has resolved through a callback.

Covers: R4 search.html §chaining, §has, §sort, §modifiers (:missing); docs/architecture.md I4 (every sub-query
goes through the caller's resolver, which applies the access filter).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from fhir_server.search.compile import compile_filter, compile_sort
from fhir_server.search.parse import SearchRequest, parse_search
from fhir_server.search.registry import SearchRegistry

REGISTRY = SearchRegistry.load()


def _parse(resource_type: str | None, query: str) -> SearchRequest:
    params = [tuple(item.split("=", 1)) for item in query.split("&") if item]
    return parse_search(
        resource_type,
        params,  # type: ignore[arg-type]
        registry=REGISTRY,
        strict=True,
        base_url="http://x/fhir",
        now=datetime(2025, 1, 1, tzinfo=UTC),
    )


class RecordingResolver:
    """Answers sub-queries from a table and records them."""

    def __init__(self, answers: Mapping[str, list[str]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, Mapping[str, Any], str]] = []

    async def __call__(
        self, resource_type: str, query: Mapping[str, Any], *, field: str = "_id"
    ) -> list[str]:
        self.calls.append((resource_type, query, field))
        return list(self.answers.get(resource_type, []))


async def test_clauses_are_anded() -> None:
    request = _parse("DocumentReference", "patient=p1&status=current")
    assert await compile_filter(request, resolve=RecordingResolver({})) == {
        "idx.patient": "Patient/p1",
        "idx.status": "current",
    }


async def test_repeated_parameters_on_one_field_are_anded() -> None:
    request = _parse("DocumentReference", "status=current&status:not=superseded&patient=p1")
    assert await compile_filter(request, resolve=RecordingResolver({})) == {
        "$and": [
            {"idx.status": "current", "idx.patient": "Patient/p1"},
            {"idx.status": {"$nin": ["superseded"]}},
        ]
    }


async def test_no_criteria_gives_an_empty_filter() -> None:
    assert await compile_filter(_parse("Patient", "_count=3"), resolve=RecordingResolver({})) == {}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("birthdate:missing=true", {"idx.birthdate": {"$exists": False}}),
        ("identifier:missing=false", {"idx.identifier": {"$exists": True}}),
        ("_id=a,b", {"_id": {"$in": ["a", "b"]}}),
        ("_id:not=a", {"_id": {"$nin": ["a"]}}),
    ],
)
async def test_missing_and_id(query: str, expected: Any) -> None:
    assert await compile_filter(_parse("Patient", query), resolve=RecordingResolver({})) == expected


async def test_chain_resolves_the_target_ids_through_the_callback() -> None:
    resolver = RecordingResolver({"Patient": ["p1", "p2"]})
    request = _parse("DocumentReference", "patient.identifier=urn:ins|1")
    assert await compile_filter(request, resolve=resolver) == {
        "idx.patient": {"$in": ["Patient/p1", "Patient/p2"]}
    }
    assert resolver.calls == [("Patient", {"idx.identifier": "urn:ins|1"}, "_id")]


async def test_two_level_chain_resolves_inside_out() -> None:
    resolver = RecordingResolver({"Patient": ["p9"]})
    request = _parse("DocumentReference", "subject:Patient.link:Patient.family=dup")
    assert await compile_filter(request, resolve=resolver) == {"idx.subject": {"$in": ["Patient/p9"]}}
    assert [call[1] for call in resolver.calls] == [
        {"idx.family": {"$regex": "^dup"}},
        {"idx.link": {"$in": ["Patient/p9"]}},
    ]


async def test_chain_without_match_matches_nothing() -> None:
    request = _parse("DocumentReference", "patient.family=nobody")
    assert await compile_filter(request, resolve=RecordingResolver({})) == {"idx.patient": {"$in": []}}


async def test_has_keeps_the_ids_referenced_by_matching_resources() -> None:
    resolver = RecordingResolver(
        {"DocumentReference": ["Patient/p1", "Group/g1", "http://o/Patient/zz", "Patient/p3"]}
    )
    request = _parse("Patient", "_has:DocumentReference:patient:status=current")
    assert await compile_filter(request, resolve=resolver) == {"_id": {"$in": ["p1", "p3"]}}
    assert resolver.calls == [("DocumentReference", {"idx.status": "current"}, "idx.patient")]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", [("_id", 1)]),
        ("_sort=date", [("idx.date:lo", 1), ("_id", 1)]),
        ("_sort=-date", [("idx.date:hi", -1), ("_id", 1)]),
        ("_sort=-_lastUpdated,status", [("lu", -1), ("idx.status:sort", 1), ("_id", 1)]),
        ("_sort=-_id", [("_id", -1)]),
    ],
)
def test_sort_always_ends_with_a_unique_tie_breaker(query: str, expected: list[tuple[str, int]]) -> None:
    assert compile_sort(_parse("DocumentReference", query), REGISTRY) == expected
