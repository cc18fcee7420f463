"""IHE MHD ITI-67 Find Document References (STANDARDS §5.1): every parameter the Document Responder
SHALL support, through the search engine, on documents provided by ITI-65; and the DMP masking flow
(STANDARDS §5.2, TD3.3a/b): the patient masks a document by conditional PATCH on securityLabel, the
professional no longer finds, reads or retrieves it, then the patient unmasks it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.integration.conftest import MEDECIN, Server
from tests.integration.mhd_examples import (
    CCAM,
    CLASS_CODE,
    CONFIDENTIALITY,
    DISCHARGE,
    FACILITY,
    FORMAT_CODE,
    IDNPS,
    INS_NIR_TEST,
    LAB,
    LOINC,
    NOTE,
    RFC3986,
    SETTING,
    VISIBILITY,
    Document,
    create_patient,
    locations,
    pdf_bytes,
    provide_bundle,
)

pytestmark = pytest.mark.asyncio


async def provided(server: Server, documents: list[Document]) -> tuple[str, str, list[str]]:
    """A patient with `documents` provided in one ITI-65; returns (patient id, NIR, DocumentReference ids)."""
    patient, nir = await create_patient(server)
    response = await server.http.post(
        "/fhir", json=provide_bundle(f"Patient/{patient}", documents), headers=server.as_doctor()
    )
    assert response.status_code == 200, response.text
    ids = [ref.split("/")[1] for ref in locations(response.json()) if ref.startswith("DocumentReference/")]
    return patient, nir, ids


async def found_ids(server: Server, query: str, headers: dict[str, str] | None = None) -> list[str]:
    response = await server.http.get(
        f"/fhir/DocumentReference?{query}", headers=headers or server.as_doctor()
    )
    assert response.status_code == 200, (query, response.text)
    body = response.json()
    assert body["type"] == "searchset"
    return sorted(
        item["resource"]["id"] for item in body.get("entry", []) if item["search"]["mode"] == "match"
    )


def _restricted(document: Document) -> Document:
    document.labels = [{"system": CONFIDENTIALITY, "code": "R"}]
    return document


ITI_67_CASES: list[tuple[str, str, list[int]]] = [
    ("patient + status", "status=current", [0, 1]),
    ("patient.identifier (INS)", "patient.identifier={ins}&status=current", [0, 1]),
    ("status superseded", "status=superseded", []),
    ("type", f"status=current&type={LOINC}|{DISCHARGE}", [1]),
    ("category (classCode)", f"status=current&category={CLASS_CODE}|10", [0, 1]),
    ("creation", "status=current&creation=ge2026-10-02", [0, 1]),
    ("creation before", "status=current&creation=lt2026-10-02", []),
    ("date", "status=current&date=2026-10-02", [0, 1]),
    ("event", f"status=current&event={CCAM}|DEQP003", [0, 1]),
    ("facility", f"status=current&facility={FACILITY}|SA01", [0, 1]),
    ("format", f"status=current&format={FORMAT_CODE}|urn:ihe:iti:xds-sd:pdf:2008", [0, 1]),
    ("identifier (masterIdentifier)", "status=current&identifier={unique0}", [0]),
    ("period overlap", "status=current&period=ge2026-10-02&period=le2026-10-03", [0, 1]),
    ("period outside", "status=current&period=ge2026-11-01", []),
    ("related", "status=current&related=Encounter/sejour-2026-10-01", [0, 1]),
    ("security-label", f"status=current&security-label={CONFIDENTIALITY}|R", [1]),
    ("setting", f"status=current&setting={SETTING}|ETABLISSEMENT", [0, 1]),
    ("author identifier", f"status=current&author:identifier={IDNPS}|810002345678", [0, 1]),
]


@pytest.mark.parametrize(("label", "query", "expected"), ITI_67_CASES, ids=[case[0] for case in ITI_67_CASES])
async def test_find_document_references_by_each_iti_67_parameter(
    server: Server, label: str, query: str, expected: list[int]
) -> None:
    documents = [Document(pdf_bytes(), loinc=NOTE), _restricted(Document(pdf_bytes(), loinc=DISCHARGE))]
    patient, nir, ids = await provided(server, documents)
    text = query.format(ins=f"{INS_NIR_TEST}|{nir}", unique0=f"{RFC3986}|{documents[0].unique_id}")
    anchor = "" if "patient.identifier" in text else f"patient={patient}&"
    assert await found_ids(server, anchor + text) == sorted(ids[i] for i in expected), label


async def test_iti_67_search_records_one_patient_query_event_with_the_query(server: Server) -> None:
    """A DocumentReference search by patient and status is a BALP PatientQuery (one event per patient)."""
    patient, _, _ = await provided(server, [Document(pdf_bytes())])
    await found_ids(server, f"patient={patient}&status=current")
    events = [
        item["res"]
        async for item in server.database.AuditEvent.find(
            {"res.subtype.code": "search-type", "res.entity.what.reference": f"Patient/{patient}"}
        )
    ]
    assert len(events) == 1
    queries = [entity for entity in events[0]["entity"] if "query" in entity]
    assert len(queries) == 1


async def test_unsupported_parameter_is_ignored_with_a_warning(server: Server) -> None:
    patient, _, ids = await provided(server, [Document(pdf_bytes(), loinc=LAB)])
    response = await server.http.get(
        f"/fhir/DocumentReference?patient={patient}&status=current&targetCommunityIdList=urn:oid:1.2.3",
        headers=server.as_doctor(),
    )
    assert response.status_code == 200
    entries = response.json()["entry"]
    assert [item["resource"]["id"] for item in entries if item["search"]["mode"] == "match"] == ids
    outcomes = [item["resource"] for item in entries if item["search"]["mode"] == "outcome"]
    assert outcomes and "targetCommunityIdList" in json.dumps(outcomes)


def other_doctor(server: Server, **extra: str) -> dict[str, str]:
    """A médecin who is not the documents' author (another IDNPS), treating the patient."""
    iua = {
        "subject_name": "Dr Paul Lefebvre",
        "subject_role": [{"system": MEDECIN.split("|")[0], "code": "10"}],
        "purpose_of_use": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}],
        "national_provider_identifier": "810009876543",
    }
    token = server.token(
        scopes=["user/*.cruds"], sub="dr-lefebvre", fhir_user="Practitioner/dr-lefebvre", iua=iua
    )
    return server.headers(token, **extra)


def patient_headers(server: Server, patient: str, **extra: str) -> dict[str, str]:
    token = server.token(
        scopes=["patient/DocumentReference.cruds", "patient/Binary.rs"],
        sub=f"usager-{patient}",
        fhir_user=f"Patient/{patient}",
        patient=patient,
    )
    return server.headers(token, **extra)


def visibility_patch(code: dict[str, str]) -> bytes:
    return json.dumps([{"op": "replace", "path": "/securityLabel/0", "value": {"coding": [code]}}]).encode()


async def test_dmp_masking_hides_the_document_from_professionals_until_the_patient_unmasks_it(
    server: Server,
) -> None:
    document = Document(pdf_bytes())
    patient, _, (document_id,) = await provided(server, [document])
    binary = (await server.database.DocumentReference.find_one({"_id": document_id}))["res"]["content"][0][
        "attachment"
    ]["url"]
    other = other_doctor(server)
    identifier = f"{RFC3986}|{document.unique_id}"

    async def visible_to(headers: dict[str, str]) -> tuple[list[str], int, int]:
        found = await found_ids(server, f"patient={patient}&status=current", headers)
        read = await server.http.get(f"/fhir/DocumentReference/{document_id}", headers=headers)
        content = await server.http.get(f"/fhir/{binary}", headers=headers)
        return found, read.status_code, content.status_code

    assert await visible_to(other) == ([document_id], 200, 200)
    mask = await server.http.patch(
        f"/fhir/DocumentReference?identifier={identifier}",
        content=visibility_patch({"system": VISIBILITY, "code": "MASQUE_PS"}),
        headers=patient_headers(server, patient, **{"Content-Type": "application/json-patch+json"}),
    )
    assert mask.status_code == 200, mask.text
    assert await visible_to(other) == ([], 404, 404)
    assert await visible_to(patient_headers(server, patient)) == ([document_id], 200, 200)
    assert (await visible_to(server.as_doctor()))[1:] == (200, 200), "the author still sees it"
    unmask = await server.http.patch(
        f"/fhir/DocumentReference?identifier={identifier}",
        content=visibility_patch({"system": CONFIDENTIALITY, "code": "N"}),
        headers=patient_headers(server, patient, **{"Content-Type": "application/json-patch+json"}),
    )
    assert unmask.status_code == 200, unmask.text
    assert await visible_to(other) == ([document_id], 200, 200)


async def test_professional_cannot_mask_for_the_patient_a_document_he_cannot_see(server: Server) -> None:
    document = Document(pdf_bytes())
    patient, _, (document_id,) = await provided(server, [document])
    mask = await server.http.patch(
        f"/fhir/DocumentReference?identifier={RFC3986}|{document.unique_id}",
        content=visibility_patch({"system": VISIBILITY, "code": "MASQUE_PS"}),
        headers=patient_headers(server, patient, **{"Content-Type": "application/json-patch+json"}),
    )
    assert mask.status_code == 200
    again = await server.http.patch(
        f"/fhir/DocumentReference?identifier={RFC3986}|{document.unique_id}",
        content=visibility_patch({"system": CONFIDENTIALITY, "code": "N"}),
        headers=other_doctor(server, **{"Content-Type": "application/json-patch+json"}),
    )
    assert again.status_code == 404
    stored = await server.database.DocumentReference.find_one({"_id": document_id})
    assert "MASQUE_PS" in stored["sec"]


def _search_parameters(server_response: dict[str, Any]) -> set[str]:
    listed = next(r for r in server_response["rest"][0]["resource"] if r["type"] == "DocumentReference")
    return {parameter["name"] for parameter in listed["searchParam"]}


async def test_capability_statement_lists_the_iti_67_parameters(server: Server) -> None:
    statement = (await server.http.get("/fhir/metadata")).json()
    required = {
        "author",
        "category",
        "creation",
        "date",
        "event",
        "facility",
        "format",
        "identifier",
        "patient",
        "period",
        "related",
        "security-label",
        "setting",
        "status",
        "type",
    }
    assert required <= _search_parameters(statement)
