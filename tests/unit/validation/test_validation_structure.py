"""R4 JSON structure against the fhir.resources R4B models, with FHIRPath expressions.

Covers https://hl7.org/fhir/R4/json.html (JSON types, no null, no empty objects or arrays, `_x`
primitive extensions, choice elements), element cardinality, docs/architecture.md (422 with `expression`).
"""

from __future__ import annotations

from typing import Any

import pytest

from fhir_server.fhir.errors import Issue
from fhir_server.validation.structure import expression_of, resource_model, structure_issues


def _found(issues: list[Issue]) -> list[tuple[str, str]]:
    return [(issue.code, issue.expression[0]) for issue in issues]


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        ({"resourceType": "Patient", "active": "yes"}, [("structure", "Patient.active")]),
        ({"resourceType": "Patient", "active": "true"}, [("structure", "Patient.active")]),
        (
            {"resourceType": "Patient", "multipleBirthInteger": "2"},
            [("structure", "Patient.multipleBirth.ofType(integer)")],
        ),
        (
            {"resourceType": "Patient", "multipleBirthInteger": True},
            [("structure", "Patient.multipleBirth.ofType(integer)")],
        ),
        (
            {"resourceType": "Patient", "identifier": [{"system": "urn:x", "value": 3}]},
            [("structure", "Patient.identifier[0].value")],
        ),
        ({"resourceType": "Patient", "identifier": {"value": "x"}}, [("structure", "Patient.identifier")]),
        ({"resourceType": "Patient", "gender": ["male"]}, [("structure", "Patient.gender")]),
        ({"resourceType": "Patient", "name": [{"given": "Marie"}]}, [("structure", "Patient.name[0].given")]),
        ({"resourceType": "Patient", "name": ["DUPONT"]}, [("structure", "Patient.name[0]")]),
        ({"resourceType": "Patient", "identifier": []}, [("structure", "Patient.identifier")]),
        ({"resourceType": "Patient", "address": [{}]}, [("structure", "Patient.address[0]")]),
        ({"resourceType": "Patient", "birthDate": None}, [("structure", "Patient.birthDate")]),
        ({"resourceType": "Patient", "nickname": "Mimi"}, [("structure", "Patient.nickname")]),
        ({"resourceType": "Patient", "fhir_comments": "x"}, [("structure", "Patient.fhir_comments")]),
        ({"resourceType": "Patient", "photo": [{"url": 5}]}, [("structure", "Patient.photo[0].url")]),
        (
            {"resourceType": "Patient", "extension": [{"url": "http://example.org/x", "valueString": 5}]},
            [("structure", "Patient.extension[0].value.ofType(string)")],
        ),
        (
            {
                "resourceType": "Patient",
                "extension": [{"url": "http://example.org/x", "valueString": "a", "valueBoolean": True}],
            },
            [("structure", "Patient.extension[0].value")],
        ),
        (
            {"resourceType": "Patient", "extension": [{"valueString": "a"}]},
            [("required", "Patient.extension[0].url")],
        ),
        (
            {"resourceType": "Patient", "deceasedBoolean": True, "deceasedDateTime": "2020-01-01"},
            [("structure", "Patient.deceased")],
        ),
        (
            {"resourceType": "Patient", "_birthDate": {"extension": [{"url": 1}]}},
            [("structure", "Patient.birthDate.extension[0].url")],
        ),
        (
            {"resourceType": "Patient", "name": [{"given": ["a", "b"], "_given": [None, {"id": 7}]}]},
            [("structure", "Patient.name[0].given[1].id")],
        ),
        ({"resourceType": "Patient", "link": [{"type": "seealso"}]}, [("required", "Patient.link[0].other")]),
        (
            {"resourceType": "Patient", "contained": [{"resourceType": "Nope"}]},
            [("structure", "Patient.contained[0]")],
        ),
        (
            {"resourceType": "Patient", "contained": [{"resourceType": "Practitioner", "active": 1}]},
            [("structure", "Patient.contained[0].active")],
        ),
        ({"resourceType": "Patient", "birthDate": "2020-13-01"}, [("value", "Patient.birthDate")]),
        ({"resourceType": "Patient", "birthDate": "14/03/1985"}, [("value", "Patient.birthDate")]),
        ({"resourceType": "Patient", "id": "a b"}, [("value", "Patient.id")]),
        (
            {"resourceType": "Patient", "meta": {"lastUpdated": "2024-01-01"}},
            [("value", "Patient.meta.lastUpdated")],
        ),
        ({"resourceType": "Patient", "gender": ""}, [("code-invalid", "Patient.gender")]),
        ({"resourceType": "Patient", "name": [{"family": ""}]}, [("value", "Patient.name[0].family")]),
        (
            {"resourceType": "DocumentReference"},
            [("required", "DocumentReference.content"), ("required", "DocumentReference.status")],
        ),
        (
            {
                "resourceType": "DocumentReference",
                "status": "current",
                "content": [
                    {"attachment": {"creation": "2024-01-15T25:00:00Z", "contentType": "text/plain"}}
                ],
            },
            [("value", "DocumentReference.content[0].attachment.creation")],
        ),
        (
            {
                "resourceType": "Consent",
                "status": "active",
                "scope": {"text": "x"},
                "category": [{"text": "x"}],
                "provision": {"actor": [{"reference": {"reference": "Practitioner/1"}}]},
            },
            [("required", "Consent.provision.actor[0].role")],
        ),
        ({"resourceType": "Binary"}, [("required", "Binary.contentType")]),
        (
            {"resourceType": "AuditEvent", "action": "R"},
            [
                ("required", "AuditEvent.agent"),
                ("required", "AuditEvent.recorded"),
                ("required", "AuditEvent.source"),
                ("required", "AuditEvent.type"),
            ],
        ),
    ],
)
def test_structure_problem_is_reported_with_its_expression(
    resource: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    assert _found(structure_issues(resource)) == expected


def test_all_problems_are_reported_together() -> None:
    resource = {
        "resourceType": "DocumentReference",
        "date": "yesterday",
        "subject": {"reference": 12},
        "content": [{"attachment": {"size": "12"}}],
        "custodian": {},
    }
    assert _found(structure_issues(resource)) == [
        ("structure", "DocumentReference.subject.reference"),
        ("structure", "DocumentReference.content[0].attachment.size"),
        ("structure", "DocumentReference.custodian"),
        ("required", "DocumentReference.status"),
        ("value", "DocumentReference.date"),
    ]


def test_root_prefixes_every_expression() -> None:
    issues = structure_issues({"resourceType": "Binary", "data": 1}, root="Bundle.entry[3].resource")
    assert _found(issues) == [
        ("structure", "Bundle.entry[3].resource.data"),
        ("required", "Bundle.entry[3].resource.contentType"),
    ]


def test_primitive_extension_without_value_satisfies_a_required_element() -> None:
    absent = {
        "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}
        ]
    }
    assert structure_issues({"resourceType": "Binary", "_contentType": absent}) == []


def test_nested_resources_can_be_left_to_a_separate_check() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"resource": {"resourceType": "Patient", "gender": 1}}],
    }
    assert _found(structure_issues(bundle)) == [("structure", "Bundle.entry[0].resource.gender")]
    assert structure_issues(bundle, nested_resources=False) == []


@pytest.mark.parametrize(
    ("loc", "expected"),
    [
        (("identifier", 0, "value"), "Patient.identifier[0].value"),
        (("_birthDate", "extension", 0, "url"), "Patient.birthDate.extension[0].url"),
        (
            ("extension", 1, "valueCodeableConcept", "coding", 0),
            "Patient.extension[1].value.ofType(CodeableConcept).coding[0]",
        ),
        (("deceasedDateTime",), "Patient.deceased.ofType(dateTime)"),
        (("contained", 0, "name", 0, "family"), "Patient.contained[0].name[0].family"),
        ((), "Patient"),
    ],
)
def test_pydantic_location_becomes_a_fhirpath_expression(loc: tuple[int | str, ...], expected: str) -> None:
    data = {
        "resourceType": "Patient",
        "contained": [{"resourceType": "Practitioner", "name": [{"family": 1}]}],
    }
    model = resource_model("Patient")
    assert model is not None
    assert expression_of(loc, root="Patient", model=model, data=data) == expected


@pytest.mark.parametrize("name", ["Patient", "Bundle", "AuditEvent", "List"])
def test_resource_model_knows_resource_types(name: str) -> None:
    model = resource_model(name)
    assert model is not None and model.__name__ == name


@pytest.mark.parametrize("name", ["HumanName", "Nope", "patient"])
def test_resource_model_refuses_what_is_not_a_resource_type(name: str) -> None:
    assert resource_model(name) is None
