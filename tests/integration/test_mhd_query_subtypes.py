"""IHE MHD query audit subtypes (STANDARDS §5.1 audit table): ITI-67 and ITI-66 searches carry
`urn:ihe:event-type-code` alongside the RESTful `search-type`; other searches do not."""

from __future__ import annotations

import pytest

from tests.integration.conftest import Server, patient_resource, unique

pytestmark = pytest.mark.asyncio

MHD = "urn:ihe:event-type-code"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("DocumentReference?patient={p}&status=current", "ITI-67"),
        ("DocumentReference?patient={p}", None),
        ("List?patient={p}&code=submissionset&status=current", "ITI-66"),
        ("Patient?_id={p}", None),
    ],
)
async def test_mhd_subtype_follows_the_query_shape(server: Server, query: str, expected: str | None) -> None:
    headers = server.as_doctor()
    patient = (await server.http.post("/fhir/Patient", json=patient_resource(), headers=headers)).json()
    request_id = unique()
    response = await server.http.get(
        "/fhir/" + query.format(p=patient["id"]), headers={**headers, "X-Request-Id": request_id}
    )
    assert response.status_code == 200, response.text
    events = [
        document["res"]
        async for document in server.database.AuditEvent.find(
            {"res.entity.what.identifier.value": request_id}
        )
    ]
    assert events
    for event in events:
        codes = {coding["code"] for coding in event["subtype"] if coding.get("system") == MHD}
        assert codes == ({expected} if expected else set())
        assert any(coding["code"] == "search-type" for coding in event["subtype"])


async def test_raw_binary_upload_is_stored_and_read_back(server: Server) -> None:
    headers = server.as_system()
    patient = (await server.http.post("/fhir/Patient", json=patient_resource(), headers=headers)).json()
    content = b"%PDF-1.4 compte rendu " + unique().encode()
    response = await server.http.post(
        "/fhir/Binary",
        content=content,
        headers={
            **headers,
            "Content-Type": "application/pdf",
            "X-Security-Context": f"Patient/{patient['id']}",
        },
    )
    assert response.status_code == 201, response.text
    assert response.headers["location"].startswith("http://testserver/fhir/Binary/")
    binary_id = response.headers["location"].split("/Binary/")[1].split("/")[0]
    stored = await server.database.Binary.find_one({"_id": binary_id})
    assert stored["res"]["contentType"] == "application/pdf"
    assert "securityContext" not in stored["res"], "X-Security-Context is the client's: not taken"
    read = await server.http.get(f"/fhir/Binary/{binary_id}", headers=headers)
    assert read.content == content
