"""Scopes confine: the `patient/` compartment and SMART v2 `?param=value` restrictions, as a query
filter and as the same test on one resource (reads and writes)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from fhir_server.auth.filter_match import matches
from fhir_server.auth.principal import Principal
from fhir_server.auth.scopes import parse_scopes
from fhir_server.fhir.interaction import Interaction
from fhir_server.interactions.confinement import Confinement, ScopeLimits, within
from fhir_server.record.documents import StoredResource
from fhir_server.search.registry import SearchRegistry

LOINC = "http://loinc.org"
REGISTRY = SearchRegistry.load()
LIMITS = ScopeLimits(REGISTRY, "http://server/fhir")
NOW = datetime(2025, 1, 1, tzinfo=UTC)


def _document(
    patient: str, code: str, *, status: str = "current", date: str = "2024-05-01"
) -> StoredResource:
    resource: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "id": f"d-{patient}-{code}",
        "status": status,
        "type": {"coding": [{"system": LOINC, "code": code}]},
        "category": [{"coding": [{"system": LOINC, "code": code}]}],
        "subject": {"reference": f"Patient/{patient}"},
        "date": f"{date}T10:00:00Z",
        "content": [{"attachment": {"contentType": "text/plain"}}],
    }
    return StoredResource.prospective(
        "DocumentReference", resource, version=1, now=NOW, index=REGISTRY.extract(resource)
    )


def _confinement(
    scopes: str, *, patient: str | None = None, interaction: Interaction = Interaction.READ
) -> Confinement:
    principal = Principal(
        subject="u",
        client_id="c",
        scopes=parse_scopes(scopes),
        fhir_user="Practitioner/dr",
        patient=patient,
    )
    return asyncio.run(LIMITS.confinement(principal, interaction, "DocumentReference"))


@pytest.mark.parametrize(
    ("scopes", "patient", "document", "visible"),
    [
        ("user/DocumentReference.rs", None, _document("a", "11488-4"), True),
        ("patient/DocumentReference.rs", "a", _document("a", "11488-4"), True),
        ("patient/DocumentReference.rs", "a", _document("b", "11488-4"), False),
        ("patient/*.rs", "a", _document("b", "11488-4"), False),
        ("patient/*.rs", None, _document("a", "11488-4"), False),
        ("patient/DocumentReference.rs user/DocumentReference.r", "a", _document("b", "1"), True),
        (f"user/DocumentReference.rs?category={LOINC}|11488-4", None, _document("a", "11488-4"), True),
        (f"user/DocumentReference.rs?category={LOINC}|11488-4", None, _document("a", "18842-5"), False),
        ("user/DocumentReference.rs?category=11488-4", None, _document("a", "11488-4"), True),
        (f"user/DocumentReference.rs?category={LOINC}|", None, _document("a", "18842-5"), True),
        ("user/DocumentReference.rs?status=current&type=18842-5", None, _document("a", "18842-5"), True),
        ("user/DocumentReference.rs?status=current&type=18842-5", None, _document("a", "1"), False),
        ("user/DocumentReference.rs?status=superseded", None, _document("a", "1"), False),
        ("user/DocumentReference.rs?status:not=superseded", None, _document("a", "1"), True),
        ("user/DocumentReference.rs?date=ge2024-01-01", None, _document("a", "1"), True),
        ("user/DocumentReference.rs?date=lt2024-01-01", None, _document("a", "1"), False),
        ("user/DocumentReference.rs?date=2024-05", None, _document("a", "1"), True),
        ("user/DocumentReference.rs?subject=Patient/a", None, _document("a", "1"), True),
        ("user/DocumentReference.rs?subject=Patient/a", None, _document("b", "1"), False),
        (f"patient/DocumentReference.rs?category={LOINC}|1", "a", _document("a", "1"), True),
        (f"patient/DocumentReference.rs?category={LOINC}|1", "a", _document("b", "1"), False),
        (f"patient/DocumentReference.rs?category={LOINC}|1", "a", _document("a", "2"), False),
        (
            "user/DocumentReference.rs?category=1 user/DocumentReference.rs?category=2",
            None,
            _document("a", "2"),
            True,
        ),
        # restrictions that cannot be enforced grant nothing
        ("user/DocumentReference.rs?nonsense=1", None, _document("a", "1"), False),
        ("user/DocumentReference.rs?patient.identifier=x|1", None, _document("a", "1"), False),
        ("user/DocumentReference.rs?_has:List:item:status=current", None, _document("a", "1"), False),
        ("user/DocumentReference.rs?status:below=current", None, _document("a", "1"), False),
        ("user/DocumentReference.rs?_count=1", None, _document("a", "1"), False),
        ("user/DocumentReference.rs?date=yesterday", None, _document("a", "1"), False),
        ("user/Patient.rs", None, _document("a", "1"), False),
    ],
)
def test_scopes_confine_reads(
    scopes: str, patient: str | None, document: StoredResource, visible: bool
) -> None:
    assert within(_confinement(scopes, patient=patient), document) is visible


def test_a_write_is_confined_by_the_scopes_of_its_letter() -> None:
    scopes = f"user/DocumentReference.r user/DocumentReference.c?category={LOINC}|1"
    assert within(_confinement(scopes, interaction=Interaction.CREATE), _document("a", "1"))
    assert not within(_confinement(scopes, interaction=Interaction.CREATE), _document("a", "2"))
    assert within(_confinement(scopes, interaction=Interaction.READ), _document("a", "2"))


def test_audit_trail_needs_an_explicit_scope() -> None:
    principal = Principal(subject="u", client_id="c", scopes=parse_scopes("user/*.cruds"))
    assert asyncio.run(LIMITS.confinement(principal, Interaction.SEARCH_TYPE, "AuditEvent")) is None
    named = Principal(subject="u", client_id="c", scopes=parse_scopes("user/AuditEvent.rs"))
    assert asyncio.run(LIMITS.confinement(named, Interaction.SEARCH_TYPE, "AuditEvent")) == {}


@pytest.mark.parametrize(
    ("query", "document", "matched"),
    [
        ({"a": 1}, {"a": 1}, True),
        ({"a": 1}, {"a": [2, 1]}, True),
        ({"a": 1}, {}, False),
        ({"a": True}, {"a": 1}, False),
        ({"a": {"$in": [1, 2]}}, {"a": [3, 2]}, True),
        ({"a": {"$nin": [1]}}, {}, True),
        ({"a": {"$nin": [1]}}, {"a": [1, 2]}, False),
        ({"a": {"$ne": 1}}, {"a": 2}, True),
        ({"a": {"$exists": False}}, {"a": None}, False),
        ({"a": {"$exists": True}}, {"b": 1}, False),
        ({"a.b": {"$gte": 2, "$lt": 5}}, {"a": [{"b": 1}, {"b": 3}]}, True),
        ({"a": {"$gt": "2"}}, {"a": 3}, False),
        ({"a": {"$regex": "^ab"}}, {"a": ["x", "abc"]}, True),
        ({"a": {"$not": {"$regex": "^ab"}}}, {"a": "abc"}, False),
        (
            {"a": {"$elemMatch": {"lo": {"$lte": 2}, "hi": {"$gte": 2}}}},
            {"a": [{"lo": 0, "hi": 1}, {"lo": 2, "hi": 3}]},
            True,
        ),
        ({"a": {"$elemMatch": {"lo": {"$lte": 2}, "hi": {"$gte": 4}}}}, {"a": [{"lo": 0, "hi": 5}]}, True),
        (
            {"a": {"$elemMatch": {"lo": {"$gte": 2}, "hi": {"$lte": 1}}}},
            {"a": [{"lo": 0, "hi": 1}, {"lo": 2, "hi": 3}]},
            False,
        ),
        ({"$or": [{"a": 1}, {"b": 1}]}, {"b": 1}, True),
        ({"$and": [{"a": 1}, {"b": 1}]}, {"b": 1}, False),
        ({"$nor": [{"a": 1}]}, {"a": 2}, True),
    ],
)
def test_filter_match_follows_mongodb_semantics(
    query: dict[str, Any], document: dict[str, Any], matched: bool
) -> None:
    assert matches(query, document) is matched


def test_an_operator_it_cannot_read_is_an_error_not_a_match() -> None:
    with pytest.raises(ValueError):
        matches({"a": {"$where": "true"}}, {"a": 1})
    document = _document("a", "1")
    assert not within({"idx.status": {"$where": "1"}}, document)
