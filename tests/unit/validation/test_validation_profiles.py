"""The profiles of `profiles/`: StructureDefinition and JSON Schema, applied per resource type.

Covers STANDARDS §1.1-1.2 (Consent: PCF-style scope, category, patient, typed provisions, actor role
and reference, ppc-1), §5.1 (MHD DocumentReference and SubmissionSet / Folder List), §5.2 (DMP
security labels, TRE_A07), issue 2 (Validation: DocumentReference status, subject, type,
content.attachment.contentType). Each JSON Schema rule names the StructureDefinition constraint it
enforces, and that FHIRPath constraint (fhirpathpy) must agree with it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import validation_examples as ex
from fhirpathpy import evaluate
from jsonschema import Draft202012Validator

from fhir_server.fhir.errors import Issue
from fhir_server.paths import PROFILES_DIR
from fhir_server.validation import server_profiles, validate_resource
from fhir_server.validation.profiles import load_profiles
from fhir_server.validation.structure import structure_issues

CANONICAL_BASE = "https://fhir-server.example.org/StructureDefinition/"
EXPECTED_PROFILES = {
    "Patient": "fhir-server-patient",
    "DocumentReference": "fhir-server-documentreference",
    "Consent": "fhir-server-consent",
    "Binary": "fhir-server-binary",
    "List": "fhir-server-list",
}


def _definitions() -> dict[str, dict[str, Any]]:
    return {
        path.name.removesuffix(".structuredefinition.json"): json.loads(path.read_text(encoding="utf-8"))
        for path in PROFILES_DIR.glob("*.structuredefinition.json")
    }


def _found(issues: list[Issue]) -> list[tuple[str, str]]:
    return [(issue.code, issue.expression[0]) for issue in issues]


def _constraint(definition: dict[str, Any], key: str) -> tuple[str, str]:
    for element in definition["differential"]["element"]:
        for constraint in element.get("constraint", []):
            if constraint["key"] == key:
                return element["path"], constraint["expression"]
    raise AssertionError(f"no constraint {key}")


def _constraint_holds(definition: dict[str, Any], key: str, resource: dict[str, Any]) -> bool:
    path, expression = _constraint(definition, key)
    nodes = evaluate(resource, path) if "." in path else [resource]
    return all(evaluate(node, expression) == [True] for node in nodes)


def test_one_profile_per_type_with_a_consistent_canonical() -> None:
    profiles = server_profiles()
    assert {t: p.name for t, p in profiles.items()} == EXPECTED_PROFILES
    for resource_type, profile in profiles.items():
        assert profile.url == CANONICAL_BASE + profile.name
        assert profile.type == resource_type


@pytest.mark.parametrize("name", sorted(EXPECTED_PROFILES.values()))
def test_structure_definition_is_a_valid_r4_constraint(name: str) -> None:
    definition = _definitions()[name]
    assert structure_issues(definition) == []
    assert definition["fhirVersion"] == "4.0.1"
    assert definition["derivation"] == "constraint"
    assert definition["baseDefinition"] == f"http://hl7.org/fhir/StructureDefinition/{definition['type']}"
    assert definition["url"] == CANONICAL_BASE + name
    for element in definition["differential"]["element"]:
        assert element["path"].split(".")[0] == definition["type"]
        for constraint in element.get("constraint", []):
            assert constraint["source"] == definition["url"]


@pytest.mark.parametrize("name", sorted(EXPECTED_PROFILES.values()))
def test_json_schema_is_valid_draft_2020_12(name: str) -> None:
    schema = json.loads((PROFILES_DIR / f"{name}.schema.json").read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_two_profiles_for_one_type_are_refused(tmp_path: Any) -> None:
    for name in ("a", "b"):
        (tmp_path / f"{name}.structuredefinition.json").write_text(
            json.dumps({"type": "Binary", "url": f"urn:{name}"}), encoding="utf-8"
        )
        (tmp_path / f"{name}.schema.json").write_text(json.dumps({"type": "object"}), encoding="utf-8")
    with pytest.raises(ValueError, match="Two profiles constrain Binary"):
        load_profiles(tmp_path)


def _without(*path: Any) -> Callable[[dict[str, Any]], None]:
    def change(resource: dict[str, Any]) -> None:
        node: Any = resource
        for step in path[:-1]:
            node = node[step]
        del node[path[-1]]

    return change


def _with(value: Any, *path: Any) -> Callable[[dict[str, Any]], None]:
    def change(resource: dict[str, Any]) -> None:
        node: Any = resource
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = value

    return change


CONF = ex.CONFIDENTIALITY
MHD = ex.MHD_LIST_TYPES

# (example, change, expected (code, expression), StructureDefinition constraint key or None)
CASES: list[
    tuple[Callable[[], dict[str, Any]], Callable[[dict[str, Any]], None], tuple[str, str], str | None]
] = [
    (ex.document_reference, _without("type"), ("required", "DocumentReference.type"), None),
    (ex.document_reference, _without("subject"), ("required", "DocumentReference.subject"), None),
    (
        ex.document_reference,
        _with({"coding": [{"display": "CR"}]}, "type"),
        ("value", "DocumentReference.type.coding"),
        "fhs-dr-1",
    ),
    (
        ex.document_reference,
        _with({"reference": "Practitioner/pr-1"}, "subject"),
        ("value", "DocumentReference.subject.reference"),
        "fhs-ref-1",
    ),
    (
        ex.document_reference,
        _with({"identifier": {"system": ex.INS_NIR_TEST, "value": ex.NIR_TEST_VALUE}}, "subject"),
        ("required", "DocumentReference.subject.reference"),
        "fhs-ref-1",
    ),
    (
        ex.document_reference,
        _with({"reference": "Patient/pat-1", "type": "Group"}, "subject"),
        ("value", "DocumentReference.subject.type"),
        None,
    ),
    (
        ex.document_reference,
        _without("content", 0, "attachment", "contentType"),
        ("required", "DocumentReference.content[0].attachment.contentType"),
        None,
    ),
    (
        ex.document_reference,
        _with([{"coding": [{"system": CONF, "code": "X"}]}], "securityLabel"),
        ("value", "DocumentReference.securityLabel[0].coding[0].code"),
        "fhs-dr-3",
    ),
    (
        ex.document_reference,
        _with([{"coding": [{"system": ex.TRE_A07, "code": "MASQUE-PS"}]}], "securityLabel"),
        ("value", "DocumentReference.securityLabel[0].coding[0].code"),
        "fhs-dr-4",
    ),
    (
        ex.document_reference,
        _with([{"coding": [{"code": "MASQUE_PS"}]}], "securityLabel"),
        ("required", "DocumentReference.securityLabel[0].coding[0].system"),
        "fhs-dr-2",
    ),
    (ex.consent, _without("patient"), ("required", "Consent.patient"), None),
    (ex.consent, _without("provision"), ("required", "Consent.provision"), None),
    (ex.consent, _with([], "category"), ("structure", "Consent.category"), None),
    (ex.consent, _without("policy"), ("invariant", "Consent"), "ppc-1"),
    (
        ex.consent,
        _with(
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research"}
                ]
            },
            "scope",
        ),
        ("value", "Consent.scope.coding"),
        "fhs-consent-1",
    ),
    (ex.consent, _with({"text": "privacy"}, "scope"), ("required", "Consent.scope.coding"), "fhs-consent-1"),
    (ex.consent, _without("provision", "type"), ("required", "Consent.provision.type"), "fhs-consent-2"),
    (
        ex.consent,
        _without("provision", "provision", 1, "type"),
        ("required", "Consent.provision.provision[1].type"),
        "fhs-consent-2",
    ),
    (
        ex.consent,
        _with({"display": "Dr LEROY"}, "provision", "actor", 0, "reference"),
        ("invariant", "Consent.provision.actor[0].reference"),
        "fhs-consent-3",
    ),
    (
        ex.consent,
        _with([{"code": "BTG"}], "provision", "purpose"),
        ("required", "Consent.provision.purpose[0].system"),
        "fhs-consent-4",
    ),
    (
        ex.consent,
        _without("provision", "actor", 0, "role"),
        ("required", "Consent.provision.actor[0].role"),
        None,
    ),
    (
        ex.consent,
        _with({"reference": "Group/g1"}, "patient"),
        ("value", "Consent.patient.reference"),
        "fhs-ref-1",
    ),
    (ex.binary, _without("contentType"), ("required", "Binary.contentType"), None),
    (ex.submission_set, _without("subject"), ("required", "List.subject"), None),
    (ex.submission_set, _without("code"), ("required", "List.code"), None),
    (
        ex.folder,
        _with({"coding": [{"system": MHD, "code": "other"}]}, "code"),
        ("value", "List.code.coding"),
        "fhs-list-1",
    ),
    (
        ex.folder,
        _with(
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/list-example-use-codes",
                        "code": "worklist",
                    }
                ]
            },
            "code",
        ),
        ("value", "List.code.coding"),
        "fhs-list-1",
    ),
    (ex.submission_set, _with("snapshot", "mode"), ("value", "List.mode"), "fhs-list-2"),
    (ex.submission_set, _with("retired", "status"), ("value", "List.status"), "fhs-list-2"),
    (ex.submission_set, _without("extension"), ("required", "List.extension"), "fhs-list-2"),
    (
        ex.submission_set,
        _with([{"url": "http://example.org/other", "valueString": "x"}], "extension"),
        ("value", "List.extension"),
        "fhs-list-2",
    ),
    (
        ex.submission_set,
        _with(
            [
                {"url": ex.SOURCE_ID, "valueIdentifier": {"value": "a"}},
                {"url": ex.SOURCE_ID, "valueIdentifier": {"value": "b"}},
            ],
            "extension",
        ),
        ("value", "List.extension"),
        "fhs-list-2",
    ),
]


@pytest.mark.parametrize(("build", "change", "expected", "key"), CASES)
def test_profile_violation_is_refused_with_its_expression(
    build: Callable[[], dict[str, Any]],
    change: Callable[[dict[str, Any]], None],
    expected: tuple[str, str],
    key: str | None,
) -> None:
    resource = build()
    change(resource)
    issues = validate_resource(resource)
    assert _found(issues) == [expected]
    profile = server_profiles()[resource["resourceType"]]
    if key is not None:
        assert issues[0].diagnostics.startswith(f"{key}:")
        assert issues[0].diagnostics.endswith(f"(profile {profile.url})")
        assert not _constraint_holds(_definitions()[profile.name], key, resource)


@pytest.mark.parametrize(
    "build", [ex.patient, ex.document_reference, ex.consent, ex.binary, ex.submission_set, ex.folder]
)
def test_every_constraint_holds_on_the_valid_examples(build: Callable[[], dict[str, Any]]) -> None:
    resource = build()
    definition = _definitions()[EXPECTED_PROFILES[resource["resourceType"]]]
    for element in definition["differential"]["element"]:
        for constraint in element.get("constraint", []):
            assert _constraint_holds(definition, constraint["key"], resource), constraint["key"]


def test_consent_provisions_nest_deeper_than_pcf_allows() -> None:
    consent = ex.consent()
    consent["provision"]["provision"][0]["provision"] = [
        {
            "type": "permit",
            "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "ETREAT"}],
        }
    ]
    assert validate_resource(consent) == []


def test_consent_with_policy_rule_only_satisfies_ppc_1() -> None:
    consent = ex.consent()
    del consent["policy"]
    consent["policyRule"] = {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]
    }
    assert validate_resource(consent) == []


@pytest.mark.parametrize(
    "reference",
    [
        "Patient/pat-1",
        "Patient/pat-1/_history/3",
        "https://fhir.example.fr/fhir/Patient/pat-1",
        ex.PATIENT_UUID,
    ],
)
def test_patient_subject_may_be_relative_absolute_or_a_bundle_uuid(reference: str) -> None:
    document = ex.document_reference()
    document["subject"] = {"reference": reference, "type": "Patient"}
    assert validate_resource(document) == []


def test_dmp_masking_label_passes() -> None:
    document = ex.document_reference()
    document["securityLabel"] = [{"coding": [{"system": ex.TRE_A07, "code": "MASQUE_PS"}]}]
    assert validate_resource(document) == []


def test_labels_of_other_systems_are_not_restricted() -> None:
    document = ex.document_reference()
    document["securityLabel"].append(
        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}]}
    )
    assert validate_resource(document) == []
