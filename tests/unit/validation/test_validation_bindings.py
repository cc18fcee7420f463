"""Required code bindings of R4 on our resources and their datatypes.

Covers https://hl7.org/fhir/R4/terminologies.html#required for Patient, DocumentReference, Consent,
List, Bundle, AuditEvent and Identifier / HumanName / ContactPoint / Address / Narrative / Quantity;
STANDARDS §1.1-1.2 (Consent.status, provision.type, provision.data.meaning).
"""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from fhir_server.validation import REQUIRED_BINDINGS, validate_resource
from fhir_server.validation.structure import model_spec, structure_issues

_R4B_DIFFERS = frozenset(
    {"AuditEvent.action", "AuditEvent.outcome", "AuditEvent.agent.network.type", "Quantity.comparator"}
)
"""fhir.resources R4B gives no code list for these elements; the R4 codes of the table are kept."""

CONSENT_BASE: dict[str, Any] = {
    "resourceType": "Consent",
    "status": "active",
    "scope": {"text": "x"},
    "category": [{"text": "x"}],
}


@pytest.mark.parametrize(
    ("resource", "expression"),
    [
        ({"resourceType": "Patient", "gender": "F"}, "Patient.gender"),
        ({"resourceType": "Patient", "contact": [{"gender": "homme"}]}, "Patient.contact[0].gender"),
        (
            {"resourceType": "Patient", "link": [{"type": "same", "other": {"reference": "Patient/1"}}]},
            "Patient.link[0].type",
        ),
        (
            {"resourceType": "Patient", "identifier": [{"use": "primary", "value": "1"}]},
            "Patient.identifier[0].use",
        ),
        ({"resourceType": "Patient", "name": [{"use": "birth", "family": "DUPONT"}]}, "Patient.name[0].use"),
        (
            {"resourceType": "Patient", "telecom": [{"system": "mobile", "value": "06"}]},
            "Patient.telecom[0].system",
        ),
        ({"resourceType": "Patient", "telecom": [{"use": "cell", "value": "06"}]}, "Patient.telecom[0].use"),
        (
            {"resourceType": "Patient", "address": [{"use": "main", "city": "Paris"}]},
            "Patient.address[0].use",
        ),
        (
            {"resourceType": "Patient", "address": [{"type": "home", "city": "Paris"}]},
            "Patient.address[0].type",
        ),
        (
            {
                "resourceType": "Patient",
                "text": {"status": "done", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'},
            },
            "Patient.text.status",
        ),
        (
            {
                "resourceType": "Patient",
                "extension": [
                    {"url": "http://example.org/w", "valueQuantity": {"value": 1, "comparator": "=="}}
                ],
            },
            "Patient.extension[0].value.ofType(Quantity).comparator",
        ),
        (
            {
                "resourceType": "Patient",
                "extension": [{"url": "http://example.org/a", "valueAge": {"value": 1, "comparator": "~"}}],
            },
            "Patient.extension[0].value.ofType(Age).comparator",
        ),
        (
            {
                "resourceType": "Patient",
                "managingOrganization": {"identifier": {"use": "main", "value": "1"}},
            },
            "Patient.managingOrganization.identifier.use",
        ),
        (
            {"resourceType": "DocumentReference", "status": "active", "content": [{"attachment": {}}]},
            "DocumentReference.status",
        ),
        (
            {
                "resourceType": "DocumentReference",
                "status": "current",
                "docStatus": "draft",
                "content": [{"attachment": {"url": "x"}}],
            },
            "DocumentReference.docStatus",
        ),
        (
            {
                "resourceType": "DocumentReference",
                "status": "current",
                "relatesTo": [{"code": "supersedes", "target": {"reference": "DocumentReference/1"}}],
                "content": [{"attachment": {"url": "x"}}],
            },
            "DocumentReference.relatesTo[0].code",
        ),
        ({**CONSENT_BASE, "status": "revoked"}, "Consent.status"),
        ({**CONSENT_BASE, "provision": {"type": "allow"}}, "Consent.provision.type"),
        (
            {**CONSENT_BASE, "provision": {"type": "permit", "provision": [{"type": "refuse"}]}},
            "Consent.provision.provision[0].type",
        ),
        (
            {
                **CONSENT_BASE,
                "provision": {
                    "type": "permit",
                    "provision": [{"type": "deny", "provision": [{"type": "Permit"}]}],
                },
            },
            "Consent.provision.provision[0].provision[0].type",
        ),
        (
            {
                **CONSENT_BASE,
                "provision": {
                    "data": [{"meaning": "self", "reference": {"reference": "DocumentReference/1"}}]
                },
            },
            "Consent.provision.data[0].meaning",
        ),
        ({"resourceType": "List", "status": "active", "mode": "working"}, "List.status"),
        ({"resourceType": "List", "status": "current", "mode": "draft"}, "List.mode"),
        ({"resourceType": "Bundle", "type": "Transaction"}, "Bundle.type"),
        (
            {
                "resourceType": "Bundle",
                "type": "batch",
                "entry": [{"request": {"method": "post", "url": "Patient"}}],
            },
            "Bundle.entry[0].request.method",
        ),
        (
            {"resourceType": "Bundle", "type": "searchset", "entry": [{"search": {"mode": "hit"}}]},
            "Bundle.entry[0].search.mode",
        ),
        ({"resourceType": "AuditEvent", "action": "X"}, "AuditEvent.action"),
        ({"resourceType": "AuditEvent", "outcome": "1"}, "AuditEvent.outcome"),
        (
            {"resourceType": "AuditEvent", "agent": [{"requestor": True, "network": {"type": "ip"}}]},
            "AuditEvent.agent[0].network.type",
        ),
    ],
)
def test_code_outside_a_required_value_set_is_refused(resource: dict[str, Any], expression: str) -> None:
    invalid = [issue for issue in structure_issues(resource) if issue.code == "code-invalid"]
    assert [issue.expression[0] for issue in invalid] == [expression]
    assert "http://hl7.org/fhir/ValueSet/" in invalid[0].diagnostics


@pytest.mark.parametrize("binding", REQUIRED_BINDINGS, ids=lambda binding: binding.path)
def test_binding_is_attached_to_its_element(binding: Any) -> None:
    model = get_fhir_model_class(binding.model_name)
    assert model_spec(model).fields[binding.element].binding == binding


@pytest.mark.parametrize("binding", REQUIRED_BINDINGS, ids=lambda binding: binding.path)
def test_binding_table_matches_an_element_of_the_r4b_models(binding: Any) -> None:
    model = get_fhir_model_class(binding.model_name)
    field = next(f for f in model.model_fields.values() if f.alias == binding.element)
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    enum_values = extra.get("enum_values")
    if binding.path in _R4B_DIFFERS:
        return
    assert enum_values is not None
    assert binding.codes == set(enum_values)


def test_a_valid_code_in_a_required_binding_passes() -> None:
    resource = {
        "resourceType": "Patient",
        "gender": "unknown",
        "name": [{"use": "maiden", "family": "DURAND"}],
    }
    assert validate_resource(resource) == []
