"""One door, tried from outside: bundle entries, unknown paths, unauthenticated callers, forged addresses.

Against a live `fhir-server serve` (deny-by-default), with ordinary tokens. A doctor is permitted by
patient A's Consent; A masks one of her documents (MASQUE_PS); patient B gave no consent, so her
document is denied. Every batch or transaction entry must answer exactly what the same plain request
answers, and a path naming anything but a declared resource type must be a 404 that reads and
writes nothing (docs/security.md).
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.security.conftest import ACT_REASON, FHIR_JSON, INS_NIR, LiveServer, nir_test_value, unique

LOINC = "http://loinc.org"
VISIBILITY = (
    "https://mos.esante.gouv.fr/NOS/TRE_A07-StatutVisibiliteDocument/FHIR/TRE-A07-StatutVisibiliteDocument"
)
MASKED = [{"coding": [{"system": VISIBILITY, "code": "MASQUE_PS"}]}]
IRCP = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]}
JSON_PATCH = "application/json-patch+json"
INTERNAL = (
    "Binary_history",
    "DocumentReference_history",
    "Patient_history",
    "Consent_history",
    "AuditEvent_chain",
    "binary.files",
    "binary.chunks",
    "system.users",
    "patient",
    "documentreference",
    "Observation",
    "..",
    "%2E%2E",
    "DocumentReference..",
)
"""Names that are not resource types of this server: internal collections, wrong case, traversal."""


@dataclass(frozen=True)
class World:
    doctor: dict[str, str]
    doctor_key: str
    patient_a: str
    patient_b: str
    visible: str
    masked: str
    denied: str


def _patient(live: LiveServer) -> str:
    resource = {
        "resourceType": "Patient",
        "identifier": [{"use": "official", "system": INS_NIR, "value": nir_test_value()}],
        "name": [{"use": "official", "family": "Martin", "given": ["Claire"]}],
        "gender": "female",
        "birthDate": "1984-03-12",
    }
    response = live.http.post("/fhir/Patient", json=resource, headers=live.system())
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _document(patient_id: str) -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "masterIdentifier": {
            "system": "urn:ietf:rfc:3986",
            "value": f"urn:oid:1.2.250.1.999.7.{uuid.uuid4().int % 10**12}",
        },
        "status": "current",
        "type": {"coding": [{"system": LOINC, "code": "11488-4"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "date": "2026-10-01T09:30:00+02:00",
        "author": [{"reference": "Practitioner/dr-author-other"}],
        "content": [
            {
                "attachment": {
                    "contentType": "application/pdf",
                    "url": f"https://documents.example.org/{uuid.uuid4()}.pdf",
                }
            }
        ],
    }


def _created(response: httpx.Response) -> str:
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@pytest.fixture(scope="module")
def world(live: LiveServer) -> World:
    doctor_key = f"dr-door-{unique()}"
    patient_a, patient_b = _patient(live), _patient(live)
    own_a, own_b = live.patient(patient_a), live.patient(patient_b)
    consent = {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
            ]
        },
        "category": [{"coding": [{"system": LOINC, "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient_a}"},
        "dateTime": "2026-09-01T10:00:00+02:00",
        "policyRule": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]
        },
        "provision": {
            "type": "deny",
            "provision": [
                {
                    "type": "permit",
                    "actor": [{"role": IRCP, "reference": {"reference": f"Practitioner/{doctor_key}"}}],
                }
            ],
        },
    }
    _created(live.http.post("/fhir/Consent", json=consent, headers=own_a))
    visible = _created(live.http.post("/fhir/DocumentReference", json=_document(patient_a), headers=own_a))
    masked = _created(live.http.post("/fhir/DocumentReference", json=_document(patient_a), headers=own_a))
    patch = [{"op": "add", "path": "/securityLabel", "value": MASKED}]
    masking = live.http.patch(
        f"/fhir/DocumentReference/{masked}",
        content=json.dumps(patch),
        headers={**own_a, "Content-Type": JSON_PATCH},
    )
    assert masking.status_code == 200, masking.text
    denied = _created(live.http.post("/fhir/DocumentReference", json=_document(patient_b), headers=own_b))
    doctor = live.doctor(doctor_key)
    assert live.http.get(f"/fhir/DocumentReference/{visible}", headers=doctor).status_code == 200
    return World(doctor, doctor_key, patient_a, patient_b, visible, masked, denied)


# -- helpers ---------------------------------------------------------------------------------------


def _entry(method: str, url: str, resource: dict[str, Any] | None = None, **request: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"request": {"method": method, "url": url, **request}}
    if resource is not None:
        entry["resource"] = resource
    return entry


def _bundle(kind: str, *entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def _post_bundle(live: LiveServer, headers: dict[str, str], bundle: dict[str, Any]) -> httpx.Response:
    return live.http.post("/fhir", json=bundle, headers=headers)


def _status(entry: dict[str, Any]) -> int:
    return int(entry["response"]["status"].split()[0])


def _normalised(body: Any) -> Any:
    """A body without what differs between two answers to the same question: Bundle id and times."""
    if isinstance(body, dict) and body.get("resourceType") == "Bundle":
        return {key: value for key, value in body.items() if key not in ("id", "meta", "timestamp")}
    return body


def _entry_body(entry: dict[str, Any]) -> Any:
    return entry.get("resource", entry["response"].get("outcome"))


def _hidden_ids(world: World) -> tuple[str, str]:
    return world.masked, world.denied


# -- internal collections and undeclared types ---------------------------------------------------------


@pytest.mark.parametrize("name", INTERNAL)
def test_a_batch_entry_naming_anything_but_a_resource_type_is_404(
    live: LiveServer, world: World, name: str
) -> None:
    entries = [
        _entry("GET", f"{name}?_count=100"),
        _entry("GET", f"{name}/{world.masked}"),
        _entry("GET", f"{name}/_history"),
        _entry("POST", f"{name}/_search"),
        _entry("DELETE", f"{name}?_id={world.masked}"),
        _entry("PUT", f"{name}/{world.masked}", {"resourceType": "Binary", "contentType": "text/plain"}),
    ]
    response = _post_bundle(live, world.doctor, _bundle("batch", *entries))
    assert response.status_code == 200, response.text
    answers = response.json()["entry"]
    assert [_status(entry) for entry in answers] == [404] * len(entries), response.text
    assert all(_entry_body(entry)["resourceType"] == "OperationOutcome" for entry in answers)
    for hidden in _hidden_ids(world):
        assert f'"id":"{hidden}"' not in response.text.replace(" ", "")


@pytest.mark.parametrize("name", ["Binary_history", "AuditEvent_chain", "..", "patient"])
def test_a_transaction_naming_an_internal_collection_is_refused_whole(
    live: LiveServer, world: World, name: str
) -> None:
    nir = nir_test_value()
    patient = {
        "resourceType": "Patient",
        "identifier": [{"use": "official", "system": INS_NIR, "value": nir}],
        "name": [{"use": "official", "family": "Door", "given": ["Tx"]}],
        "gender": "female",
        "birthDate": "1984-03-12",
    }
    bundle = _bundle(
        "transaction",
        _entry("POST", "Patient", patient),
        _entry("DELETE", f"{name}?_id={world.masked}"),
        _entry("GET", f"{name}?_count=100"),
    )
    response = _post_bundle(live, live.system(), bundle)
    assert response.status_code == 404, response.text
    assert response.json()["resourceType"] == "OperationOutcome"
    found = live.http.get(f"/fhir/Patient?identifier={INS_NIR}|{nir}", headers=live.system())
    assert found.status_code == 200 and found.json().get("total", len(found.json().get("entry", []))) == 0


@pytest.mark.parametrize("path", ["Binary_history", "patient", "Patient/x/_history/1/extra"])
@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_unknown_paths_under_fhir_are_404_operation_outcomes_and_audited(
    live: LiveServer, world: World, path: str, method: str
) -> None:
    request_id = f"door-{unique()}"
    response = live.http.request(
        method, f"/fhir/{path}", headers={**world.doctor, "X-Request-Id": request_id}, content=b"{}"
    )
    assert response.status_code == 404, response.text
    assert response.json()["resourceType"] == "OperationOutcome"
    events = _events(live, request_id)
    assert len(events) == 1 and events[0]["outcome"] == "4"


def _events(live: LiveServer, request_id: str, **criteria: str) -> list[dict[str, Any]]:
    auditor = live.system(scopes=("system/AuditEvent.rs",), client_id="auditor")
    params = {"entity:identifier": request_id, **criteria}
    response = live.http.get("/fhir/AuditEvent", params=params, headers=auditor)
    assert response.status_code == 200, response.text
    return [entry["resource"] for entry in response.json().get("entry", [])]


# -- every entry kind, on hidden documents ----------------------------------------------------------------


def _kinds(document_id: str) -> list[tuple[str, str, dict[str, Any] | None, dict[str, str]]]:
    """(method, url, body, bundle request extras) for every way an entry can reach one document."""
    patch = [{"op": "replace", "path": "/status", "value": "superseded"}]
    return [
        ("GET", f"DocumentReference/{document_id}", None, {}),
        ("GET", f"DocumentReference/{document_id}/_history/1", None, {}),
        ("GET", f"DocumentReference/{document_id}/_history", None, {}),
        ("GET", f"DocumentReference?_id={document_id}", None, {}),
        ("GET", f"DocumentReference?_id={document_id}&_revinclude=AuditEvent:entity", None, {}),
        ("POST", f"DocumentReference/_search?_id={document_id}", None, {}),
        ("GET", f"DocumentReference/_history?_count=100&_id={document_id}", None, {}),
        ("PUT", f"DocumentReference/{document_id}", {"status": "entered-in-error"}, {}),
        ("PUT", f"DocumentReference?_id={document_id}", {"status": "entered-in-error"}, {}),
        ("PATCH", f"DocumentReference/{document_id}", {"patch": patch}, {}),
        ("PATCH", f"DocumentReference?_id={document_id}", {"patch": patch}, {}),
        ("DELETE", f"DocumentReference/{document_id}", None, {}),
        ("DELETE", f"DocumentReference?_id={document_id}", None, {}),
        ("POST", "DocumentReference", {"create": True}, {"ifNoneExist": f"_id={document_id}"}),
    ]


def _plain(
    live: LiveServer,
    headers: dict[str, str],
    method: str,
    url: str,
    body: dict[str, Any] | None,
    extras: dict[str, str],
) -> httpx.Response:
    sent = {**headers, "Accept": FHIR_JSON}
    if "ifNoneExist" in extras:
        sent["If-None-Exist"] = extras["ifNoneExist"]
    if body is not None and "patch" in body:
        return live.http.request(
            method,
            f"/fhir/{url}",
            content=json.dumps(body["patch"]),
            headers={**sent, "Content-Type": JSON_PATCH},
        )
    return live.http.request(method, f"/fhir/{url}", json=body, headers=sent)


def _as_entry(method: str, url: str, body: dict[str, Any] | None, extras: dict[str, str]) -> dict[str, Any]:
    if body is not None and "patch" in body:
        data = base64.b64encode(json.dumps(body["patch"]).encode()).decode()
        return _entry(
            method, url, {"resourceType": "Binary", "contentType": JSON_PATCH, "data": data}, **extras
        )
    return _entry(method, url, body, **extras)


def _resource_for(
    world: World, document_id: str, method: str, url: str, body: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The body of a write kind, aimed at `document_id` (PUT keeps the id of the URL)."""
    if body is None or "patch" in body:
        return body
    owner = world.patient_b if document_id == world.denied else world.patient_a
    resource = _document(owner) | {"status": body.get("status", "current")}
    if method == "PUT" and "?" not in url:
        resource["id"] = document_id
    return resource


@pytest.mark.parametrize("which", ["masked", "denied"])
def test_every_entry_kind_on_a_hidden_document_answers_what_the_plain_request_answers(
    live: LiveServer, world: World, which: str
) -> None:
    document_id = getattr(world, which)
    for method, url, body, extras in _kinds(document_id):
        resource = _resource_for(world, document_id, method, url, body)
        plain = _plain(live, world.doctor, method, url, resource, extras)
        batch = _post_bundle(live, world.doctor, _bundle("batch", _as_entry(method, url, resource, extras)))
        assert batch.status_code == 200, batch.text
        [answer] = batch.json()["entry"]
        what = f"{method} {url}"
        assert _status(answer) == plain.status_code, f"{what}: batch {answer} vs plain {plain.text}"
        if plain.status_code != 201:
            assert _normalised(_entry_body(answer)) == _normalised(plain.json() if plain.content else None), (
                what
            )
        transaction = _post_bundle(
            live, world.doctor, _bundle("transaction", _as_entry(method, url, resource, extras))
        )
        if method in ("GET",) or "_search" in url:
            [answer] = transaction.json()["entry"]
            assert _status(answer) == plain.status_code, what
            assert _normalised(_entry_body(answer)) == _normalised(plain.json()), what
        elif plain.status_code >= 400:
            assert transaction.status_code == plain.status_code, f"{what}: {transaction.text}"
        if method in ("PUT", "PATCH", "DELETE") and "?" not in url:
            assert plain.status_code == 404, f"{what}: {plain.status_code} {plain.text}"
        for response in (plain, batch, transaction):
            assert f'"id":"{document_id}"' not in response.text.replace(" ", ""), (
                f"{what} leaked the document"
            )
    check = live.http.get(
        f"/fhir/DocumentReference/{document_id}",
        headers=live.patient(world.patient_a if which == "masked" else world.patient_b),
    )
    assert check.status_code == 200 and check.json()["meta"]["versionId"] == (
        "2" if which == "masked" else "1"
    )


def test_a_hidden_read_in_a_batch_is_audited_like_the_plain_read(live: LiveServer, world: World) -> None:
    url = f"DocumentReference/{world.masked}"
    plain_id, batch_id = f"door-{unique()}", f"door-{unique()}"
    live.http.get(f"/fhir/{url}", headers={**world.doctor, "X-Request-Id": plain_id})
    _post_bundle(live, {**world.doctor, "X-Request-Id": batch_id}, _bundle("batch", _entry("GET", url)))
    [plain] = _events(live, plain_id)
    batch = _events(live, batch_id, subtype="read")
    assert len(batch) == 1

    def shape(event: dict[str, Any]) -> tuple[Any, ...]:
        whats = sorted(
            entity["what"]["reference"]
            for entity in event.get("entity", [])
            if "reference" in entity.get("what", {})
        )
        subtypes = sorted(coding["code"] for coding in event["subtype"] if coding["code"] != "batch")
        return event["action"], event["outcome"], subtypes, whats

    assert shape(batch[0]) == shape(plain)


# -- the property: every bundle entry answers what the plain request answers --------------------------------


READ_KINDS = st.sampled_from(
    [
        ("GET", "DocumentReference/{id}"),
        ("GET", "DocumentReference/{id}/_history/1"),
        ("GET", "DocumentReference/{id}/_history/2"),
        ("GET", "DocumentReference/{id}/_history"),
        ("GET", "DocumentReference?_id={id}"),
        ("GET", "DocumentReference?_id={id}&_include=DocumentReference:subject"),
        ("GET", "DocumentReference?subject=Patient/{patient}&_count=5"),
        ("GET", "Patient/{patient}"),
        ("GET", "Patient?_id={patient}&_revinclude=DocumentReference:subject"),
        ("GET", "Consent?patient={patient}"),
        ("POST", "DocumentReference/_search?_id={id}"),
        ("PATCH", "DocumentReference/{id}"),
        ("DELETE", "DocumentReference?_id={id}&status=entered-in-error"),
        ("GET", "{id}"),
        ("GET", "{id}/_history"),
        ("GET", "Binary_history?_count=100"),
        ("GET", "AuditEvent_chain"),
        ("GET", "DocumentReference/{id}/$everything"),
        ("POST", "DocumentReference/{id}/_history"),
    ]
)
TARGETS = st.sampled_from(["visible", "masked", "denied", "unknown"])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=READ_KINDS, target=TARGETS)
def test_property_every_bundle_entry_answers_what_the_plain_request_answers(
    live: LiveServer, world: World, kind: tuple[str, str], target: str
) -> None:
    method, template = kind
    document_id = f"unknown-{unique()}" if target == "unknown" else getattr(world, target)
    patient = world.patient_b if target == "denied" else world.patient_a
    url = template.format(id=document_id, patient=patient)
    # A failing `test`: the patch never writes, so the plain request and the entry see the same state.
    failing = [{"op": "test", "path": "/status", "value": "entered-in-error"}]
    body = {"patch": failing} if method == "PATCH" else None
    plain = _plain(live, world.doctor, method, url, body, {})
    batch = _post_bundle(live, world.doctor, _bundle("batch", _as_entry(method, url, body, {})))
    assert batch.status_code == 200, batch.text
    [answer] = batch.json()["entry"]
    assert _status(answer) == plain.status_code, f"{method} {url}: {answer} vs {plain.text}"
    expected = _normalised(plain.json()) if plain.content else None
    assert _normalised(_entry_body(answer)) == expected, f"{method} {url}"
    if target in ("masked", "denied") and plain.status_code < 400:
        assert f'"id":"{document_id}"' not in plain.text.replace(" ", ""), f"{method} {url} leaked"


# -- who is recorded: unauthenticated callers, forwarded addresses ---------------------------------------


def test_an_unauthenticated_request_never_lands_in_a_patient_trail(live: LiveServer, world: World) -> None:
    request_id = f"door-{unique()}"
    response = live.http.get(f"/fhir/Patient/{world.patient_a}", headers={"X-Request-Id": request_id})
    assert response.status_code == 401
    [event] = _events(live, request_id)
    assert event["outcome"] == "4"
    assert not [
        entity for entity in event.get("entity", []) if "Patient/" in json.dumps(entity.get("what", {}))
    ]
    assert _events(live, request_id, patient=world.patient_a) == []


def test_x_forwarded_for_from_an_untrusted_peer_is_not_believed(live: LiveServer, world: World) -> None:
    request_id = f"door-{unique()}"
    forged = "203.0.113.66"
    live.http.get(
        f"/fhir/DocumentReference/{world.visible}",
        headers={**world.doctor, "X-Request-Id": request_id, "X-Forwarded-For": forged},
    )
    [event] = _events(live, request_id)
    addresses = {agent.get("network", {}).get("address") for agent in event["agent"]}
    assert forged not in addresses
    assert "127.0.0.1" in addresses
    assert _events(live, request_id, address=forged) == []


def test_purpose_is_carried_into_every_entry_of_a_bundle(live: LiveServer, world: World) -> None:
    """The entry runs as the caller of the Bundle: the same token, the same purpose of use."""
    request_id = f"door-{unique()}"
    url = f"DocumentReference/{world.visible}"
    _post_bundle(live, {**world.doctor, "X-Request-Id": request_id}, _bundle("batch", _entry("GET", url)))
    [event] = _events(live, request_id, subtype="read")
    [user] = [agent for agent in event["agent"] if agent.get("requestor")]
    assert user["who"]["reference"] == f"Practitioner/{world.doctor_key}"
    purposes = {
        (coding.get("system"), coding["code"]) for use in user["purposeOfUse"] for coding in use["coding"]
    }
    assert (ACT_REASON, "TREAT") in purposes
