"""Stored-document layout (docs/architecture.md): compartment, security labels, history ids, instants."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fhir_server.fhir.compartment import compartment
from fhir_server.fhir.instants import instant
from fhir_server.fhir.references import reference_id
from fhir_server.record.documents import StoredResource, to_document, to_history_document
from fhir_server.record.visibility import security_labels

TRE_A07 = (
    "https://mos.esante.gouv.fr/NOS/TRE_A07-StatutVisibiliteDocument/FHIR/TRE-A07-StatutVisibiliteDocument"
)


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        ({"resourceType": "Patient", "id": "p1"}, ["p1"]),
        ({"resourceType": "DocumentReference", "subject": {"reference": "Patient/p2"}}, ["p2"]),
        ({"resourceType": "DocumentReference", "subject": {"reference": "Group/g"}}, []),
        ({"resourceType": "Consent", "patient": {"reference": "http://x/fhir/Patient/p3"}}, ["p3"]),
        (
            {
                "resourceType": "AuditEvent",
                "entity": [
                    {"what": {"reference": "Patient/a"}},
                    {"what": {"reference": "DocumentReference/d"}},
                ],
                "agent": [{"who": {"reference": "Patient/b"}}],
            },
            ["a", "b"],
        ),
    ],
)
def test_compartment(resource: dict, expected: list[str]) -> None:
    assert compartment(resource) == expected


def test_security_labels_join_meta_security_and_document_labels() -> None:
    resource = {
        "resourceType": "DocumentReference",
        "meta": {
            "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]
        },
        "securityLabel": [{"coding": [{"system": TRE_A07, "code": "MASQUE_PS"}]}],
    }
    labels = security_labels(resource)
    assert f"{TRE_A07}|MASQUE_PS" in labels
    assert "MASQUE_PS" in labels
    assert "http://terminology.hl7.org/CodeSystem/v3-Confidentiality|R" in labels


def test_reference_id_ignores_version_and_other_types() -> None:
    assert reference_id({"reference": "Patient/x/_history/3"}, "Patient") == "x"
    assert reference_id({"reference": "Practitioner/x"}, "Patient") is None
    assert reference_id({"display": "no reference"}, "Patient") is None


def test_history_document_keys_by_version_and_round_trips() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=UTC)
    resource = {"resourceType": "Patient", "id": "p", "meta": {"versionId": "2"}}
    current = to_document(resource, version=2, last_updated=now, index={"gender": ["female"]})
    history = to_history_document(current)
    assert history["_id"] == "p/2"
    assert history["rid"] == "p"
    stored = StoredResource.from_document("Patient", history)
    assert (stored.id, stored.version, stored.compartment, stored.etag) == ("p", 2, ("p",), 'W/"2"')


def test_tombstone_keeps_compartment_and_drops_body() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    resource = {"resourceType": "DocumentReference", "id": "d", "subject": {"reference": "Patient/p"}}
    tombstone = to_document(resource, version=3, last_updated=now, index={"x": [1]}, deleted=True)
    assert tombstone["res"] is None and tombstone["idx"] == {} and tombstone["pat"] == ["p"]


def test_instant_is_utc_with_milliseconds() -> None:
    assert instant(datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)) == "2026-05-01T12:00:00.123Z"
