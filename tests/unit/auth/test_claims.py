"""Token claims checked against the contract, fail-closed: a wrong shape is a 401, never a dropped claim."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from fhir_server.auth.devkeys import development_jwks, ensure_private_key
from fhir_server.auth.principal import Coding, Principal
from fhir_server.auth.tokens import TokenVerifier
from fhir_server.fhir.errors import FhirError

AUDIENCE = "http://server/fhir"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
R95 = "https://mos.esante.gouv.fr/NOS/TRE_R95-UsagerTitre/FHIR/TRE-R95-UsagerTitre"
BASE: dict[str, Any] = {"sub": "u", "client_id": "c", "scope": "user/*.rs", "iss": "idp", "jti": "j"}


def _principal(**claims: Any) -> Principal:
    return Principal.from_claims({**BASE, **claims})


def _iua(**values: Any) -> dict[str, Any]:
    return {"extensions": {"ihe_iua": values}}


@pytest.mark.parametrize(
    ("claims", "named"),
    [
        ({"fhirUser": 123}, "fhirUser"),
        ({"fhirUser": ["Practitioner/1"]}, "fhirUser"),
        ({"fhirUser": "Practitioner"}, "fhirUser"),
        ({"fhirUser": "Observation/1"}, "fhirUser"),
        ({"fhirUser": "Practitioner/1/_history/2"}, "fhirUser"),
        ({"fhirUser": "Practitioner/a b"}, "fhirUser"),
        ({"patient": 7}, "patient"),
        ({"patient": {"id": "abc"}}, "patient"),
        ({"patient": "Patient/abc"}, "patient"),
        ({"extensions": "ihe_iua"}, "extensions"),
        ({"extensions": ["x"]}, "extensions"),
        ({"extensions": {"ihe_iua": "x"}}, "extensions.ihe_iua"),
        (_iua(subject_role={"system": R95, "code": "71"}), "subject_role"),
        (_iua(subject_role=[{"system": R95, "code": 71}]), "subject_role"),
        (_iua(subject_role=["71"]), "subject_role"),
        (_iua(subject_role=[{"system": R95}]), "subject_role"),
        (_iua(purpose_of_use={"system": ACT_REASON, "code": "BTG"}), "purpose_of_use"),
        (_iua(purpose_of_use="BTG"), "purpose_of_use"),
        (_iua(purpose_of_use=[{"system": 1, "code": "BTG"}]), "purpose_of_use"),
        (_iua(purpose_of_use=[{"code": "TREAT", "userSelected": "yes"}]), "purpose_of_use"),
        (_iua(subject_name=["Dr"]), "subject_name"),
        (_iua(subject_organization_id=42), "subject_organization_id"),
        (_iua(national_provider_identifier={"value": "8100"}), "national_provider_identifier"),
        (_iua(person_id=123), "person_id"),
    ],
)
def test_a_claim_of_the_wrong_shape_makes_the_token_invalid(claims: dict[str, Any], named: str) -> None:
    with pytest.raises(FhirError) as raised:
        _principal(**claims)
    assert raised.value.status == 401
    assert raised.value.headers["WWW-Authenticate"].startswith("Bearer")
    assert named in raised.value.message


@pytest.mark.parametrize(
    ("fhir_user", "expected"),
    [
        ("Practitioner/123", "Practitioner/123"),
        ("https://idp.example/fhir/PractitionerRole/r-1", "PractitionerRole/r-1"),
        ("Patient/abc", "Patient/abc"),
        (None, None),
    ],
)
def test_fhir_user_is_a_type_id_reference(fhir_user: str | None, expected: str | None) -> None:
    assert _principal(**({"fhirUser": fhir_user} if fhir_user else {})).fhir_user == expected


def test_well_formed_iua_claims_are_all_kept() -> None:
    principal = _principal(
        **_iua(
            subject_role=[{"system": R95, "code": "71", "display": "Ostéopathe"}],
            purpose_of_use=[{"system": ACT_REASON, "code": "TREAT"}],
            subject_name="Anne",
            ihe_other_claim={"ignored": True},
        )
    )
    assert principal.roles == (Coding(R95, "71", "Ostéopathe"),)
    assert principal.purpose_of_use == (Coding(ACT_REASON, "TREAT"),)


@pytest.mark.parametrize(
    ("purpose", "breaks"),
    [
        ({"system": ACT_REASON, "code": "BTG"}, True),
        ({"system": "urn:oid:2.16.840.1.113883.5.8", "code": "BTG"}, True),
        ({"code": "BTG"}, False),
        ({"system": "http://example.org/reasons", "code": "BTG"}, False),
        ({"system": ACT_REASON, "code": "TREAT"}, False),
    ],
)
def test_break_the_glass_is_the_one_v3_act_reason_coding(purpose: dict[str, str], breaks: bool) -> None:
    assert _principal(**_iua(purpose_of_use=[purpose])).breaks_the_glass is breaks


def _signed(tmp_path: Path, **overrides: Any) -> str:
    now = int(time.time())
    claims = {**BASE, "aud": AUDIENCE, "iat": now, "exp": now + 60, **overrides}
    return jwt.encode(
        claims, ensure_private_key(tmp_path), algorithm="ES256", headers={"kid": "fhir-server-dev"}
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {"exp": str(int(time.time()) + 600)},
        {"exp": True},
        {"iat": "now"},
        {"nbf": [1]},
        {"sub": 5},
        {"client_id": ""},
        {"jti": 12},
    ],
)
def test_registered_claims_of_the_wrong_type_are_401(tmp_path: Path, overrides: dict[str, Any]) -> None:
    verifier = TokenVerifier(development_jwks(tmp_path), audience=AUDIENCE)
    with pytest.raises(FhirError) as raised:
        verifier.verify(_signed(tmp_path, **overrides))
    assert raised.value.status == 401
    assert raised.value.headers["WWW-Authenticate"].startswith("Bearer")
