"""Red team: leaks found by attacking a live server from outside, with ordinary tokens (docs/security.md).

The world: patient A consented to Dr Alice (but masks nothing); patient C consented to Dr Alice and
masked the document Alice provided for her (ITI-65, MASQUE_PS); patient B gave no consent. Alice
wrote one document on A's record labelled INVISIBLE_PATIENT. Each test names the rule it breaks and
carries its control where a control makes sense (the same request by a legitimate caller works), so
a failure is the rule at work and not a broken fixture.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from fhir_server.auth.devkeys import development_jwks
from tests.integration.mhd_examples import Document, locations, pdf_bytes, provide_bundle
from tests.security.conftest import A07, ACT_REASON, G15, INS_NIR, LiveServer, nir_test_value, unique

LOINC = "http://loinc.org"
JSON_PATCH = "application/json-patch+json"
IRCP = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]}
REDACTED = "REDACTED"


@dataclass(frozen=True)
class World:
    alice: str
    patient_a: str
    patient_b: str
    patient_c: str
    ins_a: str
    ins_b: str
    visible: str
    """A's document, readable by Alice."""
    invisible: str
    """A's document written by Alice, labelled INVISIBLE_PATIENT."""
    denied: str
    """B's document (no consent)."""
    masked: str
    """C's document provided by Alice's ITI-65 bundle, then masked by C (MASQUE_PS)."""


def _created(response: httpx.Response) -> str:
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _patient(live: LiveServer) -> tuple[str, str]:
    ins = nir_test_value()
    resource = {
        "resourceType": "Patient",
        "identifier": [{"use": "official", "system": INS_NIR, "value": ins}],
        "name": [{"use": "official", "family": "Rouge", "given": ["Claire"]}],
        "gender": "female",
        "birthDate": "1984-03-12",
    }
    return _created(live.http.post("/fhir/Patient", json=resource, headers=live.system())), ins


def _consent(patient: str, practitioner: str) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
            ]
        },
        "category": [{"coding": [{"system": LOINC, "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient}"},
        "policyRule": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]
        },
        "provision": {
            "type": "permit",
            "actor": [{"role": IRCP, "reference": {"reference": f"Practitioner/{practitioner}"}}],
        },
    }


def _document(patient: str, *, author: str, labels: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "masterIdentifier": {
            "system": "urn:ietf:rfc:3986",
            "value": f"urn:oid:1.2.250.1.999.8.{uuid.uuid4().int % 10**12}",
        },
        "status": "current",
        "type": {"coding": [{"system": LOINC, "code": "11488-4"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "date": "2026-10-01T09:30:00+02:00",
        "author": [{"reference": author}],
        "content": [{"attachment": {"contentType": "application/pdf", "url": "https://example.org/cr.pdf"}}],
    }
    if labels is not None:
        resource["securityLabel"] = labels
    return resource


@pytest.fixture(scope="module")
def world(live: LiveServer) -> World:
    alice = f"alice-red-{unique()}"
    (patient_a, ins_a), (patient_b, ins_b), (patient_c, _) = _patient(live), _patient(live), _patient(live)
    for patient in (patient_a, patient_c):
        _created(
            live.http.post("/fhir/Consent", json=_consent(patient, alice), headers=live.patient(patient))
        )
    doctor = live.doctor(alice)
    own_a = live.patient(patient_a)
    visible = _created(
        live.http.post(
            "/fhir/DocumentReference", json=_document(patient_a, author="Practitioner/x"), headers=own_a
        )
    )
    invisible_labels = [{"coding": [{"system": A07, "code": "INVISIBLE_PATIENT"}]}]
    invisible = _created(
        live.http.post(
            "/fhir/DocumentReference",
            json=_document(patient_a, author=f"Practitioner/{alice}", labels=invisible_labels),
            headers=doctor,
        )
    )
    denied = _created(
        live.http.post(
            "/fhir/DocumentReference",
            json=_document(patient_b, author="Practitioner/x"),
            headers=live.patient(patient_b),
        )
    )
    provided = live.http.post(
        "/fhir",
        json=provide_bundle(f"Patient/{patient_c}", [Document(pdf_bytes(1024, seed=unique()))]),
        headers=doctor,
    )
    assert provided.status_code == 200, provided.text
    masked = locations(provided.json())[1].split("/")[1]
    mask = [
        {"op": "add", "path": "/securityLabel", "value": [{"coding": [{"system": A07, "code": "MASQUE_PS"}]}]}
    ]
    masking = live.http.patch(
        f"/fhir/DocumentReference/{masked}",
        content=json.dumps(mask),
        headers={**live.patient(patient_c), "Content-Type": JSON_PATCH},
    )
    assert masking.status_code == 200, masking.text
    assert live.http.get(f"/fhir/DocumentReference/{visible}", headers=doctor).status_code == 200
    assert live.http.get(f"/fhir/DocumentReference/{masked}", headers=doctor).status_code == 404
    return World(alice, patient_a, patient_b, patient_c, ins_a, ins_b, visible, invisible, denied, masked)


# -- helpers ----------------------------------------------------------------------------------------


def _professional_iua(name: str) -> dict[str, Any]:
    return {
        "subject_name": f"Dr {name}",
        "subject_role": [{"system": G15, "code": "10"}],
        "purpose_of_use": [{"system": ACT_REASON, "code": "TREAT"}],
        "national_provider_identifier": f"8100{uuid.uuid4().int % 10**8:08d}",
    }


def _auditor(live: LiveServer) -> dict[str, str]:
    return live.system(scopes=("system/AuditEvent.rs",), client_id="red-auditor")


def _events(live: LiveServer, request_id: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    response = live.http.get(
        "/fhir/AuditEvent", params={"entity:identifier": request_id, "_count": "100"}, headers=headers
    )
    assert response.status_code == 200, response.text
    return [entry["resource"] for entry in response.json().get("entry", [])]


def _text(event: dict[str, Any]) -> str:
    """An event as text, with its query entities decoded: everything a reader of it learns."""
    queries = [
        base64.b64decode(entity["query"]).decode(errors="replace")
        for entity in event.get("entity", [])
        if entity.get("query")
    ]
    return json.dumps(event) + "".join(queries)


def _patients_of(event: dict[str, Any]) -> set[str]:
    return {
        entity["what"]["reference"]
        for entity in event.get("entity", [])
        if entity.get("role", {}).get("code") == "1" and "reference" in entity.get("what", {})
    }


def _no_entries(response: httpx.Response) -> bool:
    return response.status_code in (401, 403, 404) or not response.json().get("entry")


# -- tokens: who is the patient, who is a system client -----------------------------------------------


def test_a_professional_launched_on_a_patient_without_fhiruser_is_not_that_patient(
    live: LiveServer, world: World
) -> None:
    """§7/§8: "a `patient/` scope limits every access to the token's `patient` compartment whoever the
    user is (SMART EHR launch of a professional included)"; the patient's fixed rule is for the patient
    herself. A SMART EHR-launch token of a médecin (IUA role and national id, `patient` = B,
    `patient/*.cruds`, no `fhirUser`) is taken for patient B: it reads B's documents that no consent
    opens, reads B's trail and records a Consent granting its holder access."""
    eve = f"eve-{unique()}"
    launched = live.headers(
        live.token(scopes=["patient/*.cruds"], sub=eve, patient=world.patient_b, iua=_professional_iua(eve))
    )
    assert (
        live.http.get(
            f"/fhir/DocumentReference/{world.denied}", headers=live.patient(world.patient_b)
        ).status_code
        == 200
    )
    read = live.http.get(f"/fhir/DocumentReference/{world.denied}", headers=launched)
    assert read.status_code == 404, (
        f"LEAK: a professional read a denied document as the patient: {read.text[:200]}"
    )
    trail = live.http.get(f"/fhir/AuditEvent?patient={world.patient_b}", headers=launched)
    assert _no_entries(trail), "LEAK: a professional read the patient's trail"
    granted = live.http.post("/fhir/Consent", json=_consent(world.patient_b, eve), headers=launched)
    assert granted.status_code == 403, f"a professional wrote a Consent: {granted.status_code}"
    later = live.http.get(f"/fhir/DocumentReference/{world.denied}", headers=live.doctor(eve))
    assert later.status_code == 404, "LEAK: the professional granted himself the record"


@pytest.mark.parametrize(
    ("scope", "request_kind"),
    [("system/AuditEvent.rs", "trail"), ("system/Consent.cud", "consent")],
)
def test_a_professional_holding_a_system_scope_never_reads_the_trail_nor_writes_consents(
    live: LiveServer, world: World, scope: str, request_kind: str
) -> None:
    """§8/§9: "a professional never writes a Consent"; the trail is read by the patient and by
    `system/` clients, "never a professional". A token whose user is a médecin (`fhirUser`
    Practitioner, IUA role) is treated as a `system/` client as soon as it carries a `system/` scope:
    it reads every patient's trail, or records a Consent granting itself."""
    mallory = f"mallory-{unique()}"
    headers = live.doctor(mallory, scopes=(scope,))
    if request_kind == "trail":
        control = live.http.get(f"/fhir/AuditEvent?patient={world.patient_a}", headers=_auditor(live))
        assert control.json().get("entry"), "a system client with the audit scope reads the trail"
        response = live.http.get(f"/fhir/AuditEvent?patient={world.patient_a}", headers=headers)
        assert _no_entries(response), f"LEAK: a professional read {len(response.json()['entry'])} events"
    else:
        response = live.http.post("/fhir/Consent", json=_consent(world.patient_b, mallory), headers=headers)
        assert response.status_code == 403, f"a professional wrote a Consent: {response.status_code}"
        assert (
            live.http.get(f"/fhir/DocumentReference/{world.denied}", headers=live.doctor(mallory)).status_code
            == 404
        )


# -- lists: a submission set names the documents it carried ------------------------------------------------


def test_a_submission_set_never_reveals_a_masked_document(live: LiveServer, world: World) -> None:
    """§8: "Hidden documents do not appear in searches, totals, includes or history ... existence is
    not revealed." The ITI-65 SubmissionSet (List) of C's record names the document C masked: Alice,
    to whom it is hidden, reads its id in `List.entry.item`, and `List?item=` answers differently for
    it than for an id that does not exist (an existence oracle by counting)."""
    doctor = live.doctor(world.alice)
    assert live.http.get(f"/fhir/DocumentReference/{world.masked}", headers=doctor).status_code == 404

    def count(item: str) -> int:
        response = live.http.get(f"/fhir/List?item={item}&_summary=count", headers=doctor)
        assert response.status_code == 200, response.text
        return int(response.json()["total"])

    assert count(f"DocumentReference/{world.masked}") == count(f"DocumentReference/unknown-{unique()}"), (
        "LEAK: List?item= tells a masked document from an unknown one"
    )
    lists = live.http.get(f"/fhir/List?patient={world.patient_c}&_include=List:item", headers=doctor)
    assert lists.status_code == 200
    assert world.masked not in lists.text, "LEAK: a List served to Alice names the masked document"


# -- the audit trail ------------------------------------------------------------------------------------


def test_the_patient_cannot_probe_an_invisible_document_through_the_trail_search(
    live: LiveServer, world: World
) -> None:
    """§9: "An event shown to a patient never names a resource that the patient may not read"; §8:
    hidden is absent. The served events are redacted, but `AuditEvent?entity=` still matches the
    stored entity: patient A counts the accesses to her INVISIBLE_PATIENT document, and tells its id
    from an unknown one."""
    assert (
        live.http.get(
            f"/fhir/DocumentReference/{world.invisible}", headers=live.doctor(world.alice)
        ).status_code
        == 200
    )
    own = live.patient(world.patient_a)
    assert live.http.get(f"/fhir/DocumentReference/{world.invisible}", headers=own).status_code == 404

    def count(reference: str) -> int:
        response = live.http.get(f"/fhir/AuditEvent?entity={reference}&_summary=count", headers=own)
        assert response.status_code == 200, response.text
        return int(response.json()["total"])

    assert count(f"DocumentReference/{world.invisible}") == count(f"DocumentReference/unknown-{unique()}"), (
        "LEAK: the trail search tells the invisible document from an unknown one"
    )


def test_a_refused_read_by_a_patient_user_never_names_the_owner_in_her_trail(
    live: LiveServer, world: World
) -> None:
    """§9: "a refused read never puts the target's patient into the caller's own trail". Patient A
    with a `user/` scope (fhirUser Patient/A, no `patient/` scope) reads B's document: 404, but the
    event is in A's compartment (she is its agent) and names Patient/B, so A learns that the id
    exists and whose record it belongs to; an unknown id names no patient."""
    user = live.headers(
        live.token(scopes=["user/*.cruds"], sub=f"pat-{unique()}", fhir_user=f"Patient/{world.patient_a}")
    )
    request_id = f"red-{unique()}"
    response = live.http.get(
        f"/fhir/DocumentReference/{world.denied}", headers={**user, "X-Request-Id": request_id}
    )
    assert response.status_code == 404
    seen = _events(live, request_id, live.patient(world.patient_a))
    assert seen, "the attempt is in A's trail (she made it)"
    assert not [event for event in seen if world.patient_b in json.dumps(event)], (
        "LEAK: A's trail names the patient who owns the document she may not read"
    )


def test_a_search_naming_a_patient_by_ins_is_in_that_patients_trail_not_anothers(
    live: LiveServer, world: World
) -> None:
    """§9: an event belongs to "every patient the query names, even when it found nothing, and every
    patient it returned". Alice searches patient B by INS with a `_has` criterion and finds nothing:
    the event lands in A's trail (whose documents the `_has` scanned), carrying B's INS to A, and not
    in B's; a chained search `DocumentReference?patient.identifier=<B's INS>` is in nobody's trail."""
    doctor = live.doctor(world.alice)
    probes = {
        "_has": f"Patient?identifier={INS_NIR}|{world.ins_b}&_has:DocumentReference:subject:status=current",
        "chain": f"DocumentReference?patient.identifier={INS_NIR}|{world.ins_b}",
    }
    for name, query in probes.items():
        request_id = f"red-{unique()}"
        response = live.http.get(f"/fhir/{query}", headers={**doctor, "X-Request-Id": request_id})
        assert response.status_code == 200 and not response.json().get("entry"), response.text
        events = _events(live, request_id, _auditor(live))
        patients = set().union(*(_patients_of(event) for event in events)) if events else set()
        assert f"Patient/{world.patient_b}" in patients, f"{name}: the search is missing from B's trail"
        assert f"Patient/{world.patient_a}" not in patients, f"{name}: the search is in A's trail"
        shown = _events(live, request_id, live.patient(world.patient_a))
        assert not [event for event in shown if world.ins_b in _text(event)], (
            f"{name}: LEAK: A's trail carries B's INS"
        )


def test_a_patient_never_reads_another_patients_ins_in_her_trail(live: LiveServer, world: World) -> None:
    """§9: an event shown to a patient never names what she may not read. Alice searches two patients
    by INS at once; A's copy of the event carries the raw query, B's INS included."""
    request_id = f"red-{unique()}"
    query = f"Patient?identifier={INS_NIR}|{world.ins_b},{INS_NIR}|{world.ins_a}"
    response = live.http.get(
        f"/fhir/{query}", headers={**live.doctor(world.alice), "X-Request-Id": request_id}
    )
    assert response.status_code == 200 and response.json()["total"] == 2
    shown = _events(live, request_id, live.patient(world.patient_a))
    assert shown, "the search returned A: it is in her trail"
    assert not [event for event in shown if world.ins_b in _text(event)], "LEAK: A reads B's INS in her trail"


# -- one door: system-level search as a bundle entry ---------------------------------------------------


@pytest.mark.parametrize("url", ["?_type=Patient", "?_type=AuditEvent"])
def test_a_system_search_entry_answers_what_the_plain_request_answers(
    live: LiveServer, world: World, url: str
) -> None:
    """§11: "an entry gets exactly the type check, scope check, consent decision and AuditEvent of the
    equivalent plain request". `GET [base]?_type=...` answers 200 (or 403) as a request and 404 as a
    batch entry."""
    doctor = live.doctor(world.alice)
    plain = live.http.get(f"/fhir/{url}", headers=doctor)
    batch = live.http.post(
        "/fhir",
        json={
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [{"request": {"method": "GET", "url": url}}],
        },
        headers=doctor,
    )
    assert batch.status_code == 200, batch.text
    [entry] = batch.json()["entry"]
    assert int(entry["response"]["status"].split()[0]) == plain.status_code, entry


# -- what held (regression guards) ---------------------------------------------------------------------


def test_hidden_and_unknown_ids_answer_alike_to_conditional_writes(live: LiveServer, world: World) -> None:
    """§8: hidden is absent on conditional forms too: a conditional patch or delete whose criteria
    match a hidden document answers exactly as for an id that does not exist, and writes nothing."""
    doctor = live.doctor(world.alice)
    failing = json.dumps([{"op": "test", "path": "/status", "value": "entered-in-error"}])
    answers: dict[str, list[tuple[int, str]]] = {}
    for name, target in (("hidden", world.masked), ("unknown", f"unknown-{unique()}")):
        patch_one = live.http.patch(
            f"/fhir/DocumentReference?_id={target}",
            content=failing,
            headers={**doctor, "Content-Type": JSON_PATCH},
        )
        patch_two = live.http.patch(
            f"/fhir/DocumentReference?_id={target},{world.visible}",
            content=failing,
            headers={**doctor, "Content-Type": JSON_PATCH},
        )
        delete = live.http.delete(f"/fhir/DocumentReference?_id={target}&status=superseded", headers=doctor)
        answers[name] = [
            (response.status_code, response.json()["issue"][0]["code"] if response.content else "")
            for response in (patch_one, patch_two, delete)
        ]
    assert answers["hidden"] == answers["unknown"]
    after = live.http.get(f"/fhir/DocumentReference/{world.masked}", headers=live.patient(world.patient_c))
    assert after.status_code == 200 and after.json()["meta"]["versionId"] == "2"


@pytest.mark.parametrize("alg", ["none", "HS256"])
def test_unsigned_and_hmac_tokens_are_401(live: LiveServer, alg: str) -> None:
    """§7: `none`, HMAC and any algorithm outside RS256/ES256 are refused (401 + WWW-Authenticate)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    now = int(time.time())
    claims = {
        "iss": "fhir-server-dev",
        "aud": live.base_url,
        "sub": "mallory",
        "client_id": "attacker-app",
        "scope": "system/*.cruds",
        "iat": now,
        "exp": now + 600,
        "jti": unique(),
    }
    signing = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims).encode())
    public = json.dumps(development_jwks(live.data_dir)["keys"][0]).encode()
    signature = "" if alg == "none" else b64(hmac.new(public, signing.encode(), hashlib.sha256).digest())
    response = live.http.get("/fhir/Patient", headers={"Authorization": f"Bearer {signing}.{signature}"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
