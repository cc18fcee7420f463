"""INS identifiers of a Patient: known systems, 15-character NIR with its check key (Corsica 2A/2B).

Covers STANDARDS §6 (INS slices of fr-core-patient-ins: INS-NIR .8, INS-NIA .9, INS-NIR-TEST .10,
INS-NIR-DEMO .11, INS-C .2) and the NIR key rule 97 - (first 13 digits mod 97).
"""

from __future__ import annotations

from typing import Any

import pytest

from fhir_server.fhir.errors import Issue
from fhir_server.validation import INS_SYSTEMS, NIR_SYSTEMS, is_valid_nir, nir_key, validate_resource

NIR = "urn:oid:1.2.250.1.213.1.4.8"
NIA = "urn:oid:1.2.250.1.213.1.4.9"
NIR_TEST = "urn:oid:1.2.250.1.213.1.4.10"
NIR_DEMO = "urn:oid:1.2.250.1.213.1.4.11"
INS_C = "urn:oid:1.2.250.1.213.1.4.2"


def _patient(*identifiers: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": list(identifiers)}


def _found(issues: list[Issue]) -> list[tuple[str, str]]:
    return [(issue.code, issue.expression[0]) for issue in issues]


@pytest.mark.parametrize(
    ("first13", "key"),
    [
        ("2550814168025", "38"),  # the INSEE example 2 55 08 14 168 025 38
        ("2850375102345", "53"),
        ("1800119000001", "91"),
        ("18001" + "2A" + "000001", "91"),  # 2A is read as 19
        ("17512" + "2B" + "033012", "23"),  # 2B is read as 18
        ("1000000000000", f"{97 - 1000000000000 % 97:02d}"),
    ],
)
def test_nir_key_is_97_minus_the_body_modulo_97(first13: str, key: str) -> None:
    assert nir_key(first13) == key
    assert is_valid_nir(first13 + key)


@pytest.mark.parametrize(
    "value",
    [
        "255081416802539",
        "25508141680253",
        "2550814168025380",
        "25508141680253A",
        "2550X1416802538",
        "18001" + "2C" + "00000191",
    ],
)
def test_malformed_or_wrongly_keyed_nir_is_not_valid(value: str) -> None:
    assert not is_valid_nir(value)


def test_known_ins_systems() -> None:
    assert INS_SYSTEMS == {NIR, NIA, NIR_TEST, NIR_DEMO, INS_C}
    assert NIR_SYSTEMS == {NIR, NIR_TEST, NIR_DEMO}


@pytest.mark.parametrize(
    "identifier",
    [
        {"system": NIR_TEST, "value": "285037510234553"},
        {"system": NIR, "value": "255081416802538"},
        {"system": NIR_DEMO, "value": "180012A00000191"},
        {"system": NIR_TEST, "value": "175122B03301223"},
        {"system": NIA, "value": "285037510234599"},  # NIA: shape only, key not enforced
        {"system": INS_C, "value": "1121717802492545833548"},
        {"system": "urn:oid:1.2.250.1.211.10.200.1", "value": "IPP-42"},
        {"system": "urn:oid:1.2.250.1.213.1.3.4", "value": "x"},  # outside the INS arc
        {"value": "285037510234553"},
    ],
)
def test_well_formed_ins_and_other_identifiers_pass(identifier: dict[str, Any]) -> None:
    assert validate_resource(_patient(identifier)) == []


@pytest.mark.parametrize(
    ("identifier", "expected", "rule"),
    [
        (
            {"system": NIR_TEST, "value": "285037510234554"},
            ("value", "Patient.identifier[0].value"),
            "fhs-ins-3",
        ),
        (
            {"system": NIR_TEST, "value": "28503751023455"},
            ("value", "Patient.identifier[0].value"),
            "fhs-ins-2",
        ),
        ({"system": NIR, "value": "2850375102345530"}, ("value", "Patient.identifier[0].value"), "fhs-ins-2"),
        ({"system": NIR, "value": "2850375102345X3"}, ("value", "Patient.identifier[0].value"), "fhs-ins-2"),
        (
            {"system": NIR_DEMO, "value": "180012C00000191"},
            ("value", "Patient.identifier[0].value"),
            "fhs-ins-2",
        ),
        ({"system": NIR, "value": "180012A00000192"}, ("value", "Patient.identifier[0].value"), "fhs-ins-3"),
        ({"system": NIR_TEST}, ("required", "Patient.identifier[0].value"), "fhs-ins-2"),
        ({"system": NIA, "value": "28503751023459"}, ("value", "Patient.identifier[0].value"), "fhs-ins-4"),
        (
            {"system": INS_C, "value": "285037510234553"},
            ("value", "Patient.identifier[0].value"),
            "fhs-ins-5",
        ),
        (
            {"system": "urn:oid:1.2.250.1.213.1.4.5", "value": "285037510234553"},
            ("value", "Patient.identifier[0].system"),
            "fhs-ins-1",
        ),
        (
            {"system": "urn:oid:1.2.250.1.213.1.4.8.99999.1", "value": "x"},
            ("value", "Patient.identifier[0].system"),
            "fhs-ins-1",
        ),
    ],
)
def test_ins_rule_violation_is_refused_at_the_identifier(
    identifier: dict[str, Any], expected: tuple[str, str], rule: str
) -> None:
    issues = validate_resource(_patient(identifier))
    assert _found(issues) == [expected]
    assert issues[0].diagnostics.startswith(f"{rule}:")


def test_each_faulty_identifier_is_named_by_its_index() -> None:
    patient = _patient(
        {"system": NIR_TEST, "value": "285037510234553"},
        {"system": NIR_TEST, "value": "285037510234500"},
        {"system": "urn:oid:1.2.250.1.213.1.4.12", "value": "1"},
    )
    assert _found(validate_resource(patient)) == [
        ("value", "Patient.identifier[1].value"),
        ("value", "Patient.identifier[2].system"),
    ]
