"""Start-up migration of Binaries stored before ownership (storage/binary_owners.py): each gets the
first DocumentReference designating it, once; one no document designates stays out of reach."""

from __future__ import annotations

import base64

import pytest

from fhir_server.storage.binary_owners import migrate_binary_owners
from tests.integration.conftest import BASE_URL, Server, document_resource, patient_resource

pytestmark = pytest.mark.asyncio


async def _legacy_binary(server: Server, patient: str) -> str:
    """A Binary as an earlier version stored it: no owner, no uploader, the client's Patient context."""
    body = {"resourceType": "Binary", "contentType": "text/plain", "data": base64.b64encode(b"old").decode()}
    created = await server.http.post("/fhir/Binary", json=body, headers=server.as_system())
    binary_id = str(created.json()["id"])
    await server.database.Binary.update_one(
        {"_id": binary_id},
        {
            "$unset": {"res.meta.extension": ""},
            "$set": {"res.securityContext": {"reference": f"Patient/{patient}"}},
        },
    )
    return binary_id


async def test_legacy_binaries_get_their_first_document_once(fresh_server: Server) -> None:
    system = fresh_server.as_system()
    patient = (await fresh_server.http.post("/fhir/Patient", json=patient_resource(), headers=system)).json()[
        "id"
    ]
    designated = await _legacy_binary(fresh_server, patient)
    orphan = await _legacy_binary(fresh_server, patient)
    document = document_resource(patient)
    document["content"][0]["attachment"]["url"] = "https://documents.example.org/placeholder.pdf"
    created = await fresh_server.http.post("/fhir/DocumentReference", json=document, headers=system)
    document_id = created.json()["id"]
    await fresh_server.database.DocumentReference.update_one(
        {"_id": document_id},
        {"$set": {"idx.location": [f"{BASE_URL}/Binary/{designated}"]}},
    )
    repository = fresh_server.app.state.services.repository

    report = await migrate_binary_owners(repository, base_url=BASE_URL)

    assert (report.examined, report.owned) == (2, 1)
    stored = await fresh_server.database.Binary.find_one({"_id": designated})
    assert stored["res"]["securityContext"] == {"reference": f"DocumentReference/{document_id}"}
    assert stored["vid"] == 2
    assert await fresh_server.database.Binary_history.count_documents({"rid": designated}) == 2
    read = await fresh_server.http.get(f"/fhir/Binary/{designated}", headers=system)
    assert read.status_code == 200 and read.content == b"old"
    assert (await fresh_server.http.get(f"/fhir/Binary/{orphan}", headers=system)).status_code == 404
    again = await migrate_binary_owners(repository, base_url=BASE_URL)
    assert (again.examined, again.owned) == (1, 0)
    assert (await fresh_server.database.Binary.find_one({"_id": designated}))["vid"] == 2
