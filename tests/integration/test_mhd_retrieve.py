"""IHE MHD ITI-68 Retrieve Document (STANDARDS §5.1) and Binary content (R4 binary.html): raw bytes
unless FHIR JSON is asked for, ITI-68 audit, access decided by the DocumentReferences pointing to the
Binary (docs/consent.md: consent and masking reach the content), raw uploads streamed to storage."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest

from fhir_server.fhir.instants import now_utc
from fhir_server.fhir.interaction import Interaction
from fhir_server.interactions import binary
from fhir_server.interactions.context import InteractionContext, RequestMeta
from fhir_server.interactions.pipeline import execute
from fhir_server.interactions.services import Services
from fhir_server.storage.binaries import INLINE_LIMIT
from tests.integration.conftest import BASE_URL, MEDECIN, Server
from tests.integration.mhd_examples import (
    VISIBILITY,
    Document,
    create_patient,
    locations,
    pdf_bytes,
    provide_bundle,
)

pytestmark = pytest.mark.asyncio

IHE_EVENT_TYPE = "urn:ihe:event-type-code"
IRCP = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]}


async def provided(server: Server, document: Document) -> tuple[str, str, str]:
    """(patient id, DocumentReference reference, Binary reference) of one provided document."""
    patient, _ = await create_patient(server)
    response = await server.http.post(
        "/fhir", json=provide_bundle(f"Patient/{patient}", [document]), headers=server.as_doctor()
    )
    assert response.status_code == 200, response.text
    references = locations(response.json())
    return patient, references[1], references[2]


def lefebvre(server: Server) -> dict[str, str]:
    """A médecin who did not author the documents."""
    iua = {
        "subject_role": [{"system": MEDECIN.split("|")[0], "code": "10"}],
        "purpose_of_use": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}],
        "national_provider_identifier": "810009876543",
    }
    token = server.token(
        scopes=["user/*.cruds"], sub="dr-lefebvre", fhir_user="Practitioner/dr-lefebvre", iua=iua
    )
    return server.headers(token)


def patient_headers(server: Server, patient: str) -> dict[str, str]:
    token = server.token(
        scopes=["patient/*.cruds"], sub=f"usager-{patient}", fhir_user=f"Patient/{patient}", patient=patient
    )
    return server.headers(token)


@pytest.mark.parametrize(
    ("accept", "query", "raw"),
    [
        (None, "", True),
        ("*/*", "", True),
        ("application/pdf", "", True),
        ("application/fhir+json", "", False),
        ("application/json", "", False),
        ("*/*", "?_format=json", False),
    ],
    ids=["no-accept", "any", "pdf", "fhir-json", "json", "format-parameter"],
)
async def test_retrieve_answers_raw_content_unless_fhir_json_is_asked_for(
    server: Server, accept: str | None, query: str, raw: bool
) -> None:
    document = Document(pdf_bytes(4096))
    _, _, binary_ref = await provided(server, document)
    headers = server.as_doctor()
    headers.pop("Content-Type")
    if accept is None:
        headers["Accept"] = ""
    else:
        headers["Accept"] = accept
    response = await server.http.get(f"/fhir/{binary_ref}{query}", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["etag"] == 'W/"1"'
    if raw:
        assert response.headers["content-type"] == "application/pdf"
        assert response.content == document.content
    else:
        body = response.json()
        assert body["resourceType"] == "Binary" and body["contentType"] == "application/pdf"
        assert base64.b64decode(body["data"]) == document.content


async def test_retrieve_is_audited_as_iti_68_with_the_document_as_report(server: Server) -> None:
    patient, _, binary_ref = await provided(server, Document(pdf_bytes()))
    response = await server.http.get(f"/fhir/{binary_ref}", headers=server.as_doctor())
    assert response.status_code == 200
    events = [
        item["res"]
        async for item in server.database.AuditEvent.find(
            {"res.subtype.code": "ITI-68", "res.entity.what.reference": {"$regex": f"^{binary_ref}"}}
        )
    ]
    assert len(events) == 1
    event = events[0]
    assert {(c["system"], c["code"]) for c in event["subtype"]} >= {
        (IHE_EVENT_TYPE, "ITI-68"),
        ("http://hl7.org/fhir/restful-interaction", "read"),
    }
    report = [e for e in event["entity"] if e.get("what", {}).get("reference", "").startswith(binary_ref)]
    assert report[0]["role"]["code"] == "3"
    assert any(e.get("what", {}).get("reference") == f"Patient/{patient}" for e in event["entity"])


async def test_professional_denied_by_consent_cannot_retrieve_the_content(server: Server) -> None:
    patient, document_ref, binary_ref = await provided(server, Document(pdf_bytes()))
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
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT"}]
        },
        "provision": {
            "type": "permit",
            "provision": [
                {
                    "type": "deny",
                    "actor": [{"role": IRCP, "reference": {"reference": "Practitioner/dr-lefebvre"}}],
                }
            ],
        },
    }
    created = await server.http.post("/fhir/Consent", json=consent, headers=patient_headers(server, patient))
    assert created.status_code == 201, created.text
    denied = lefebvre(server)
    assert (await server.http.get(f"/fhir/{document_ref}", headers=denied)).status_code == 404
    refused = await server.http.get(f"/fhir/{binary_ref}", headers=denied)
    assert refused.status_code == 404
    assert refused.json()["resourceType"] == "OperationOutcome"
    vread = await server.http.get(f"/fhir/{binary_ref}/_history/1", headers=denied)
    assert vread.status_code == 404
    assert (await server.http.get(f"/fhir/{binary_ref}", headers=server.as_doctor())).status_code == 200
    event = await server.database.AuditEvent.find_one(
        {"res.subtype.code": "ITI-68", "res.outcome": "4", "res.entity.what.reference": binary_ref}
    )
    assert event is not None


async def test_masked_document_hides_its_content_but_not_from_the_patient(server: Server) -> None:
    document = Document(pdf_bytes())
    document.labels = [{"system": VISIBILITY, "code": "MASQUE_PS"}]
    patient, _, binary_ref = await provided(server, document)
    assert (await server.http.get(f"/fhir/{binary_ref}", headers=lefebvre(server))).status_code == 404
    assert (
        await server.http.get(f"/fhir/{binary_ref}", headers=patient_headers(server, patient))
    ).content == (document.content)
    assert (await server.http.get(f"/fhir/{binary_ref}", headers=server.as_doctor())).status_code == 200


async def test_document_invisible_to_the_patient_hides_its_content_from_the_patient(server: Server) -> None:
    document = Document(pdf_bytes())
    document.labels = [{"system": VISIBILITY, "code": "INVISIBLE_PATIENT"}]
    patient, _, binary_ref = await provided(server, document)
    assert (
        await server.http.get(f"/fhir/{binary_ref}", headers=patient_headers(server, patient))
    ).status_code == 404
    assert (await server.http.get(f"/fhir/{binary_ref}", headers=lefebvre(server))).status_code == 200


async def test_document_of_another_patient_does_not_open_a_binary(server: Server) -> None:
    """A DocumentReference may not designate a Binary its caller may not read: it is refused (422,
    as for an unknown Binary), and the Binary stays out of reach. A client's securityContext is not
    taken."""
    victim, _ = await create_patient(server)
    content = pdf_bytes()
    binary_resource = {
        "resourceType": "Binary",
        "contentType": "application/pdf",
        "securityContext": {"reference": f"Patient/{victim}"},
        "data": base64.b64encode(content).decode(),
    }
    created = await server.http.post("/fhir/Binary", json=binary_resource, headers=server.as_system())
    binary_ref = f"Binary/{created.json()['id']}"
    mask = {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{victim}"},
        "policyRule": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]
        },
        "provision": {"type": "deny"},
    }
    assert (
        await server.http.post("/fhir/Consent", json=mask, headers=patient_headers(server, victim))
    ).status_code == 201
    attacker, _ = await create_patient(server)
    lure = Document(pdf_bytes())
    reference = lure.document_reference(f"Patient/{attacker}")
    reference["content"][0]["attachment"] = {"contentType": "application/pdf", "url": binary_ref}
    written = await server.http.post("/fhir/DocumentReference", json=reference, headers=lefebvre(server))
    assert written.status_code == 422, written.text
    reference["content"][0]["attachment"]["url"] = "Binary/unknown-binary"
    unknown = await server.http.post("/fhir/DocumentReference", json=reference, headers=lefebvre(server))
    assert unknown.status_code == 422
    assert unknown.json()["issue"][0]["diagnostics"] == written.json()["issue"][0]["diagnostics"].replace(
        binary_ref, "Binary/unknown-binary"
    )
    assert (await server.http.get(f"/fhir/{binary_ref}", headers=lefebvre(server))).status_code == 404
    stored = await server.database.Binary.find_one({"_id": binary_ref.split("/")[1]})
    assert "securityContext" not in stored["res"]


@pytest.mark.parametrize(
    ("who", "status"),
    [("system", 200), ("doctor", 404), ("unknown-id", 404)],
)
async def test_binary_no_document_owns_is_visible_to_its_uploader_only(
    server: Server, who: str, status: int
) -> None:
    created = await server.http.post(
        "/fhir/Binary",
        json={
            "resourceType": "Binary",
            "contentType": "text/plain",
            "data": base64.b64encode(b"brouillon").decode(),
        },
        headers=server.as_system(),
    )
    binary_id = "inconnu" if who == "unknown-id" else created.json()["id"]
    headers = server.as_system() if who == "system" else server.as_doctor()
    response = await server.http.get(f"/fhir/Binary/{binary_id}", headers=headers)
    assert response.status_code == status
    if status == 200:
        assert response.content == b"brouillon"


async def _stream(data: bytes, *, piece: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), piece):
        yield data[start : start + piece]


async def _raw_upload(server: Server, data: bytes, *, content_type: str) -> Any:
    services: Services = server.app.state.services
    ctx = InteractionContext(
        interaction=Interaction.CREATE,
        resource_type="Binary",
        request=RequestMeta(method="POST", target="/fhir/Binary", base_url=BASE_URL, request_id="raw-upload"),
        now=now_utc(),
    )

    async def handler(ctx: InteractionContext, services: Services) -> Any:
        return await binary.create_raw(ctx, services, content_type=content_type, chunks=_stream(data))

    return await execute(services, ctx, handler, authorization=server.as_system()["Authorization"])


@pytest.mark.parametrize(
    "size", [INLINE_LIMIT // 2, INLINE_LIMIT + 1, 3 * INLINE_LIMIT], ids=["inline", "edge", "gridfs"]
)
async def test_raw_upload_is_streamed_into_storage_and_retrieved_byte_for_byte(
    server: Server, size: int
) -> None:
    data = pdf_bytes(size)
    response = await _raw_upload(server, data, content_type="application/pdf")
    assert response.status == 201, response.body
    binary_id = response.body["id"]
    stored = await server.database.Binary.find_one({"_id": binary_id})
    assert ("data" in stored["res"]) == (size <= INLINE_LIMIT)
    assert stored["pat"] == []
    retrieved = await server.http.get(f"/fhir/Binary/{binary_id}", headers=server.as_system())
    assert retrieved.content == data
    assert retrieved.headers["content-type"] == "application/pdf"
