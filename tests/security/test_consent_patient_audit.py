"""Who writes Consents and Patients, INS uniqueness, who reads the audit trail and what a patient sees.

Black-box against the live server (deny-by-default), as an attacker with ordinary tokens. Each test is
one reproduced leak and every door to it: plain, conditional, transaction entry.
See docs/security.md (threat model) and docs/consent.md, docs/audit.md (the rules).
"""

from __future__ import annotations

import base64
import json
import threading
from typing import Any

import httpx

from tests.security.conftest import A07, INS_NIR, LiveServer, nir_test_value, unique

PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
REDACTED = ("http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "REDACTED")
JSON_PATCH = "application/json-patch+json"


# -- builders --------------------------------------------------------------------------------------


def patient_body(nir: str | None = None) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"use": "official", "system": INS_NIR, "value": nir or nir_test_value()}],
        "name": [{"use": "official", "family": "Martin", "given": ["Claire"]}],
        "gender": "female",
        "birthDate": "1984-03-12",
    }


def consent_body(patient: str, *, decision: str, practitioner: str) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": CONSENT_SCOPE, "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient}"},
        "policyRule": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]
        },
        "provision": {
            "type": decision,
            "actor": [
                {
                    "role": {"coding": [{"system": PARTICIPATION, "code": "IRCP"}]},
                    "reference": {"reference": f"Practitioner/{practitioner}"},
                }
            ],
        },
    }


def document_body(patient: str, author: str, *, invisible: bool = False) -> dict[str, Any]:
    document: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "status": "current",
        "type": {"coding": [{"system": "http://loinc.org", "code": "11488-4"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "author": [{"reference": f"Practitioner/{author}"}],
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
    if invisible:
        document["securityLabel"] = [{"coding": [{"system": A07, "code": "INVISIBLE_PATIENT"}]}]
    return document


def created(response: httpx.Response) -> str:
    assert response.status_code == 201, response.text
    identifier: str = response.json()["id"]
    return identifier


def new_patient(live: LiveServer, nir: str | None = None) -> str:
    return created(live.http.post("/fhir/Patient", json=patient_body(nir), headers=live.system()))


def transaction(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def patch_entry(url: str, operations: list[dict[str, Any]]) -> dict[str, Any]:
    payload = base64.b64encode(json.dumps(operations).encode()).decode()
    return {
        "resource": {"resourceType": "Binary", "contentType": JSON_PATCH, "data": payload},
        "request": {"method": "PATCH", "url": url},
    }


class Record:
    """A patient who denies Dr Refused, permits Dr Trusted everything, and her two consents."""

    def __init__(self, live: LiveServer) -> None:
        self.patient = new_patient(live)
        self.trusted = f"dr-trusted-{unique()}"
        self.refused = f"dr-refused-{unique()}"
        own = live.patient(self.patient)
        self.deny = created(
            live.http.post(
                "/fhir/Consent",
                json=consent_body(self.patient, decision="deny", practitioner=self.refused),
                headers=own,
            )
        )
        self.permit = created(
            live.http.post(
                "/fhir/Consent",
                json=consent_body(self.patient, decision="permit", practitioner=self.trusted),
                headers=own,
            )
        )

    def consents(self, live: LiveServer) -> dict[str, tuple[str, str]]:
        """The patient's own view: id -> (status, version)."""
        body = live.http.get(f"/fhir/Consent?patient={self.patient}", headers=live.patient(self.patient))
        assert body.status_code == 200, body.text
        return {
            entry["resource"]["id"]: (entry["resource"]["status"], entry["resource"]["meta"]["versionId"])
            for entry in body.json().get("entry", [])
        }


# -- Consents: written by the patient or the consent-capture service only ------------------------


def test_a_professional_with_a_consent_never_changes_the_patients_consents(live: LiveServer) -> None:
    record = Record(live)
    before = record.consents(live)
    assert set(before) == {record.deny, record.permit}
    trusted = live.doctor(record.trusted)
    revoke = [{"op": "replace", "path": "/status", "value": "inactive"}]
    deny_url = f"/fhir/Consent/{record.deny}"
    answers = {
        "PATCH": live.http.patch(
            deny_url, content=json.dumps(revoke), headers={**trusted, "Content-Type": JSON_PATCH}
        ),
        "PUT": live.http.put(
            deny_url,
            json={
                **consent_body(record.patient, decision="deny", practitioner=record.refused),
                "id": record.deny,
                "status": "inactive",
            },
            headers=trusted,
        ),
        "DELETE": live.http.delete(deny_url, headers=trusted),
        "conditional PATCH": live.http.patch(
            f"/fhir/Consent?patient={record.patient}&_id={record.deny}",
            content=json.dumps(revoke),
            headers={**trusted, "Content-Type": JSON_PATCH},
        ),
        "conditional DELETE": live.http.delete(f"/fhir/Consent?_id={record.deny}", headers=trusted),
        "conditional PUT": live.http.put(
            f"/fhir/Consent?_id={record.deny}",
            json={
                **consent_body(record.patient, decision="deny", practitioner=record.refused),
                "status": "inactive",
            },
            headers=trusted,
        ),
        "transaction PATCH": live.http.post(
            "/fhir", json=transaction(patch_entry(f"Consent/{record.deny}", revoke)), headers=trusted
        ),
        "transaction DELETE": live.http.post(
            "/fhir",
            json=transaction({"request": {"method": "DELETE", "url": f"Consent/{record.deny}"}}),
            headers=trusted,
        ),
    }
    for door, response in answers.items():
        assert response.status_code >= 200, door
        if response.status_code < 300 and door != "conditional DELETE":
            raise AssertionError(f"LEAK: {door} on the patient's Consent answered {response.status_code}")
    assert record.consents(live) == before, "a professional changed the patient's consents"


def test_a_professional_never_records_a_consent_granting_more(live: LiveServer) -> None:
    record = Record(live)
    trusted = live.doctor(record.trusted)
    stranger = f"dr-stranger-{unique()}"
    for practitioner in (record.trusted, record.refused, stranger):
        grant = consent_body(record.patient, decision="permit", practitioner=practitioner)
        response = live.http.post("/fhir/Consent", json=grant, headers=trusted)
        assert response.status_code == 403, f"LEAK: a professional recorded a consent: {response.text}"
        assert "consent-writers" in response.text, "the refusal names its rule"
        entry = {"resource": grant, "request": {"method": "POST", "url": "Consent"}}
        response = live.http.post("/fhir", json=transaction(entry), headers=trusted)
        assert response.status_code == 403, f"LEAK: a transaction entry recorded a consent: {response.text}"
        conditional = live.http.post(
            "/fhir/Consent", json=grant, headers={**trusted, "If-None-Exist": f"patient={record.patient}"}
        )
        assert conditional.status_code in (403, 404), f"LEAK: {conditional.status_code} {conditional.text}"
        assert "Consent" not in (conditional.json().get("resourceType") or "")
    assert set(record.consents(live)) == {record.deny, record.permit}


def test_a_professional_never_reads_a_consent_break_the_glass_included(live: LiveServer) -> None:
    record = Record(live)
    for headers in (live.doctor(record.trusted), live.doctor(f"dr-er-{unique()}", purpose="BTG")):
        assert live.http.get(f"/fhir/Consent/{record.deny}", headers=headers).status_code == 404
        found = live.http.get(f"/fhir/Consent?patient={record.patient}", headers=headers)
        assert found.status_code == 200 and not found.json().get("entry"), found.text


def test_only_an_explicit_consent_scope_lets_a_platform_write_consents(live: LiveServer) -> None:
    record = Record(live)
    grant = consent_body(record.patient, decision="permit", practitioner=f"dr-{unique()}")
    wildcard = live.http.post("/fhir/Consent", json=grant, headers=live.system())
    assert wildcard.status_code == 403, f"LEAK: system/*.cruds recorded a consent: {wildcard.text}"
    capture = live.system(scopes=("system/Consent.cruds",), client_id="consent-capture")
    recorded = created(live.http.post("/fhir/Consent", json=grant, headers=capture))
    revoke = [{"op": "replace", "path": "/status", "value": "inactive"}]
    response = live.http.patch(
        f"/fhir/Consent/{recorded}",
        content=json.dumps(revoke),
        headers={**capture, "Content-Type": JSON_PATCH},
    )
    assert response.status_code == 200, response.text
    assert record.consents(live)[recorded][0] == "inactive"


# -- Patients: identity managers, the patient's demographics, INS uniqueness -----------------------


def test_a_patient_never_adds_another_patients_ins_to_her_record(live: LiveServer) -> None:
    other_nir = nir_test_value()
    other = new_patient(live, other_nir)
    mine = new_patient(live)
    own = live.patient(mine)
    add = [{"op": "add", "path": "/identifier/-", "value": {"system": INS_NIR, "value": other_nir}}]
    response = live.http.patch(
        f"/fhir/Patient/{mine}", content=json.dumps(add), headers={**own, "Content-Type": JSON_PATCH}
    )
    assert response.status_code == 403, f"LEAK: {response.status_code} {response.text}"
    current = live.http.get(f"/fhir/Patient/{mine}", headers=own).json()
    replaced = {**current, "identifier": [{"system": INS_NIR, "value": other_nir}]}
    response = live.http.put(f"/fhir/Patient/{mine}", json=replaced, headers=own)
    assert response.status_code == 403, f"LEAK: {response.status_code} {response.text}"
    renamed = {**current, "name": [{"family": "Durand", "given": ["Claire"]}]}
    assert live.http.put(f"/fhir/Patient/{mine}", json=renamed, headers=own).status_code == 200
    found = live.http.get(f"/fhir/Patient?identifier={INS_NIR}|{other_nir}", headers=live.system()).json()
    assert [entry["resource"]["id"] for entry in found.get("entry", [])] == [other]


def test_an_ins_identifies_at_most_one_patient_on_every_write(live: LiveServer) -> None:
    nir = nir_test_value()
    holder = new_patient(live, nir)
    platform = live.system()
    assert live.http.post("/fhir/Patient", json=patient_body(nir), headers=platform).status_code == 409
    other = new_patient(live)
    current = live.http.get(f"/fhir/Patient/{other}", headers=platform).json()
    taken = {**current, "identifier": [{"system": INS_NIR, "value": nir}]}
    assert live.http.put(f"/fhir/Patient/{other}", json=taken, headers=platform).status_code == 409
    patch = [{"op": "add", "path": "/identifier/-", "value": {"system": INS_NIR, "value": nir}}]
    response = live.http.patch(
        f"/fhir/Patient/{other}", content=json.dumps(patch), headers={**platform, "Content-Type": JSON_PATCH}
    )
    assert response.status_code == 409, response.text
    entry = {"resource": patient_body(nir), "request": {"method": "POST", "url": "Patient"}}
    bundle = live.http.post("/fhir", json=transaction(entry), headers=platform)
    assert bundle.status_code == 409, bundle.text
    assert live.http.get(f"/fhir/Patient/{other}", headers=platform).json()["meta"]["versionId"] == "1"
    found = live.http.get(f"/fhir/Patient?identifier={INS_NIR}|{nir}", headers=platform).json()
    assert [entry["resource"]["id"] for entry in found.get("entry", [])] == [holder]


def test_concurrent_creates_with_one_ins_exactly_one_wins(live: LiveServer) -> None:
    nir = nir_test_value()
    platform = live.system()
    statuses: list[int] = []
    barrier = threading.Barrier(6)

    def create() -> None:
        with httpx.Client(base_url=str(live.http.base_url), timeout=60) as client:
            barrier.wait()
            statuses.append(
                client.post("/fhir/Patient", json=patient_body(nir), headers=platform).status_code
            )

    threads = [threading.Thread(target=create) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [201, 409, 409, 409, 409, 409], statuses
    found = live.http.get(f"/fhir/Patient?identifier={INS_NIR}|{nir}&_total=accurate", headers=platform)
    assert found.json()["total"] == 1


def test_identity_managers_delete_patients_professionals_never_write_them(live: LiveServer) -> None:
    record = Record(live)
    trusted = live.doctor(record.trusted)
    current = live.http.get(f"/fhir/Patient/{record.patient}", headers=trusted)
    assert current.status_code == 200, "the consent lets the professional read the Patient"
    renamed = {**current.json(), "name": [{"family": "Forged"}]}
    response = live.http.put(f"/fhir/Patient/{record.patient}", json=renamed, headers=trusted)
    assert response.status_code == 403 and "identity-writers" in response.text, response.text
    assert live.http.delete(f"/fhir/Patient/{record.patient}", headers=trusted).status_code == 403
    assert (
        live.http.delete(f"/fhir/Patient/{record.patient}", headers=live.patient(record.patient)).status_code
        == 403
    )
    assert live.http.delete(f"/fhir/Patient/{record.patient}", headers=live.system()).status_code == 204


# -- the audit trail: readers, redaction, compartments ---------------------------------------------


def trail(live: LiveServer, patient: str, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    response = live.http.get(
        f"/fhir/AuditEvent?patient={patient}&_count=200", headers=headers or live.patient(patient)
    )
    assert response.status_code == 200, response.text
    return [entry["resource"] for entry in response.json().get("entry", [])]


def names(event: dict[str, Any]) -> str:
    """Everything an event says about resources: references and decoded queries."""
    parts = [json.dumps(event)]
    for entity in event.get("entity", []):
        if "query" in entity:
            parts.append(base64.b64decode(entity["query"]).decode())
    return " ".join(parts)


def redacted(event: dict[str, Any]) -> bool:
    return any(
        (label.get("system"), label.get("code")) == REDACTED
        for label in event.get("meta", {}).get("security", [])
    )


def test_a_break_the_glass_doctor_never_reads_a_trail(live: LiveServer) -> None:
    record = Record(live)
    for scopes in (("user/*.cruds",), ("user/AuditEvent.rs",), ("patient/AuditEvent.rs",)):
        emergency = live.doctor(f"dr-er-{unique()}", purpose="BTG", scopes=scopes, patient=record.patient)
        response = live.http.get(f"/fhir/AuditEvent?patient={record.patient}", headers=emergency)
        assert response.status_code == 403 or not response.json().get("entry"), (
            f"LEAK {scopes}: {response.text}"
        )
    event = trail(live, record.patient)[0]["id"]
    emergency = live.doctor(f"dr-er-{unique()}", purpose="BTG", scopes=("user/AuditEvent.rs",))
    assert live.http.get(f"/fhir/AuditEvent/{event}", headers=emergency).status_code == 404
    reviewer = live.system(scopes=("system/AuditEvent.rs",), client_id="privacy-officer")
    assert trail(live, record.patient, reviewer), "an explicit system/AuditEvent.rs client reads the trail"
    wildcard = live.http.get(f"/fhir/AuditEvent/{event}", headers=live.system())
    assert wildcard.status_code in (403, 404), "system/* is no audit reviewer"


def test_the_patient_view_never_names_an_invisible_document(live: LiveServer) -> None:
    record = Record(live)
    trusted = live.doctor(record.trusted)
    hidden = created(
        live.http.post(
            "/fhir/DocumentReference",
            json=document_body(record.patient, record.trusted, invisible=True),
            headers=trusted,
        )
    )
    assert live.http.get(f"/fhir/DocumentReference/{hidden}", headers=trusted).status_code == 200
    query = live.http.get(f"/fhir/DocumentReference?_id={hidden}&patient={record.patient}", headers=trusted)
    assert query.status_code == 200
    events = trail(live, record.patient)
    assert events, "the patient lists the accesses to her record"
    leaking = [event["id"] for event in events if hidden in names(event)]
    assert not leaking, f"LEAK: the patient's trail names the invisible document: {leaking}"
    flagged = [event for event in events if redacted(event)]
    assert len(flagged) >= 3, "the create, the read and the search about it are served redacted"
    assert any(
        event["agent"][0].get("who", {}).get("reference") == f"Practitioner/{record.trusted}"
        for event in flagged
    )
    for event in flagged:
        one = live.http.get(f"/fhir/AuditEvent/{event['id']}", headers=live.patient(record.patient)).json()
        assert hidden not in names(one) and redacted(one)
        history = live.http.get(
            f"/fhir/AuditEvent/{event['id']}/_history", headers=live.patient(record.patient)
        )
        for entry in history.json().get("entry", []):
            assert hidden not in names(entry["resource"])
    reviewer = live.system(scopes=("system/AuditEvent.rs",), client_id="privacy-officer")
    stored = live.http.get(f"/fhir/AuditEvent/{flagged[0]['id']}", headers=reviewer).json()
    assert hidden in names(stored) and not redacted(stored), "the stored record is unchanged"


def test_a_patients_refused_read_never_reveals_another_record(live: LiveServer) -> None:
    me = new_patient(live)
    other = Record(live)
    theirs = created(
        live.http.post(
            "/fhir/DocumentReference",
            json=document_body(other.patient, other.trusted),
            headers=live.doctor(other.trusted),
        )
    )
    own = live.patient(me)
    unknown = f"unknown-{unique()}"
    for target in (theirs, unknown):
        assert live.http.get(f"/fhir/DocumentReference/{target}", headers=own).status_code == 404
    events = trail(live, me)
    assert other.patient not in json.dumps(events), "LEAK: my trail names another patient"
    attempts = {
        target: [event for event in events if f"DocumentReference/{target}" in names(event)]
        for target in (theirs, unknown)
    }

    def shape(event: dict[str, Any]) -> Any:
        return sorted(entity.get("type", {}).get("code", "") for entity in event.get("entity", []))

    assert [shape(e) for e in attempts[theirs]] == [shape(e) for e in attempts[unknown]], (
        "a hidden id and an unknown id look the same in my trail"
    )
    their_trail = trail(live, other.patient)
    assert any(
        f"DocumentReference/{theirs}" in names(event) and event["outcome"] == "4" for event in their_trail
    ), "the attempt is in the owner's trail"


def test_a_search_that_found_nothing_is_in_the_trail_of_the_patient_it_names(live: LiveServer) -> None:
    record = Record(live)
    snooper = live.doctor(record.refused)
    marker = unique()
    response = live.http.get(
        f"/fhir/DocumentReference?patient={record.patient}&_id={marker}", headers=snooper
    )
    assert response.status_code == 200 and not response.json().get("entry")
    assert any(marker in names(event) for event in trail(live, record.patient)), (
        "BALP patient-query: a search naming the patient is in her trail even when it found nothing"
    )
