"""Tokens, purposes and scopes, attacked from outside over HTTP (docs/security.md).

Each test reproduces a leak found on the server as an attacker with an ordinary token would, and
carries its control: the same request with the legitimate token succeeds, so the refusal is the
rule at work and not a broken fixture.
- Claims are checked fail-closed: a claim of the wrong shape is a 401 with WWW-Authenticate.
- One purpose matcher: a `BTG` purpose without a system is no purpose at all.
- Scopes confine: `patient/` to the token's patient, `?param=value` to the matching resources
  (reads, searches, includes, writes); includes reach only types the token may read.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
import pytest

from fhir_server.auth.devkeys import KEY_ID, ensure_private_key
from tests.security.conftest import ACT_REASON, FHIR_JSON, G15, R95, LiveServer, nir_test_value

LOINC = "http://loinc.org"
CONSULTATION = "11488-4"
DISCHARGE = "18842-5"
IRCP = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]}
DOCTOR = "dr-scoped"


def _patient_resource() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [
            {"use": "official", "system": "urn:oid:1.2.250.1.213.1.4.10", "value": nir_test_value()}
        ],
        "name": [{"use": "official", "family": "Martin", "given": ["Claire"]}],
        "gender": "female",
        "birthDate": "1984-03-12",
    }


def _document(patient_id: str, loinc: str) -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "masterIdentifier": {
            "system": "urn:ietf:rfc:3986",
            "value": f"urn:oid:1.2.250.1.999.{uuid.uuid4().int % 10**9}",
        },
        "status": "current",
        "type": {"coding": [{"system": LOINC, "code": loinc}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "date": "2026-10-01T09:30:00+02:00",
        "content": [
            {
                "attachment": {
                    "contentType": "application/pdf",
                    "url": "https://documents.example.org/example.pdf",
                }
            }
        ],
    }


def _consent(patient_id: str, provision: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
            ]
        },
        "category": [{"coding": [{"system": LOINC, "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient_id}"},
        "dateTime": "2026-09-01T10:00:00+02:00",
        "policyRule": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]
        },
        "provision": provision,
    }


def _created(live: LiveServer, path: str, resource: dict[str, Any], headers: dict[str, str]) -> str:
    response = live.http.post(f"/fhir/{path}", json=resource, headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@dataclass(frozen=True)
class Record:
    """One patient's record: its documents by LOINC code."""

    patient: str
    documents: dict[str, str]


def _record(live: LiveServer, provision: dict[str, Any] | None) -> Record:
    patient = _created(live, "Patient", _patient_resource(), live.system())
    own = live.patient(patient)
    if provision is not None:
        _created(live, "Consent", _consent(patient, provision), own)
    documents = {
        code: _created(live, "DocumentReference", _document(patient, code), own)
        for code in (CONSULTATION, DISCHARGE)
    }
    return Record(patient, documents)


@dataclass(frozen=True)
class World:
    refuses_btg: Record
    silent: Record
    permits_doctor: Record
    also_permits_doctor: Record


@pytest.fixture(scope="module")
def world(live: LiveServer) -> World:
    permit = {
        "type": "deny",
        "provision": [
            {
                "type": "permit",
                "actor": [{"role": IRCP, "reference": {"reference": f"Practitioner/{DOCTOR}"}}],
            }
        ],
    }
    return World(
        refuses_btg=_record(live, {"type": "deny", "purpose": [{"system": ACT_REASON, "code": "BTG"}]}),
        silent=_record(live, None),
        permits_doctor=_record(live, permit),
        also_permits_doctor=_record(live, permit),
    )


def _signed(live: LiveServer, claims: dict[str, Any]) -> dict[str, str]:
    """A validly signed token with exactly these claims (over the registered ones)."""
    now = int(time.time())
    base = {
        "iss": "fhir-server-dev",
        "aud": live.base_url,
        "sub": "mallory",
        "client_id": "attacker-app",
        "scope": "user/*.cruds",
        "iat": now,
        "exp": now + 600,
        "jti": str(uuid.uuid4()),
    }
    token = jwt.encode(
        {**base, **claims}, ensure_private_key(live.data_dir), algorithm="ES256", headers={"kid": KEY_ID}
    )
    return {"Authorization": f"Bearer {token}", "Content-Type": FHIR_JSON}


def _professional(
    live: LiveServer, *, purpose: list[Any], role: Any, scopes: tuple[str, ...] = ("user/*.cruds",)
) -> dict[str, str]:
    iua = {
        "subject_name": "Dr Mallory",
        "subject_role": role,
        "purpose_of_use": purpose,
        "national_provider_identifier": "810009999999",
    }
    token = live.token(scopes=list(scopes), sub="mallory", fhir_user="Practitioner/mallory", iua=iua)
    return live.headers(token)


def _ids(body: dict[str, Any], resource_type: str) -> set[str]:
    return {
        e["resource"]["id"] for e in body.get("entry", []) if e["resource"]["resourceType"] == resource_type
    }


def _search(live: LiveServer, query: str, headers: dict[str, str]) -> dict[str, Any]:
    response = live.http.get(f"/fhir/{query}", headers=headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


def _assert_401(response: Any) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["resourceType"] == "OperationOutcome"


# -- one purpose matcher -------------------------------------------------------------------------------


def test_btg_without_a_system_does_not_break_the_glass(live: LiveServer, world: World) -> None:
    """`purpose_of_use [{"code": "BTG"}]` once broke the glass past the patient's explicit BTG refusal,
    because the override and the refusal compared purposes differently. A coding without a system
    means nothing: no override, and the patient's refusal holds for the real BTG coding too."""
    medecin = [{"system": G15, "code": "10"}]
    no_system = _professional(live, purpose=[{"code": "BTG"}], role=medecin)
    real_btg = _professional(live, purpose=[{"system": ACT_REASON, "code": "BTG"}], role=medecin)
    oid_btg = _professional(
        live, purpose=[{"system": "urn:oid:2.16.840.1.113883.5.8", "code": "BTG"}], role=medecin
    )
    refused = world.refuses_btg.documents[CONSULTATION]
    silent = world.silent.documents[CONSULTATION]
    for headers in (no_system, real_btg, oid_btg):
        assert live.http.get(f"/fhir/DocumentReference/{refused}", headers=headers).status_code == 404
    assert live.http.get(f"/fhir/DocumentReference/{silent}", headers=no_system).status_code == 404
    # control: break-the-glass works where the patient did not refuse it, in either spelling
    assert live.http.get(f"/fhir/DocumentReference/{silent}", headers=real_btg).status_code == 200
    assert live.http.get(f"/fhir/DocumentReference/{silent}", headers=oid_btg).status_code == 200


# -- claims fail-closed --------------------------------------------------------------------------------


def test_subject_role_as_an_object_is_401_not_a_dropped_restriction(live: LiveServer, world: World) -> None:
    """`subject_role` sent as one object (not an array of Codings) made the ostéopathe's read-only
    rule disappear; now the token is invalid."""
    target = world.permits_doctor.patient
    osteo = {"system": R95, "code": "71"}
    as_object = _professional(live, purpose=[{"system": ACT_REASON, "code": "TREAT"}], role=osteo)
    response = live.http.post(
        "/fhir/DocumentReference", json=_document(target, CONSULTATION), headers=as_object
    )
    _assert_401(response)
    # control: the well-formed claim keeps the ostéopathe read-only
    as_array = _professional(live, purpose=[{"system": ACT_REASON, "code": "TREAT"}], role=[osteo])
    response = live.http.post(
        "/fhir/DocumentReference", json=_document(target, CONSULTATION), headers=as_array
    )
    assert response.status_code == 403, response.text


@pytest.mark.parametrize(
    "claims",
    [
        {"fhirUser": 42},
        {"fhirUser": {"reference": "Practitioner/1"}},
        {"fhirUser": "Observation/1"},
        {"patient": ["a", "b"]},
        {"extensions": "ihe_iua"},
        {"extensions": {"ihe_iua": ["x"]}},
        {"extensions": {"ihe_iua": {"purpose_of_use": {"system": ACT_REASON, "code": "BTG"}}}},
        {"extensions": {"ihe_iua": {"subject_role": [{"system": G15, "code": 10}]}}},
        {"extensions": {"ihe_iua": {"national_provider_identifier": 810001}}},
        {"exp": str(int(time.time()) + 600)},
        {"iat": "now"},
        {"sub": 7},
    ],
)
def test_a_signed_token_with_a_malformed_claim_is_401_never_500(
    live: LiveServer, claims: dict[str, Any]
) -> None:
    headers = _signed(live, claims)
    for method, path in (
        ("GET", "/fhir/Patient"),
        ("GET", "/fhir/DocumentReference?status=current"),
        ("POST", "/fhir/Patient"),
    ):
        response = live.http.request(
            method, path, headers=headers, json=_patient_resource() if method == "POST" else None
        )
        _assert_401(response)
    # control: the same token without the malformed claim is accepted
    assert live.http.get("/fhir/Patient?_count=1", headers=_signed(live, {})).status_code == 200


# -- scopes confine ------------------------------------------------------------------------------------


def _doctor(live: LiveServer, *scopes: str, patient: str | None = None) -> dict[str, str]:
    return live.doctor(DOCTOR, scopes=scopes, patient=patient)


def test_patient_scopes_confine_a_professional_to_the_launch_patient(live: LiveServer, world: World) -> None:
    """A professional's SMART EHR launch (`patient/` scopes, `patient` = A) reaches A only, even where
    the consents of B would let him in with `user/` scopes."""
    a, b = world.permits_doctor, world.also_permits_doctor
    launched = _doctor(live, "patient/*.cruds", patient=a.patient)
    other = b.documents[CONSULTATION]
    assert (
        live.http.get(f"/fhir/DocumentReference/{a.documents[CONSULTATION]}", headers=launched).status_code
        == 200
    )
    assert live.http.get(f"/fhir/DocumentReference/{other}", headers=launched).status_code == 404
    assert live.http.get(f"/fhir/Patient/{b.patient}", headers=launched).status_code == 404
    assert (
        _ids(_search(live, f"DocumentReference?patient={b.patient}", launched), "DocumentReference") == set()
    )
    everything = _search(live, "DocumentReference?status=current&_count=200", launched)
    assert _ids(everything, "DocumentReference") == set(a.documents.values())
    assert _search(live, f"Patient?_id={a.patient},{b.patient}", launched)["total"] == 1
    created = live.http.post(
        "/fhir/DocumentReference", json=_document(b.patient, CONSULTATION), headers=launched
    )
    assert created.status_code == 403, created.text
    # control: the same professional with user/ scopes sees B (B's consent permits him)
    user = _doctor(live, "user/*.cruds")
    assert live.http.get(f"/fhir/DocumentReference/{other}", headers=user).status_code == 200


def test_scope_restriction_limits_reads_searches_and_writes(live: LiveServer, world: World) -> None:
    """SMART v2 `?type=...` (any `?param=value`) was ignored: it now limits the scope to what matches."""
    a = world.permits_doctor
    restricted = _doctor(
        live,
        f"user/DocumentReference.rs?type={LOINC}|{CONSULTATION}",
        f"user/DocumentReference.c?type={LOINC}|{CONSULTATION}",
    )
    consultation, discharge = a.documents[CONSULTATION], a.documents[DISCHARGE]
    assert live.http.get(f"/fhir/DocumentReference/{consultation}", headers=restricted).status_code == 200
    assert live.http.get(f"/fhir/DocumentReference/{discharge}", headers=restricted).status_code == 404
    found = _search(live, f"DocumentReference?patient={a.patient}", restricted)
    assert _ids(found, "DocumentReference") == {consultation} and found["total"] == 1
    assert _search(live, f"DocumentReference?_id={discharge}", restricted)["total"] == 0
    refused = live.http.post(
        "/fhir/DocumentReference", json=_document(a.patient, DISCHARGE), headers=restricted
    )
    assert refused.status_code == 403, refused.text
    accepted = live.http.post(
        "/fhir/DocumentReference", json=_document(a.patient, CONSULTATION), headers=restricted
    )
    assert accepted.status_code == 201, accepted.text
    # control: without the restriction both documents are there
    plain = _doctor(live, "user/DocumentReference.rs")
    assert _ids(_search(live, f"DocumentReference?patient={a.patient}", plain), "DocumentReference") >= {
        consultation,
        discharge,
    }


def test_includes_reach_only_types_the_token_may_read(live: LiveServer, world: World) -> None:
    """`_include` returned Patients to a token without a Patient scope; `_revinclude=AuditEvent:patient`
    returned the audit trail to a token that may not search AuditEvent. Out-of-scope types are
    simply not included (SMART: results omitted); the search itself still answers."""
    a = world.permits_doctor
    documents_only = _doctor(live, "user/DocumentReference.rs")
    body = _search(
        live, f"DocumentReference?patient={a.patient}&_include=DocumentReference:patient", documents_only
    )
    assert _ids(body, "DocumentReference") and not _ids(body, "Patient")
    wildcard = _doctor(live, "user/*.cruds")
    body = _search(
        live,
        f"Patient?_id={a.patient}&_revinclude=AuditEvent:patient&_revinclude=DocumentReference:patient",
        wildcard,
    )
    assert _ids(body, "Patient") == {a.patient} and _ids(body, "DocumentReference")
    assert not _ids(body, "AuditEvent")
    # control: with a Patient scope the Patient is included
    both = _doctor(live, "user/DocumentReference.rs", "user/Patient.rs")
    body = _search(live, f"DocumentReference?patient={a.patient}&_include=DocumentReference:patient", both)
    assert _ids(body, "Patient") == {a.patient}


def test_chains_and_has_on_a_type_the_token_may_not_search_are_403(live: LiveServer, world: World) -> None:
    """A chain or `_has` searches another type: refused (403) when no scope lets the token search it,
    since matching nothing instead would silently answer a different question."""
    a = world.permits_doctor
    wildcard = _doctor(live, "user/*.cruds")
    probe = live.http.get(f"/fhir/Patient?_has:AuditEvent:patient:action=R&_id={a.patient}", headers=wildcard)
    assert probe.status_code == 403, probe.text
    documents_only = _doctor(live, "user/DocumentReference.rs")
    chained = live.http.get("/fhir/DocumentReference?patient.family=Martin", headers=documents_only)
    assert chained.status_code == 403, chained.text
    # control: with the scope, the same chain answers
    both = _doctor(live, "user/DocumentReference.rs", "user/Patient.rs")
    assert live.http.get("/fhir/DocumentReference?patient.family=Martin", headers=both).status_code == 200


@pytest.mark.parametrize("prefer", [None, "handling=lenient", "handling=strict"])
def test_unsupported_modifier_is_400_whatever_the_handling(live: LiveServer, prefer: str | None) -> None:
    """R4: a server SHALL reject a modifier it does not support; ignoring it would widen the search."""
    headers = _doctor(live, "user/*.cruds") | ({"Prefer": prefer} if prefer else {})
    for query in (
        "Patient?family:below=Mar",
        "DocumentReference?status:in=http://x/vs",
        "Patient?gender:above=female",
    ):
        response = live.http.get(f"/fhir/{query}", headers=headers)
        assert response.status_code == 400, (query, response.text)
        assert response.json()["resourceType"] == "OperationOutcome"
    # control: a supported modifier is served
    assert live.http.get("/fhir/Patient?family:exact=Martin", headers=headers).status_code == 200


@pytest.mark.parametrize("prefer", [None, "handling=lenient", "handling=strict"])
def test_unsupported_criteria_are_400_whatever_the_handling(live: LiveServer, prefer: str | None) -> None:
    """An unsupported parameter that narrows a search (`_filter`, `_text`, `_content`, `_list`,
    `_query`, `_has` without a type) is refused: ignored, it would answer a wider search."""
    headers = _doctor(live, "user/*.cruds") | ({"Prefer": prefer} if prefer else {})
    for query in (
        "Patient?_filter=family eq Martin",
        "DocumentReference?_text=cardiologie",
        "DocumentReference?_content=cardiologie",
        "Patient?_list=List/1",
        "Patient?_query=current",
        "?_type=Patient&_has:DocumentReference:subject:status=current",
    ):
        response = live.http.get(f"/fhir/{query}", headers=headers)
        assert response.status_code == 400, (query, response.text)
        assert response.json()["issue"][0]["code"] == "not-supported"
    # control: an unsupported result control is only a warning when lenient
    assert live.http.get("/fhir/Patient?_score=true", headers=headers).status_code == (
        400 if prefer == "handling=strict" else 200
    )
