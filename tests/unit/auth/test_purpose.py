"""The one purpose-of-use matcher: permit by purpose, the BTG override and the BTG refusal agree."""

from __future__ import annotations

import pytest

from fhir_server.auth.principal import Coding
from fhir_server.auth.purpose import is_break_the_glass, purpose_covers

ACT = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
OID = "urn:oid:2.16.840.1.113883.5.8"
OTHER = "http://example.org/purposes"


@pytest.mark.parametrize(
    ("pattern", "actual", "covered"),
    [
        ((ACT, "TREAT"), (ACT, "TREAT"), True),
        ((ACT, "TREAT"), (ACT, "ETREAT"), True),
        ((ACT, "TREAT"), (ACT, "BTG"), True),
        ((ACT, "ETREAT"), (ACT, "BTG"), True),
        ((ACT, "BTG"), (ACT, "BTG"), True),
        ((ACT, "BTG"), (ACT, "TREAT"), False),
        ((ACT, "ETREAT"), (ACT, "TREAT"), False),
        ((ACT, "HPAYMT"), (ACT, "TREAT"), False),
        ((OID, "BTG"), (ACT, "BTG"), True),
        ((ACT, "TREAT"), (OID, "ETREAT"), True),
        ((ACT, "BTG"), (None, "BTG"), False),
        ((None, "BTG"), (ACT, "BTG"), False),
        ((None, "BTG"), (None, "BTG"), False),
        ((ACT, "TREAT"), (None, "TREAT"), False),
        ((OTHER, "BTG"), (ACT, "BTG"), False),
        ((OTHER, "TREAT"), (OTHER, "ETREAT"), False),
        ((OTHER, "X"), (OTHER, "X"), True),
        ((ACT, None), (ACT, None), False),
    ],
)
def test_purpose_covers(
    pattern: tuple[str | None, str | None], actual: tuple[str | None, str | None], covered: bool
) -> None:
    assert purpose_covers(Coding(*pattern), Coding(*actual)) is covered
    as_json = {key: value for key, value in zip(("system", "code"), pattern, strict=True) if value}
    assert purpose_covers(as_json, Coding(*actual)) is covered


@pytest.mark.parametrize(
    ("coding", "btg"),
    [
        ({"system": ACT, "code": "BTG"}, True),
        ({"system": OID, "code": "BTG"}, True),
        ({"code": "BTG"}, False),
        ({"system": "", "code": "BTG"}, False),
        ({"system": OTHER, "code": "BTG"}, False),
        ({"system": ACT, "code": "btg"}, False),
        ({"system": ACT, "code": "ETREAT"}, False),
    ],
)
def test_is_break_the_glass(coding: dict[str, str], btg: bool) -> None:
    assert is_break_the_glass(coding) is btg
    assert is_break_the_glass(Coding(coding.get("system") or None, coding["code"])) is btg
