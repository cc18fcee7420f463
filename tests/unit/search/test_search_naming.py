"""The patients a search names (search/naming.py): what routes its AuditEvent to their trails."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fhir_server.search.naming import Naming, naming
from fhir_server.search.parse import parse_search
from fhir_server.search.registry import SearchRegistry

REGISTRY = SearchRegistry.load()
BASE = "http://fhir.example/fhir"
INS = "urn:oid:1.2.250.1.213.1.4.10"


def _named(resource_type: str | None, query: str) -> Naming:
    params = [(name, value) for name, _, value in (item.partition("=") for item in query.split("&"))]
    request = parse_search(
        resource_type,
        params,
        registry=REGISTRY,
        strict=True,
        base_url=BASE,
        now=datetime(2026, 1, 1, tzinfo=UTC),
    )
    return naming(request)


@pytest.mark.parametrize(
    ("resource_type", "query", "ids", "identifiers"),
    [
        ("Patient", "_id=a,b", {"a", "b"}, set()),
        ("Patient", f"identifier={INS}|1,{INS}|2", set(), {f"{INS}|1", f"{INS}|2"}),
        ("DocumentReference", "patient=a", {"a"}, set()),
        ("DocumentReference", "subject=Patient/a", {"a"}, set()),
        ("DocumentReference", f"{BASE}/Patient/a".join(("subject=", "")), {"a"}, set()),
        ("DocumentReference", f"patient.identifier={INS}|1", set(), {f"{INS}|1"}),
        ("DocumentReference", "patient._id=a", {"a"}, set()),
        ("DocumentReference", f"subject:identifier={INS}|1", set(), {f"{INS}|1"}),
        (None, "_type=Patient&_id=a", {"a"}, set()),
    ],
)
def test_a_query_names_the_patients_it_identifies(
    resource_type: str | None, query: str, ids: set[str], identifiers: set[str]
) -> None:
    named = _named(resource_type, query)
    assert (named.ids, named.identifiers) == (ids, identifiers)


@pytest.mark.parametrize(
    ("resource_type", "query"),
    [
        ("Patient", "_has:DocumentReference:subject:status=current"),
        ("Patient", "family=Martin"),
        ("Patient", f"identifier={INS}|"),
        ("Patient", f"identifier:not={INS}|1"),
        ("DocumentReference", "patient.family=Martin"),
        ("DocumentReference", "patient:missing=true"),
        ("DocumentReference", "author=Practitioner/x"),
    ],
)
def test_scanning_or_describing_patients_names_no_one(resource_type: str, query: str) -> None:
    named = _named(resource_type, query)
    assert (named.ids, named.identifiers) == (set(), set())
