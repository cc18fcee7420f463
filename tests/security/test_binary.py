"""Binary content and hidden resources, attacked from outside (docs/security.md).

A Binary is governed by the DocumentReference that owns it (`securityContext`, set by the server);
a resource the caller may not see answers every interaction exactly as an id that does not exist.
Every test runs against `fhir-server serve` (deny by default) with ordinary tokens: Alice, a médecin
the patient consented to; Mallory, a médecin with no consent (he has one from another patient of his
own); the patient herself; a platform with `system/*.cruds`.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.integration.mhd_examples import Document, locations, pdf_bytes, provide_bundle
from tests.security.conftest import A07, INS_NIR, LiveServer, nir_test_value, unique

JSON_PATCH = "application/json-patch+json"
IRCP = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]}


@dataclass
class Record:
    """One patient's record: a document provided by Alice (ITI-65), its content, and the actors."""

    patient: str
    document: str
    binary: str
    content: bytes
    alice: dict[str, str]
    mallory: dict[str, str]
    mallory_patient: str
    owner: dict[str, str]
    """The patient's own token."""


def _patient(live: LiveServer) -> str:
    resource = {
        "resourceType": "Patient",
        "identifier": [{"use": "official", "system": INS_NIR, "value": nir_test_value()}],
        "name": [{"use": "official", "family": "Martin", "given": ["Claire"]}],
        "gender": "female",
        "birthDate": "1984-03-12",
    }
    created = live.http.post("/fhir/Patient", json=resource, headers=live.system())
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def _consent_to(live: LiveServer, patient: str, practitioner: str) -> None:
    consent = {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient}"},
        "policyRule": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]
        },
        "provision": {
            "type": "permit",
            "actor": [{"role": IRCP, "reference": {"reference": f"Practitioner/{practitioner}"}}],
        },
    }
    created = live.http.post("/fhir/Consent", json=consent, headers=live.patient(patient))
    assert created.status_code == 201, created.text


@pytest.fixture
def record(live: LiveServer) -> Record:
    return _record(live)


@pytest.fixture(scope="module")
def shared(live: LiveServer) -> Record:
    """A record the property test only attacks (it checks that nothing changes)."""
    return _record(live)


def _record(live: LiveServer) -> Record:
    alice, mallory = f"alice-{unique()}", f"mallory-{unique()}"
    patient, mallory_patient = _patient(live), _patient(live)
    _consent_to(live, patient, alice)
    _consent_to(live, mallory_patient, mallory)
    content = pdf_bytes(2048, seed=unique())
    alice_headers = live.doctor(alice)
    provided = live.http.post(
        "/fhir", json=provide_bundle(f"Patient/{patient}", [Document(content)]), headers=alice_headers
    )
    assert provided.status_code == 200, provided.text
    _, document, binary = locations(provided.json())[:3]
    return Record(
        patient=patient,
        document=document.split("/")[1],
        binary=binary.split("/")[1],
        content=content,
        alice=alice_headers,
        mallory=live.doctor(mallory),
        mallory_patient=mallory_patient,
        owner=live.patient(patient),
    )


def _stored_base64(record: Record) -> str:
    return base64.b64encode(record.content).decode("ascii")


def _leaks(response: httpx.Response, record: Record) -> bool:
    return _stored_base64(record) in response.text or record.content in response.content


def _json(headers: dict[str, str]) -> dict[str, str]:
    return {**headers, "Accept": "application/fhir+json"}


# -- ownership ------------------------------------------------------------------------------------


def test_binary_of_a_provide_bundle_is_owned_by_its_document(live: LiveServer, record: Record) -> None:
    read = live.http.get(f"/fhir/Binary/{record.binary}", headers=_json(record.alice))
    assert read.status_code == 200
    assert read.json()["securityContext"] == {"reference": f"DocumentReference/{record.document}"}
    assert base64.b64decode(read.json()["data"]) == record.content
    raw = live.http.get(f"/fhir/Binary/{record.binary}", headers={**record.owner, "Accept": "*/*"})
    assert raw.status_code == 200 and raw.content == record.content


def test_client_securitycontext_is_not_taken(live: LiveServer, record: Record) -> None:
    """Mallory names Alice's document as his upload's context: the server drops it."""
    upload = {
        "resourceType": "Binary",
        "contentType": "text/plain",
        "securityContext": {"reference": f"DocumentReference/{record.document}"},
        "data": base64.b64encode(b"mallory").decode(),
    }
    created = live.http.post("/fhir/Binary", json=upload, headers=record.mallory)
    assert created.status_code == 201, created.text
    assert "securityContext" not in created.json()
    binary = created.json()["id"]
    assert live.http.get(f"/fhir/Binary/{binary}", headers=record.alice).status_code == 404
    assert live.http.get(f"/fhir/Binary/{binary}", headers=record.mallory).content == b"mallory"


def test_unowned_binary_is_visible_to_its_uploader_only(live: LiveServer, record: Record) -> None:
    upload = {"resourceType": "Binary", "contentType": "text/plain", "data": base64.b64encode(b"x").decode()}
    created = live.http.post("/fhir/Binary", json=upload, headers=record.alice)
    binary = created.json()["id"]
    assert live.http.get(f"/fhir/Binary/{binary}", headers=record.alice).status_code == 200
    for other in (record.mallory, record.owner, live.system()):
        assert live.http.get(f"/fhir/Binary/{binary}", headers=other).status_code == 404


def test_a_document_claims_the_binary_its_own_client_uploaded(live: LiveServer, record: Record) -> None:
    content = b"compte rendu " + unique().encode()
    upload = {
        "resourceType": "Binary",
        "contentType": "text/plain",
        "data": base64.b64encode(content).decode(),
    }
    binary = live.http.post("/fhir/Binary", json=upload, headers=record.alice).json()["id"]
    assert live.http.get(f"/fhir/Binary/{binary}", headers=record.owner).status_code == 404
    document = Document(content).document_reference(f"Patient/{record.patient}")
    document["content"][0]["attachment"]["url"] = f"Binary/{binary}"
    created = live.http.post("/fhir/DocumentReference", json=document, headers=record.alice)
    assert created.status_code == 201, created.text
    read = live.http.get(f"/fhir/Binary/{binary}", headers=_json(record.owner))
    assert read.status_code == 200
    assert read.json()["securityContext"] == {"reference": f"DocumentReference/{created.json()['id']}"}
    assert read.json()["meta"]["versionId"] == "2"


# -- the reproduced leaks -------------------------------------------------------------------------


def test_patch_with_return_representation_does_not_return_hidden_content(
    live: LiveServer, record: Record
) -> None:
    operations = [{"op": "replace", "path": "/contentType", "value": "text/plain"}]
    answers = [
        live.http.patch(
            f"/fhir/Binary/{target}",
            content=json.dumps(operations),
            headers={**record.mallory, "Content-Type": JSON_PATCH, "Prefer": "return=representation"},
        )
        for target in (record.binary, f"unknown-{unique()}")
    ]
    assert [answer.status_code for answer in answers] == [404, 404]
    assert not _leaks(answers[0], record)
    unchanged = live.http.get(f"/fhir/Binary/{record.binary}", headers=_json(record.alice))
    assert unchanged.json()["contentType"] == "application/pdf"


@pytest.mark.parametrize("who", ["mallory", "alice"])
def test_failed_json_patch_test_does_not_echo_the_stored_value(
    live: LiveServer, record: Record, who: str
) -> None:
    operations = [{"op": "test", "path": "/data", "value": "bm90IGl0"}]
    headers = record.mallory if who == "mallory" else record.alice
    response = live.http.patch(
        f"/fhir/Binary/{record.binary}",
        content=json.dumps(operations),
        headers={**headers, "Content-Type": JSON_PATCH},
    )
    assert response.status_code == (404 if who == "mallory" else 422)
    assert not _leaks(response, record)
    if who == "alice":
        assert (
            response.json()["issue"][0]["diagnostics"]
            == "JSON Patch test failed: operation 0 ('test' at '/data')"
        )


def test_if_none_exist_does_not_return_a_hidden_binary(live: LiveServer, record: Record) -> None:
    upload = {"resourceType": "Binary", "contentType": "text/plain", "data": base64.b64encode(b"m").decode()}
    answers = [
        live.http.post(
            "/fhir/Binary",
            json=upload,
            headers={**record.mallory, "If-None-Exist": f"_id={target}", "Prefer": "return=representation"},
        )
        for target in (record.binary, f"unknown-{unique()}")
    ]
    assert [answer.status_code for answer in answers] == [201, 201]
    assert answers[0].json()["id"] != record.binary
    assert not _leaks(answers[0], record)
    mine = live.http.post(
        "/fhir/Binary", json=upload, headers={**record.alice, "If-None-Exist": f"_id={record.binary}"}
    )
    assert mine.status_code == 200 and mine.json()["id"] == record.binary


def test_a_new_document_pointing_at_a_hidden_binary_does_not_open_it(
    live: LiveServer, record: Record
) -> None:
    targets = (record.binary, f"unknown-{unique()}")
    answers = []
    for target in targets:
        lure = Document(b"lure").document_reference(f"Patient/{record.mallory_patient}")
        lure["content"][0]["attachment"] = {"contentType": "application/pdf", "url": f"Binary/{target}"}
        answers.append(live.http.post("/fhir/DocumentReference", json=lure, headers=record.mallory))
    assert [answer.status_code for answer in answers] == [422, 422]
    assert _shape(answers[0], targets[0]) == _shape(answers[1], targets[1])
    assert live.http.get(f"/fhir/Binary/{record.binary}", headers=record.mallory).status_code == 404
    owner = live.http.get(f"/fhir/Binary/{record.binary}", headers=_json(record.alice)).json()
    assert owner["securityContext"] == {"reference": f"DocumentReference/{record.document}"}


def test_a_document_may_reference_a_binary_its_caller_may_read_without_taking_it(
    live: LiveServer, record: Record
) -> None:
    second = Document(record.content).document_reference(f"Patient/{record.patient}")
    second["content"][0]["attachment"]["url"] = f"Binary/{record.binary}"
    created = live.http.post("/fhir/DocumentReference", json=second, headers=record.alice)
    assert created.status_code == 201, created.text
    owner = live.http.get(f"/fhir/Binary/{record.binary}", headers=_json(record.alice)).json()
    assert owner["securityContext"] == {"reference": f"DocumentReference/{record.document}"}


def test_put_answers_a_hidden_id_as_an_unknown_one(live: LiveServer, record: Record) -> None:
    targets = (record.binary, f"unknown-{unique()}")
    answers = []
    for target in targets:
        body = {"resourceType": "Binary", "id": target, "contentType": "text/plain", "data": "eA=="}
        answers.append(live.http.put(f"/fhir/Binary/{target}", json=body, headers=record.mallory))
    assert [answer.status_code for answer in answers] == [404, 404]
    assert _shape(answers[0], targets[0]) == _shape(answers[1], targets[1])


def test_iti_68_vread_and_history_hide_the_content(live: LiveServer, record: Record) -> None:
    unknown = f"unknown-{unique()}"
    for suffix in ("", "/_history/1", "/_history"):
        hidden = live.http.get(f"/fhir/Binary/{record.binary}{suffix}", headers=record.mallory)
        absent = live.http.get(f"/fhir/Binary/{unknown}{suffix}", headers=record.mallory)
        assert hidden.status_code == absent.status_code
        assert _shape(hidden, record.binary) == _shape(absent, unknown)
        assert not _leaks(hidden, record)
    assert live.http.get(f"/fhir/Binary/{record.binary}/_history/1", headers=record.alice).content == (
        record.content
    )


def test_masking_the_document_hides_its_content(live: LiveServer, record: Record) -> None:
    masked = [
        {
            "op": "replace",
            "path": "/securityLabel/0",
            "value": {
                "coding": [
                    {
                        "system": A07,
                        "code": "MASQUE_PS",
                    }
                ]
            },
        }
    ]
    patched = live.http.patch(
        f"/fhir/DocumentReference/{record.document}",
        content=json.dumps(masked),
        headers={**record.owner, "Content-Type": JSON_PATCH},
    )
    assert patched.status_code == 200, patched.text
    assert live.http.get(f"/fhir/Binary/{record.binary}", headers=record.alice).status_code == 404
    assert live.http.get(f"/fhir/Binary/{record.binary}", headers=record.owner).status_code == 200


# -- the property: a hidden id and an unknown id answer the same ------------------------------------


def _shape(response: httpx.Response, resource_id: str) -> tuple[int, Any]:
    """What a caller can tell from an answer, with the id it named and any server-assigned id blanked."""
    try:
        body = response.json()
    except ValueError:
        return response.status_code, None
    if not isinstance(body, dict):
        return response.status_code, None
    if body.get("resourceType") == "OperationOutcome":
        issues = [
            {key: str(value).replace(resource_id, "<id>") for key, value in issue.items()}
            for issue in body.get("issue", [])
        ]
        return response.status_code, issues
    return response.status_code, sorted(key for key in body if key not in ("id", "meta"))


def _body(resource_type: str, resource_id: str | None, record: Record) -> dict[str, Any]:
    if resource_type == "Binary":
        body: dict[str, Any] = {"resourceType": "Binary", "contentType": "text/plain", "data": "eA=="}
    else:
        body = Document(b"x").document_reference(f"Patient/{record.patient}")
        body["content"][0]["attachment"] = {"contentType": "text/plain", "url": "https://example.org/x"}
    if resource_id is not None:
        body["id"] = resource_id
    return body


Interaction = Callable[[LiveServer, dict[str, str], str, str, Record], httpx.Response]
PATCH = json.dumps([{"op": "replace", "path": "/status", "value": "entered-in-error"}])


def _patch_headers(headers: dict[str, str]) -> dict[str, str]:
    return {**headers, "Content-Type": JSON_PATCH, "Prefer": "return=representation"}


INTERACTIONS: dict[str, Interaction] = {
    "read": lambda live, h, t, i, r: live.http.get(f"/fhir/{t}/{i}", headers=h),
    "vread": lambda live, h, t, i, r: live.http.get(f"/fhir/{t}/{i}/_history/1", headers=h),
    "history": lambda live, h, t, i, r: live.http.get(f"/fhir/{t}/{i}/_history", headers=h),
    "put": lambda live, h, t, i, r: live.http.put(
        f"/fhir/{t}/{i}", json=_body(t, i, r), headers={**h, "Prefer": "return=representation"}
    ),
    "patch": lambda live, h, t, i, r: live.http.patch(
        f"/fhir/{t}/{i}", content=PATCH, headers=_patch_headers(h)
    ),
    "delete": lambda live, h, t, i, r: live.http.delete(f"/fhir/{t}/{i}", headers=h),
    "conditional-put": lambda live, h, t, i, r: live.http.put(
        f"/fhir/{t}?_id={i}", json=_body(t, None, r), headers={**h, "Prefer": "return=representation"}
    ),
    "conditional-patch": lambda live, h, t, i, r: live.http.patch(
        f"/fhir/{t}?_id={i}", content=PATCH, headers=_patch_headers(h)
    ),
    "conditional-delete": lambda live, h, t, i, r: live.http.delete(f"/fhir/{t}?_id={i}", headers=h),
    "if-none-exist": lambda live, h, t, i, r: live.http.post(
        f"/fhir/{t}", json=_body(t, None, r), headers={**h, "If-None-Exist": f"_id={i}"}
    ),
}

CALLERS: dict[str, Callable[[LiveServer, Record], dict[str, str]]] = {
    "doctor-without-consent": lambda live, r: r.mallory,
    "other-patient": lambda live, r: live.patient(r.mallory_patient),
    "system-without-consent": lambda live, r: live.system(client_id=f"platform-{unique()}"),
}


HIDDEN_VS_UNKNOWN = [
    (resource_type, caller, interaction)
    for resource_type in ("DocumentReference", "Binary")
    for caller in sorted(CALLERS)
    for interaction in sorted(INTERACTIONS)
    # Inherent, so not a case: a system/ client that may create a Binary under an id it chooses
    # (update as create) gets 201 on a free id and 404 on a taken one.
    if not (caller.startswith("system") and interaction == "put" and resource_type == "Binary")
]


@pytest.mark.parametrize(("resource_type", "caller", "interaction"), HIDDEN_VS_UNKNOWN)
def test_hidden_and_unknown_ids_answer_alike(
    live: LiveServer, shared: Record, resource_type: str, caller: str, interaction: str
) -> None:
    """For every caller who may not see the record, every interaction on a hidden id answers what it
    answers on an id that does not exist; the hidden resource is unchanged and its content never shows.

    One exception is inherent and left out of the cases (HIDDEN_VS_UNKNOWN).
    """
    record = shared
    headers = CALLERS[caller](live, record)
    hidden = record.binary if resource_type == "Binary" else record.document
    unknown = f"unknown-{unique()}"
    before = live.http.get(f"/fhir/{resource_type}/{hidden}", headers=_json(record.alice)).json()
    send = INTERACTIONS[interaction]
    on_hidden = send(live, copy.deepcopy(headers), resource_type, hidden, record)
    on_unknown = send(live, copy.deepcopy(headers), resource_type, unknown, record)
    assert _shape(on_hidden, hidden) == _shape(on_unknown, unknown), (on_hidden.text, on_unknown.text)
    assert not _leaks(on_hidden, record)
    after = live.http.get(f"/fhir/{resource_type}/{hidden}", headers=_json(record.alice)).json()
    assert after == before


@pytest.mark.parametrize(
    "path", ["/fhir/Binary", "/fhir/Binary?_id=x", "/fhir/Binary/_history", "/fhir/Binary/any-id/_history"]
)
def test_binary_is_neither_searchable_nor_historied_over_http(live: LiveServer, path: str) -> None:
    """Binary content is reached only through its DocumentReference: no search, no history (405)."""
    response = live.http.get(path, headers=live.system())
    assert response.status_code == 405, response.text
    assert response.json()["resourceType"] == "OperationOutcome"
