"""IHE MHD ITI-65 Provide Document Bundle (STANDARDS §5.1) through the transaction path: SubmissionSet,
DocumentReferences, Folder and Binaries stored atomically; size/hash checks; replacement; ITI-65 audit;
refusals that store nothing (documents, history, Binaries, GridFS files and chunks counted)."""

from __future__ import annotations

import base64
import copy
import json
import uuid
from typing import Any

import pytest

from tests.integration.conftest import Server
from tests.integration.mhd_examples import (
    DISCHARGE,
    LAB,
    MHD_LIST_TYPES,
    Document,
    create_patient,
    entry,
    locations,
    pdf_bytes,
    provide_bundle,
    stored_counts,
)

pytestmark = pytest.mark.asyncio

IHE_EVENT_TYPE = "urn:ihe:event-type-code"


async def provide(server: Server, bundle: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    return await server.http.post("/fhir", json=bundle, headers=headers or server.as_doctor())


async def test_provide_bundle_stores_submission_set_documents_folder_and_binaries(
    fresh_server: Server,
) -> None:
    patient, _ = await create_patient(fresh_server)
    documents = [Document(pdf_bytes(3000)), Document(pdf_bytes(5000), loinc=DISCHARGE)]
    bundle = provide_bundle(f"Patient/{patient}", documents, with_folder=True)
    response = await provide(fresh_server, bundle)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["type"] == "transaction-response"
    assert [item["response"]["status"] for item in body["entry"]] == ["201 Created"] * 6
    kinds = [location.split("/")[0] for location in locations(body)]
    assert kinds == ["List", "DocumentReference", "Binary", "DocumentReference", "Binary", "List"]
    references = locations(body)
    submission = (await fresh_server.database.List.find_one({"_id": references[0].split("/")[1]}))["res"]
    assert [item["item"]["reference"] for item in submission["entry"]] == [references[1], references[3]]
    document = (await fresh_server.database.DocumentReference.find_one({"_id": references[1].split("/")[1]}))[
        "res"
    ]
    assert document["content"][0]["attachment"]["url"] == references[2]
    assert document["subject"]["reference"] == f"Patient/{patient}"
    content = await fresh_server.http.get(f"/fhir/{references[2]}", headers=fresh_server.as_doctor())
    assert content.status_code == 200
    assert content.content == documents[0].content
    assert content.headers["content-type"] == "application/pdf"


async def test_provide_bundle_is_audited_as_iti_65_import(fresh_server: Server) -> None:
    patient, _ = await create_patient(fresh_server)
    response = await provide(fresh_server, provide_bundle(f"Patient/{patient}", [Document(pdf_bytes())]))
    assert response.status_code == 200, response.text
    events = [
        item["res"] async for item in fresh_server.database.AuditEvent.find({"res.subtype.code": "ITI-65"})
    ]
    assert len(events) == 1
    event = events[0]
    assert {"system": IHE_EVENT_TYPE, "code": "ITI-65"}.items() <= next(
        coding for coding in event["subtype"] if coding["system"] == IHE_EVENT_TYPE
    ).items()
    assert "transaction" in [coding["code"] for coding in event["subtype"]]
    assert event["type"]["code"] == "110107"
    assert event["action"] == "C"
    assert any(entity.get("what", {}).get("reference") == f"Patient/{patient}" for entity in event["entity"])


@pytest.mark.parametrize("profile", [True, False], ids=["by-profile", "by-submission-set"])
async def test_a_submission_set_makes_a_transaction_an_iti_65(fresh_server: Server, profile: bool) -> None:
    patient, _ = await create_patient(fresh_server)
    bundle = provide_bundle(f"Patient/{patient}", [Document(pdf_bytes())], profile=profile)
    response = await provide(fresh_server, bundle)
    assert response.status_code == 200, response.text
    assert await fresh_server.database.AuditEvent.count_documents({"res.subtype.code": "ITI-65"}) == 1


async def test_plain_transaction_is_not_audited_as_iti_65(fresh_server: Server) -> None:
    patient, _ = await create_patient(fresh_server)
    document = Document(pdf_bytes())
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            entry(document.document_reference(f"Patient/{patient}"), document.reference_url),
            entry(document.binary(), document.binary_url),
        ],
    }
    response = await provide(fresh_server, bundle)
    assert response.status_code == 200, response.text
    assert await fresh_server.database.AuditEvent.count_documents({"res.subtype.code": "ITI-65"}) == 0


async def test_replacement_supersedes_the_old_document_in_the_same_transaction(fresh_server: Server) -> None:
    patient, _ = await create_patient(fresh_server)
    first = await provide(fresh_server, provide_bundle(f"Patient/{patient}", [Document(pdf_bytes())]))
    old = locations(first.json())[1]
    replacement = Document(pdf_bytes(seed="v2"), replaces=old)
    response = await provide(fresh_server, provide_bundle(f"Patient/{patient}", [replacement]))
    assert response.status_code == 200, response.text
    assert len(response.json()["entry"]) == 3
    new = locations(response.json())[1]
    stored_old = await fresh_server.database.DocumentReference.find_one({"_id": old.split("/")[1]})
    assert stored_old["res"]["status"] == "superseded"
    assert stored_old["vid"] == 2
    search = await fresh_server.http.get(
        f"/fhir/DocumentReference?patient={patient}&status=current", headers=fresh_server.as_doctor()
    )
    assert [item["resource"]["id"] for item in search.json().get("entry", [])] == [new.split("/")[1]]
    patches = await fresh_server.database.AuditEvent.count_documents(
        {"res.subtype.code": "patch", "res.entity.what.reference": f"{old}/_history/2"}
    )
    assert patches == 1


async def test_replacing_a_document_twice_is_refused_and_stores_nothing(fresh_server: Server) -> None:
    patient, _ = await create_patient(fresh_server)
    first = await provide(fresh_server, provide_bundle(f"Patient/{patient}", [Document(pdf_bytes())]))
    old = locations(first.json())[1]
    second = await provide(
        fresh_server, provide_bundle(f"Patient/{patient}", [Document(pdf_bytes(), replaces=old)])
    )
    assert second.status_code == 200, second.text
    before = await stored_counts(fresh_server)
    again = await provide(
        fresh_server, provide_bundle(f"Patient/{patient}", [Document(pdf_bytes(), replaces=old)])
    )
    assert again.status_code == 422, again.text
    assert "entry[1]" in json.dumps(again.json())
    assert await stored_counts(fresh_server) == before


async def test_replacing_an_unknown_document_is_refused(fresh_server: Server) -> None:
    patient, _ = await create_patient(fresh_server)
    before = await stored_counts(fresh_server)
    bundle = provide_bundle(
        f"Patient/{patient}", [Document(pdf_bytes(), replaces=f"DocumentReference/{uuid.uuid4()}")]
    )
    response = await provide(fresh_server, bundle)
    assert response.status_code == 404, response.text
    assert "entry[1]" in json.dumps(response.json())
    assert await stored_counts(fresh_server) == before


def _mismatched_size(bundle: dict[str, Any]) -> None:
    bundle["entry"][1]["resource"]["content"][0]["attachment"]["size"] += 1


def _mismatched_hash(bundle: dict[str, Any]) -> None:
    bundle["entry"][1]["resource"]["content"][0]["attachment"]["hash"] = base64.b64encode(b"x" * 20).decode()


def _binary_missing(bundle: dict[str, Any]) -> None:
    bundle["entry"][1]["resource"]["content"][0]["attachment"]["url"] = f"Binary/{uuid.uuid4()}"


def _dangling_reference(bundle: dict[str, Any]) -> None:
    bundle["entry"][1]["resource"]["content"][0]["attachment"]["url"] = f"urn:uuid:{uuid.uuid4()}"


def _invalid_entry(bundle: dict[str, Any]) -> None:
    bundle["entry"][1]["resource"]["status"] = "brouillon"


def _duplicate_full_url(bundle: dict[str, Any]) -> None:
    bundle["entry"][2]["fullUrl"] = bundle["entry"][1]["fullUrl"]


def _two_submission_sets(bundle: dict[str, Any]) -> None:
    twin = copy.deepcopy(bundle["entry"][0])
    twin["fullUrl"] = f"urn:uuid:{uuid.uuid4()}"
    bundle["entry"].append(twin)


def _other_patient(bundle: dict[str, Any]) -> None:
    bundle["entry"][1]["resource"]["subject"] = {"reference": f"Patient/{uuid.uuid4()}"}


def _no_document(bundle: dict[str, Any]) -> None:
    bundle["entry"] = [bundle["entry"][0]]
    bundle["entry"][0]["resource"]["entry"] = []


def _wrong_list_code(bundle: dict[str, Any]) -> None:
    bundle["entry"][0]["resource"]["code"] = {"coding": [{"system": MHD_LIST_TYPES, "code": "panier"}]}


@pytest.mark.parametrize(
    ("spoil", "status", "named"),
    [
        (_mismatched_size, 422, "entry[1].resource.content[0].attachment.size"),
        (_mismatched_hash, 422, "entry[1].resource.content[0].attachment.hash"),
        (_binary_missing, 422, "entry[1].resource.content[0].attachment.url"),
        (_dangling_reference, 422, "entry[1]"),
        (_invalid_entry, 422, "entry[1]"),
        (_duplicate_full_url, 422, "entry[2]"),
        (_two_submission_sets, 422, "entry[5]"),
        (_other_patient, 422, "entry[1].resource.subject"),
        (_no_document, 422, "Bundle.entry"),
        (_wrong_list_code, 422, "entry[0]"),
    ],
    ids=lambda value: getattr(value, "__name__", str(value)).strip("_"),
)
async def test_bad_provide_bundle_is_refused_whole_naming_the_entry(
    fresh_server: Server, spoil: Any, status: int, named: str
) -> None:
    patient, _ = await create_patient(fresh_server)
    large = Document(pdf_bytes(400 * 1024))
    bundle = provide_bundle(f"Patient/{patient}", [Document(pdf_bytes()), large])
    spoil(bundle)
    before = await stored_counts(fresh_server)
    response = await provide(fresh_server, bundle)
    assert response.status_code == status, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert named in json.dumps(outcome)
    assert await stored_counts(fresh_server) == before


async def test_entry_the_caller_may_not_write_refuses_the_bundle_and_its_large_content(
    fresh_server: Server,
) -> None:
    patient, _ = await create_patient(fresh_server)
    reader = fresh_server.headers(
        fresh_server.token(
            scopes=["user/DocumentReference.cruds", "user/List.cruds", "user/Binary.rs"],
            sub="dr-reader",
            fhir_user="Practitioner/dr-reader",
        )
    )
    bundle = provide_bundle(f"Patient/{patient}", [Document(pdf_bytes(300 * 1024))])
    before = await stored_counts(fresh_server)
    response = await provide(fresh_server, bundle, headers=reader)
    assert response.status_code == 403, response.text
    assert "entry[2]" in json.dumps(response.json())
    assert await stored_counts(fresh_server) == before


async def test_consent_refusal_inside_the_transaction_discards_uploaded_content(fresh_server: Server) -> None:
    """The write is refused by consent only inside the transaction, after the GridFS upload."""
    patient, _ = await create_patient(fresh_server)
    deny = {
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
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT"}]
        },
        "provision": {
            "type": "deny",
            "actor": [
                {
                    "role": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                "code": "IRCP",
                            }
                        ]
                    },
                    "reference": {"reference": "Practitioner/dr-core"},
                }
            ],
        },
    }
    created = await fresh_server.http.post(
        "/fhir/Consent", json=deny, headers=fresh_server.as_consent_service()
    )
    assert created.status_code == 201, created.text
    document = Document(pdf_bytes(300 * 1024))
    bundle = provide_bundle(f"Patient/{patient}", [document])
    bundle["entry"][2]["resource"]["securityContext"] = {"reference": f"Patient/{patient}"}
    before = await stored_counts(fresh_server)
    response = await provide(fresh_server, bundle)
    assert response.status_code == 403, response.text
    assert await stored_counts(fresh_server) == before


async def test_binary_larger_than_a_mongodb_document_is_stored_in_gridfs(fresh_server: Server) -> None:
    patient, _ = await create_patient(fresh_server)
    document = Document(pdf_bytes(17 * 1024 * 1024))
    response = await provide(fresh_server, provide_bundle(f"Patient/{patient}", [document]))
    assert response.status_code == 200, response.text
    binary = locations(response.json())[2]
    stored = await fresh_server.database.Binary.find_one({"_id": binary.split("/")[1]})
    assert "data" not in stored["res"]
    assert await fresh_server.database["binary.files"].count_documents({"metadata.state": "committed"}) == 1
    raw = await fresh_server.http.get(f"/fhir/{binary}", headers=fresh_server.as_doctor())
    assert raw.status_code == 200
    assert raw.content == document.content
    as_json = await fresh_server.http.get(
        f"/fhir/{binary}", headers=fresh_server.as_doctor(Accept="application/fhir+json")
    )
    assert as_json.status_code == 200
    body = as_json.json()
    assert base64.b64decode(body["data"]) == document.content
    assert "_data" not in body


@pytest.mark.parametrize("size", [1024, 300 * 1024], ids=["inline", "gridfs"])
async def test_new_binary_version_keeps_the_old_content_for_vread(fresh_server: Server, size: int) -> None:
    patient, _ = await create_patient(fresh_server)
    document = Document(pdf_bytes(size, seed="v1"))
    response = await provide(fresh_server, provide_bundle(f"Patient/{patient}", [document]))
    binary = locations(response.json())[2]
    newer = pdf_bytes(size, seed="v2")
    update = {
        "resourceType": "Binary",
        "id": binary.split("/")[1],
        "contentType": "application/pdf",
        "data": base64.b64encode(newer).decode(),
    }
    updated = await fresh_server.http.put(f"/fhir/{binary}", json=update, headers=fresh_server.as_system())
    assert updated.status_code == 200, updated.text
    doctor = fresh_server.as_doctor()
    assert (await fresh_server.http.get(f"/fhir/{binary}", headers=doctor)).content == newer
    assert (
        await fresh_server.http.get(f"/fhir/{binary}/_history/1", headers=doctor)
    ).content == document.content


async def test_client_cannot_forge_a_content_pointer(fresh_server: Server) -> None:
    patient, _ = await create_patient(fresh_server)
    victim = await provide(
        fresh_server, provide_bundle(f"Patient/{patient}", [Document(pdf_bytes(300 * 1024))])
    )
    victim_binary = locations(victim.json())[2]
    stored = await fresh_server.database.Binary.find_one({"_id": victim_binary.split("/")[1]})
    forged = {
        "resourceType": "Binary",
        "contentType": "application/pdf",
        "securityContext": {"reference": f"Patient/{patient}"},
        "_data": stored["res"]["_data"],
    }
    created = await fresh_server.http.post("/fhir/Binary", json=forged, headers=fresh_server.as_system())
    assert created.status_code == 201, created.text
    assert "_data" not in created.json()
    read = await fresh_server.http.get(
        f"/fhir/Binary/{created.json()['id']}", headers=fresh_server.as_system()
    )
    assert read.status_code == 200
    assert read.content == b""


async def test_list_is_a_supported_resource_with_iti_66_search(fresh_server: Server) -> None:
    patient, nir = await create_patient(fresh_server)
    response = await provide(
        fresh_server,
        provide_bundle(f"Patient/{patient}", [Document(pdf_bytes(), loinc=LAB)], with_folder=True),
    )
    submission, folder = locations(response.json())[0], locations(response.json())[-1]
    doctor = fresh_server.as_doctor()
    read = await fresh_server.http.get(f"/fhir/{submission}", headers=doctor)
    assert read.status_code == 200 and read.json()["resourceType"] == "List"
    queries = {
        f"patient={patient}&code={MHD_LIST_TYPES}|submissionset&status=current": [submission],
        f"patient={patient}&code={MHD_LIST_TYPES}|folder&status=current": [folder],
        f"patient.identifier=urn:oid:1.2.250.1.213.1.4.10|{nir}&code=submissionset&status=current": [
            submission
        ],
        f"patient={patient}&code=submissionset&status=current&sourceId=urn:oid:1.2.250.1.999.7.1": [
            submission
        ],
        f"patient={patient}&code=submissionset&status=current&date=ge2026-10-01": [submission],
        f"patient={patient}&code=submissionset&status=current&date=lt2026-10-01": [],
        f"patient={patient}&code=submissionset&status=current&source=Practitioner/dr-core": [submission],
        f"patient={patient}&code=folder&status=retired": [],
    }
    for query, expected in queries.items():
        found = await fresh_server.http.get(f"/fhir/List?{query}", headers=doctor)
        assert found.status_code == 200, (query, found.text)
        ids = [f"List/{item['resource']['id']}" for item in found.json().get("entry", [])]
        assert ids == expected, query
    statement = (await fresh_server.http.get("/fhir/metadata")).json()
    listed = next(r for r in statement["rest"][0]["resource"] if r["type"] == "List")
    assert {"patient", "code", "status", "date", "identifier", "sourceId", "designationType", "source"} <= {
        parameter["name"] for parameter in listed["searchParam"]
    }
