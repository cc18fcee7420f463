"""SearchParameter registry and write-time index extraction.

Covers: STANDARDS.md §7 (parameters of Patient, DocumentReference, Consent, AuditEvent; common
parameters), §5.1 (MHD ITI-67 `creation`, ITI-66 List parameters), docs/architecture.md (normalised index
values, tokens as composed keys, dates as [low, high] ranges, references by type), R4 search.html.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_server.search.registry import SearchRegistry

REGISTRY = SearchRegistry.load()

STANDARD = {
    "Patient": "identifier active name family given birthdate gender address address-city address-country "
    "address-postalcode address-state address-use telecom email phone deceased death-date "
    "general-practitioner organization link language",
    "DocumentReference": "identifier patient subject status type category date period author authenticator "
    "custodian contenttype format language location description encounter event facility setting "
    "related relatesto relation security-label creation",
    "Consent": "patient status scope category identifier date actor action purpose security-label period "
    "data consentor organization source-reference",
    "AuditEvent": "date type subtype action outcome agent agent-name agent-role altid address entity "
    "entity-name entity-role entity-type patient policy site source",
    "List": "patient subject code status date identifier source item designationType sourceId",
}
COMMON = {"_id", "_lastUpdated", "_tag", "_security", "_profile", "_source"}


@pytest.mark.parametrize("resource_type", sorted(STANDARD))
def test_every_standard_parameter_and_the_common_ones_are_declared(resource_type: str) -> None:
    declared = set(REGISTRY.parameters_for(resource_type))
    assert declared == set(STANDARD[resource_type].split()) | COMMON


def test_binary_is_searchable_by_id_and_last_updated_only() -> None:
    assert set(REGISTRY.parameters_for("Binary")) == {"_id", "_lastUpdated"}


def test_mhd_creation_parameter_uses_the_ihe_canonical_url() -> None:
    creation = REGISTRY.parameter("DocumentReference", "creation")
    assert creation is not None
    assert creation.url == "https://profiles.ihe.net/ITI/MHD/SearchParameter/DocumentReference-Creation"
    assert creation.type == "date"


def test_id_and_last_updated_are_answered_by_document_fields() -> None:
    assert REGISTRY.parameter("Patient", "_id").field == "_id"  # type: ignore[union-attr]
    assert REGISTRY.parameter("Patient", "_lastUpdated").field == "lu"  # type: ignore[union-attr]
    assert REGISTRY.extract({"resourceType": "Patient", "id": "x", "meta": {"lastUpdated": "2024"}}) == {
        "deceased": "false",
        "deceased:sort": "false",
    }


def _dt(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


LOINC = "http://loinc.org"
DOC: dict[str, Any] = {
    "resourceType": "DocumentReference",
    "id": "d1",
    "meta": {"tag": [{"system": "urn:tag", "code": "t1"}], "profile": ["http://p/SD/x"], "source": "urn:src"},
    "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2"},
    "identifier": [
        {"system": "urn:sys", "value": "42", "type": {"coding": [{"system": "urn:t", "code": "MR"}]}}
    ],
    "status": "current",
    "type": {
        "coding": [{"system": LOINC, "code": "11488-4", "display": "Consult note"}],
        "text": "Consultation",
    },
    "subject": {"reference": "Patient/p1"},
    "date": "2024-03-01T10:00:00+02:00",
    "author": [
        {"reference": "Practitioner/pr1"},
        {"reference": "http://other.org/fhir/Patient/p9/_history/2"},
        {"identifier": {"system": "urn:rpps", "value": "810"}},
    ],
    "description": "Compte rendu Élodie",
    "content": [{"attachment": {"url": "Binary/b1", "creation": "2024-02"}, "format": {"code": "urn:x"}}],
    "context": {"period": {"start": "2024-02-01"}, "related": [{"reference": "#contained"}]},
}


@pytest.mark.parametrize(
    ("resource", "key", "expected"),
    [
        (DOC, "_tag", ["t1", "urn:tag|t1", "urn:tag|"]),
        (DOC, "_profile", "http://p/SD/x"),
        (DOC, "_source", "urn:src"),
        (
            DOC,
            "identifier",
            [
                "urn:oid:1.2",
                "urn:ietf:rfc:3986|urn:oid:1.2",
                "urn:ietf:rfc:3986|",
                "42",
                "urn:sys|42",
                "urn:sys|",
            ],
        ),
        (DOC, "identifier:of-type", ["urn:t|MR|42"]),
        (DOC, "status", "current"),
        (DOC, "type", ["11488-4", f"{LOINC}|11488-4", f"{LOINC}|"]),
        (DOC, "type:text", ["consult note", "consultation"]),
        (DOC, "patient", "Patient/p1"),
        (DOC, "subject", "Patient/p1"),
        (DOC, "author", ["Practitioner/pr1", "Patient/p9"]),
        (DOC, "author:identifier", ["810", "urn:rpps|810", "urn:rpps|"]),
        (DOC, "format", ["urn:x", "|urn:x"]),
        (DOC, "location", "Binary/b1"),
        (DOC, "description", "compte rendu elodie"),
        (DOC, "description:exact", ["Compte rendu Élodie"]),
        (DOC, "date", [{"lo": _dt(2024, 3, 1, 8), "hi": _dt(2024, 3, 1, 8, 0, 0, 999000)}]),
        (DOC, "creation", [{"lo": _dt(2024, 2, 1), "hi": _dt(2024, 2, 29, 23, 59, 59, 999000)}]),
        (DOC, "period", [{"lo": _dt(2024, 2, 1), "hi": _dt(9999, 12, 31, 23, 59, 59, 999000)}]),
        (DOC, "related", None),
        (
            {"resourceType": "DocumentReference", "subject": {"reference": "Group/g1"}},
            "patient",
            None,
        ),
        (
            {
                "resourceType": "Patient",
                "name": [{"use": "official", "family": "Dupont", "given": ["Jérôme", "Luc"]}],
            },
            "name",
            ["dupont", "jerome", "luc"],
        ),
        ({"resourceType": "Patient", "deceasedDateTime": "2020-05-01"}, "deceased", "true"),
        (
            {"resourceType": "Patient", "deceasedDateTime": "2020-05-01"},
            "death-date",
            [{"lo": _dt(2020, 5, 1), "hi": _dt(2020, 5, 1, 23, 59, 59, 999000)}],
        ),
        ({"resourceType": "Patient", "deceasedBoolean": False}, "deceased", "false"),
        ({"resourceType": "Patient", "active": True}, "active", "true"),
        (
            {
                "resourceType": "Patient",
                "telecom": [{"system": "email", "value": "a@b.fr"}, {"system": "phone", "value": "01"}],
            },
            "email",
            "a@b.fr",
        ),
        (
            {
                "resourceType": "AuditEvent",
                "agent": [{"who": {"reference": "Patient/1"}}, {"who": {"reference": "Practitioner/2"}}],
                "entity": [
                    {"what": {"reference": "Patient/3"}},
                    {"what": {"reference": "DocumentReference/4"}},
                ],
            },
            "patient",
            ["Patient/1", "Patient/3"],
        ),
        (
            {"resourceType": "Consent", "sourceReference": {"reference": "DocumentReference/x"}},
            "source-reference",
            "DocumentReference/x",
        ),
        (
            {
                "resourceType": "List",
                "extension": [
                    {
                        "url": "https://profiles.ihe.net/ITI/MHD/StructureDefinition/ihe-sourceId",
                        "valueIdentifier": {"value": "urn:oid:1.3"},
                    }
                ],
            },
            "sourceId",
            ["urn:oid:1.3", "|urn:oid:1.3"],
        ),
    ],
)
def test_extract_normalises_values_per_type(resource: dict[str, Any], key: str, expected: Any) -> None:
    assert REGISTRY.extract(resource).get(key) == expected


def test_extract_keeps_only_non_empty_entries() -> None:
    index = REGISTRY.extract({"resourceType": "DocumentReference", "status": "current"})
    assert index == {"status": "current", "status:sort": "current"}


def test_date_scalars_hold_lowest_low_and_highest_high() -> None:
    index = REGISTRY.extract(
        {
            "resourceType": "DocumentReference",
            "content": [{"attachment": {"creation": c}} for c in ("2023", "2021-06")],
        }
    )
    assert index["creation:lo"] == _dt(2021, 6, 1)
    assert index["creation:hi"] == _dt(2023, 12, 31, 23, 59, 59, 999000)


@pytest.mark.parametrize(
    "resource_type", ["Patient", "DocumentReference", "Consent", "AuditEvent", "List", "Binary"]
)
def test_indexes_never_pair_two_multi_valued_fields(resource_type: str) -> None:
    for keys in REGISTRY.index_keys(resource_type):
        arrays = [
            field for field, _ in keys if not field.endswith((":hi", ":lo", ":sort")) and field != "del"
        ]
        assert len(arrays) <= 1 or (
            arrays[0] == "idx.patient" and resource_type in ("DocumentReference", "Consent", "List")
        ), keys


def test_common_searches_have_an_index() -> None:
    keys = REGISTRY.index_keys("DocumentReference")
    assert [("idx.patient", 1), ("idx.status", 1), ("del", 1), ("vis", 1)] in keys
    assert [("idx.patient", 1), ("idx.type", 1), ("del", 1), ("idx.date:hi", 1)] in keys
    assert [("idx.identifier", 1), ("del", 1)] in keys
    assert [("idx.type", 1), ("del", 1), ("idx.date:hi", 1)] in keys


@pytest.mark.parametrize(
    "resource",
    [
        {"resourceType": "DocumentReference", "subject": {"reference": "http://a.org/fhir/Patient/1"}},
        {"resourceType": "DocumentReference", "subject": {"reference": "Patient/1/_history/3"}},
        {"resourceType": "Consent", "patient": {"reference": "Patient/1"}},
        {"resourceType": "List", "subject": {"reference": "Patient/1"}},
    ],
)
def test_patient_of_single_subject_types_is_one_scalar_key(resource: dict[str, Any]) -> None:
    assert REGISTRY.extract(resource)["patient"] == "Patient/1"


codings = st.lists(
    st.fixed_dictionaries(
        {"code": st.text("abc", min_size=1, max_size=3)},
        optional={"system": st.sampled_from(["urn:s1", "urn:s2", "urn:s3"]), "display": st.text(max_size=3)},
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(codings, min_size=1, max_size=3))
def test_token_keys_never_pair_a_system_with_another_codings_code(
    concepts: list[list[dict[str, str]]],
) -> None:
    resource = {
        "resourceType": "DocumentReference",
        "category": [{"coding": concept} for concept in concepts],
    }
    stored = REGISTRY.extract(resource)["category"]
    keys = {stored} if isinstance(stored, str) else set(stored)
    pairs = {f"{c.get('system', '')}|{c['code']}" for concept in concepts for c in concept}
    assert {key for key in keys if "|" in key and not key.endswith("|")} == pairs
