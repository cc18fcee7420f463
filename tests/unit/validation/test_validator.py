"""Validation entry points: parsing, type checks, realistic French resources, Bundles, 422.

Covers docs/architecture.md I5 and docs/architecture.md (400 unparseable, 422 invalid with expression),
STANDARDS §5.1 (ITI-65
Provide Document Bundle), §6 (INS, IDNPS), R4 Bundle rules bdl-1..bdl-7.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
import validation_examples as ex

import fhir_server.validation as validation
from fhir_server.audit.balp import InteractionFacts, build_audit_events
from fhir_server.auth.principal import Principal
from fhir_server.consent.model import Decision
from fhir_server.fhir.errors import FhirError, Issue
from fhir_server.fhir.interaction import Interaction
from fhir_server.validation import parse_resource_json, validate_or_raise, validate_resource


def _found(issues: list[Issue]) -> list[tuple[str, str]]:
    return [(issue.code, issue.expression[0]) for issue in issues]


@pytest.mark.parametrize(
    "build",
    [
        ex.patient,
        ex.document_reference,
        ex.consent,
        ex.binary,
        ex.submission_set,
        ex.folder,
        ex.provide_document_bundle,
    ],
)
def test_realistic_french_resource_is_valid(build: Any) -> None:
    assert validate_resource(build()) == []


@pytest.mark.parametrize(
    ("body", "diagnostics"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b'[{"resourceType": "Patient"}]', "must be a JSON object"),
        (b'"Patient"', "must be a JSON object"),
        (b'{"gender": "female"}', "no resourceType"),
        (b'{"resourceType": 3}', "no resourceType"),
        (b'{"resourceType": ""}', "no resourceType"),
    ],
)
def test_unparseable_body_is_400_structure(body: bytes, diagnostics: str) -> None:
    with pytest.raises(FhirError) as raised:
        parse_resource_json(body)
    assert raised.value.status == 400
    assert [issue.code for issue in raised.value.issues] == ["structure"]
    assert diagnostics in raised.value.message


def test_parsed_body_is_the_json_object() -> None:
    assert parse_resource_json(b'{"resourceType": "Binary", "contentType": "text/plain"}') == {
        "resourceType": "Binary",
        "contentType": "text/plain",
    }


def test_resource_type_other_than_the_url_type_is_refused_alone() -> None:
    issues = validate_resource({"resourceType": "Patient", "gender": "nope"}, expected_type="Consent")
    assert _found(issues) == [("invalid", "resourceType")]
    assert "Patient" in issues[0].diagnostics and "Consent" in issues[0].diagnostics


@pytest.mark.parametrize("resource_type", ["Observation", "Nope", "Parameters"])
def test_unsupported_resource_type_is_refused(resource_type: str) -> None:
    assert _found(validate_resource({"resourceType": resource_type})) == [("not-supported", resource_type)]


def test_resource_without_type_is_a_structure_error() -> None:
    assert _found(validate_resource({"gender": "male"})) == [("structure", "resourceType")]


def test_validate_or_raise_returns_a_valid_resource() -> None:
    resource = ex.patient()
    assert validate_or_raise(resource, expected_type="Patient") == resource


def test_validate_or_raise_refuses_with_422_and_every_issue() -> None:
    resource = ex.document_reference()
    del resource["status"]
    resource["subject"] = {"reference": "Group/g1"}
    with pytest.raises(FhirError) as raised:
        validate_or_raise(resource, expected_type="DocumentReference")
    assert raised.value.status == 422
    assert _found(raised.value.issues) == [
        ("required", "DocumentReference.status"),
        ("value", "DocumentReference.subject.reference"),
    ]
    assert all(issue.severity == "error" for issue in raised.value.issues)


def _bundle_with(change: Any) -> dict[str, Any]:
    bundle = ex.provide_document_bundle()
    change(bundle)
    return bundle


def _set(path: list[Any], value: Any) -> Any:
    def change(bundle: dict[str, Any]) -> None:
        node: Any = bundle
        for step in path[:-1]:
            node = node[step]
        if value is _DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value

    return change


_DELETE = object()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            _set(["entry", 1, "resource", "status"], "draft"),
            [("code-invalid", "Bundle.entry[1].resource.status")],
        ),
        (_set(["entry", 1, "resource", "type"], _DELETE), [("required", "Bundle.entry[1].resource.type")]),
        (
            _set(["entry", 3, "resource", "identifier", 0, "value"], "285037510234554"),
            [("value", "Bundle.entry[3].resource.identifier[0].value")],
        ),
        (
            _set(["entry", 2, "resource", "contentType"], _DELETE),
            [("required", "Bundle.entry[2].resource.contentType")],
        ),
        (_set(["entry", 0, "resource", "mode"], "snapshot"), [("value", "Bundle.entry[0].resource.mode")]),
        (_set(["type"], "collection"), [("value", "Bundle.type")]),
        (_set(["type"], "bogus"), [("code-invalid", "Bundle.type")]),
        (_set(["total"], 4), [("invariant", "Bundle.total")]),
        (_set(["entry", 2, "fullUrl"], ex.LIST_UUID), [("invariant", "Bundle.entry[2].fullUrl")]),
        (_set(["entry", 2, "request"], _DELETE), [("required", "Bundle.entry[2].request")]),
        (_set(["entry", 2, "response"], {"status": "201"}), [("invariant", "Bundle.entry[2].response")]),
        (_set(["entry", 2, "search"], {"mode": "match"}), [("invariant", "Bundle.entry[2].search")]),
        (
            _set(["entry", 2, "request", "method"], "SEND"),
            [("code-invalid", "Bundle.entry[2].request.method")],
        ),
        (_set(["entry", 2, "request", "url"], "Patient"), [("value", "Bundle.entry[2].request.url")]),
        (_set(["entry", 2, "resource"], _DELETE), [("required", "Bundle.entry[2].resource")]),
        (
            _set(["entry", 2, "resource"], {"resourceType": "Observation", "status": "final"}),
            [("not-supported", "Bundle.entry[2].resource")],
        ),
        (
            _set(["entry", 2, "resource"], {"resourceType": "Bundle", "type": "batch"}),
            [("not-supported", "Bundle.entry[2].resource")],
        ),
        (_set(["entry", 2, "resource"], "Binary"), [("structure", "Bundle.entry[2].resource")]),
        (_set(["entry", 0, "unknown"], 1), [("structure", "Bundle.entry[0].unknown")]),
        (_set(["entry"], []), [("structure", "Bundle.entry")]),
    ],
)
def test_bundle_problem_is_reported_at_its_entry(change: Any, expected: list[tuple[str, str]]) -> None:
    assert _found(validate_resource(_bundle_with(change))) == expected


def test_bundle_reports_problems_of_several_entries_at_once() -> None:
    bundle = ex.provide_document_bundle()
    bundle["entry"][1]["resource"]["status"] = "draft"
    bundle["entry"][3]["resource"]["gender"] = "F"
    assert _found(validate_resource(bundle)) == [
        ("code-invalid", "Bundle.entry[1].resource.status"),
        ("code-invalid", "Bundle.entry[3].resource.gender"),
    ]


def test_batch_delete_and_read_entries_need_no_resource() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "DELETE", "url": "Consent/c1"}},
            {
                "request": {
                    "method": "GET",
                    "url": "Patient?identifier=urn:oid:1.2.250.1.213.1.4.10|285037510234553",
                }
            },
            {"request": {"method": "PUT", "url": "Patient?identifier=x|y"}, "resource": ex.patient()},
        ],
    }
    assert validate_resource(bundle) == []


def test_transaction_patch_entry_carries_a_binary_json_patch() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {
                    "resourceType": "Binary",
                    "contentType": "application/json-patch+json",
                    "data": "W10=",
                },
                "request": {"method": "PATCH", "url": "DocumentReference/doc-1"},
            }
        ],
    }
    assert validate_resource(bundle) == []


def _principal() -> Principal:
    return Principal.from_claims(
        {
            "sub": "pr-1",
            "client_id": "dpi-hopital",
            "scope": "user/DocumentReference.rs",
            "fhirUser": "Practitioner/pr-1",
            "extensions": {
                "ihe_iua": {
                    "subject_name": "Dr Paul LEROY",
                    "subject_role": [
                        {
                            "system": "https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante",
                            "code": "10",
                        }
                    ],
                    "subject_organization": "CHU Exemple",
                    "subject_organization_id": "urn:oid:1.2.250.1.71.4.2.2|1750000000",
                    "purpose_of_use": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "BTG"}
                    ],
                    "national_provider_identifier": ex.IDNPS_VALUE,
                }
            },
        },
        network_address="192.0.2.10",
    )


@pytest.mark.parametrize(
    ("interaction", "status", "extra"),
    [
        (
            Interaction.READ,
            200,
            {"resource_type": "DocumentReference", "resource_id": "doc-1", "version_id": "2"},
        ),
        (
            Interaction.SEARCH_TYPE,
            200,
            {
                "resource_type": "DocumentReference",
                "raw_query": b"GET /fhir/DocumentReference?patient=pat-1&status=current",
                "mhd_transaction": "ITI-67",
            },
        ),
        (
            Interaction.CREATE,
            403,
            {"resource_type": "Consent", "outcome_desc": "scope does not allow Consent create"},
        ),
        (
            Interaction.TRANSACTION,
            200,
            {"mhd_transaction": "ITI-65", "resources": ("List/l1", "DocumentReference/doc-1")},
        ),
    ],
)
def test_server_built_balp_audit_event_is_valid(
    interaction: Interaction, status: int, extra: dict[str, Any]
) -> None:
    facts = InteractionFacts(
        interaction=interaction,
        status=status,
        recorded=datetime(2024, 1, 15, 9, 30, tzinfo=UTC),
        server="https://fhir.example.fr/fhir",
        principal=_principal(),
        client_address="192.0.2.10",
        patient_ids=("pat-1",),
        request_id="req-123",
        decisions=(Decision.allow("consent", consents=("Consent/c1",), break_the_glass=True),),
        **extra,
    )
    for event in build_audit_events(facts):
        assert validate_resource(event, expected_type="AuditEvent") == []


def test_validation_does_not_change_the_resource() -> None:
    resource = ex.provide_document_bundle()
    before = copy.deepcopy(resource)
    validate_resource(resource)
    assert resource == before


def test_package_exports_its_public_api() -> None:
    for name in validation.__all__:
        assert hasattr(validation, name), name
    assert {"parse_resource_json", "validate_resource", "validate_or_raise"} <= set(validation.__all__)
