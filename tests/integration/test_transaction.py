"""Batch and transaction Bundles (https://hl7.org/fhir/R4/http.html#transaction): atomicity,
urn:uuid rewriting, conditional create inside a bundle, processing order, per-entry errors, audit."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest

from tests.integration.conftest import Server, document_resource, patient_resource

pytestmark = pytest.mark.asyncio


def post(
    resource: dict[str, Any], *, full_url: str | None = None, if_none_exist: str | None = None
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "fullUrl": full_url or f"urn:uuid:{uuid.uuid4()}",
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"]},
    }
    if if_none_exist:
        entry["request"]["ifNoneExist"] = if_none_exist
    return entry


def bundle(kind: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


async def counts(server: Server) -> dict[str, int]:
    names = ["Patient", "Patient_history", "DocumentReference", "DocumentReference_history"]
    return {name: await server.database[name].count_documents({}) for name in names}


async def test_transaction_rewrites_urn_uuid_references_and_answers_in_order(fresh_server: Server) -> None:
    patient_url = f"urn:uuid:{uuid.uuid4()}"
    document = document_resource("placeholder")
    document["subject"] = {"reference": patient_url}
    request = bundle("transaction", [post(document), post(patient_resource(), full_url=patient_url)])
    response = await fresh_server.http.post("/fhir", json=request, headers=fresh_server.as_doctor())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["type"] == "transaction-response"
    statuses = [entry["response"]["status"] for entry in body["entry"]]
    assert statuses == ["201 Created", "201 Created"]
    document_location = body["entry"][0]["response"]["location"]
    patient_location = body["entry"][1]["response"]["location"]
    assert "/DocumentReference/" in document_location and "/Patient/" in patient_location
    patient_id = patient_location.split("/Patient/")[1].split("/")[0]
    stored = await fresh_server.database.DocumentReference.find_one({})
    assert stored["res"]["subject"]["reference"] == f"Patient/{patient_id}"
    assert stored["pat"] == [patient_id]


async def test_invalid_entry_refuses_whole_transaction_and_names_it(fresh_server: Server) -> None:
    bad = patient_resource() | {"gender": "banana"}
    request = bundle("transaction", [post(patient_resource()), post(bad)])
    response = await fresh_server.http.post("/fhir", json=request, headers=fresh_server.as_doctor())
    assert response.status_code in (400, 422)
    assert "entry[1]" in json.dumps(response.json())
    assert await counts(fresh_server) == {name: 0 for name in await counts(fresh_server)}


async def test_dangling_reference_refuses_transaction(fresh_server: Server) -> None:
    document = document_resource("x")
    document["subject"] = {"reference": f"urn:uuid:{uuid.uuid4()}"}
    request = bundle("transaction", [post(patient_resource()), post(document)])
    response = await fresh_server.http.post("/fhir", json=request, headers=fresh_server.as_doctor())
    assert response.status_code == 422
    assert "entry[1]" in json.dumps(response.json())
    assert all(value == 0 for value in (await counts(fresh_server)).values())


async def test_failing_write_late_in_transaction_rolls_back_earlier_writes(fresh_server: Server) -> None:
    headers = fresh_server.as_doctor()
    existing = (
        await fresh_server.http.post("/fhir/Patient", json=patient_resource(), headers=headers)
    ).json()
    before = await counts(fresh_server)
    stale_update = {
        "resource": existing | {"gender": "male"},
        "request": {"method": "PUT", "url": f"Patient/{existing['id']}", "ifMatch": 'W/"9"'},
    }
    request = bundle("transaction", [post(patient_resource()), stale_update])
    response = await fresh_server.http.post("/fhir", json=request, headers=headers)
    assert response.status_code == 412
    assert await counts(fresh_server) == before


async def test_conditional_create_inside_transaction_reuses_existing_patient(fresh_server: Server) -> None:
    headers = fresh_server.as_doctor()
    patient = patient_resource()
    identifier = patient["identifier"][0]
    existing = (await fresh_server.http.post("/fhir/Patient", json=patient, headers=headers)).json()
    patient_url = f"urn:uuid:{uuid.uuid4()}"
    document = document_resource("x")
    document["subject"] = {"reference": patient_url}
    condition = f"identifier={identifier['system']}|{identifier['value']}"
    request = bundle(
        "transaction", [post(patient, full_url=patient_url, if_none_exist=condition), post(document)]
    )
    response = await fresh_server.http.post("/fhir", json=request, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["entry"][0]["response"]["status"] == "200 OK"
    stored = await fresh_server.database.DocumentReference.find_one({})
    assert stored["res"]["subject"]["reference"] == f"Patient/{existing['id']}"
    assert await fresh_server.database.Patient.count_documents({}) == 1


async def test_transaction_patch_delete_and_read_entries(fresh_server: Server) -> None:
    headers = fresh_server.as_system()
    first = (await fresh_server.http.post("/fhir/Patient", json=patient_resource(), headers=headers)).json()
    second = (await fresh_server.http.post("/fhir/Patient", json=patient_resource(), headers=headers)).json()
    patch = base64.b64encode(
        json.dumps([{"op": "replace", "path": "/gender", "value": "male"}]).encode()
    ).decode()
    request = bundle(
        "transaction",
        [
            {"request": {"method": "GET", "url": f"Patient/{first['id']}"}},
            {
                "resource": {
                    "resourceType": "Binary",
                    "contentType": "application/json-patch+json",
                    "data": patch,
                },
                "request": {"method": "PATCH", "url": f"Patient/{first['id']}"},
            },
            {"request": {"method": "DELETE", "url": f"Patient/{second['id']}"}},
        ],
    )
    response = await fresh_server.http.post("/fhir", json=request, headers=headers)
    assert response.status_code == 200, response.text
    entries = response.json()["entry"]
    assert [entry["response"]["status"] for entry in entries] == ["200 OK", "200 OK", "204 No Content"]
    assert entries[0]["resource"]["gender"] == "male"
    gone = await fresh_server.http.get(f"/fhir/Patient/{second['id']}", headers=headers)
    assert gone.status_code == 410


async def test_transaction_audits_each_entry_and_the_bundle(fresh_server: Server) -> None:
    request = bundle("transaction", [post(patient_resource()), post(patient_resource())])
    response = await fresh_server.http.post("/fhir", json=request, headers=fresh_server.as_doctor())
    assert response.status_code == 200
    events = [document["res"] async for document in fresh_server.database.AuditEvent.find({})]
    codes = sorted(sorted(coding["code"] for coding in event["subtype"]) for event in events)
    assert sum(1 for code in codes if "create" in code) == 2
    assert codes.count(["transaction"]) == 2  # the bundle's own event, one per patient concerned


async def test_batch_reports_errors_per_entry_and_keeps_the_rest(fresh_server: Server) -> None:
    bad = patient_resource() | {"gender": "banana"}
    request = bundle("batch", [post(patient_resource()), post(bad)])
    response = await fresh_server.http.post("/fhir", json=request, headers=fresh_server.as_doctor())
    assert response.status_code == 200
    entries = response.json()["entry"]
    assert entries[0]["response"]["status"] == "201 Created"
    assert entries[1]["response"]["status"].startswith("422")
    assert entries[1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert await fresh_server.database.Patient.count_documents({}) == 1


async def test_transaction_entry_without_scope_refuses_whole_bundle(fresh_server: Server) -> None:
    token = fresh_server.token(scopes=["user/Patient.c"])
    document = document_resource("x")
    request = bundle("transaction", [post(patient_resource()), post(document)])
    response = await fresh_server.http.post("/fhir", json=request, headers=fresh_server.headers(token))
    assert response.status_code == 403
    assert "entry[1]" in json.dumps(response.json())
    assert await fresh_server.database.Patient.count_documents({}) == 0


async def test_bundle_of_wrong_type_is_refused(fresh_server: Server) -> None:
    request = bundle("collection", [post(patient_resource())])
    response = await fresh_server.http.post("/fhir", json=request, headers=fresh_server.as_doctor())
    assert response.status_code in (400, 422)
    assert await fresh_server.database.Patient.count_documents({}) == 0
