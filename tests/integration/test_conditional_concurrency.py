"""Conditional writes are atomic under concurrency (storage/conditions.py), and many clients writing
to one patient's record all get through (storage/repository.py, `in_transaction`).

https://hl7.org/fhir/R4/http.html#ccreate https://hl7.org/fhir/R4/http.html#cond-update
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Server, document_resource, patient_resource

pytestmark = pytest.mark.asyncio

CLIENTS = 16
WRITES_PER_CLIENT = 20
NIR_SYSTEM = "urn:oid:1.2.250.1.213.1.4.10"


def _condition(patient: dict[str, Any]) -> str:
    identifier = patient["identifier"][0]
    return f"identifier={identifier['system']}|{identifier['value']}"


async def _together(requests: list[Any]) -> list[httpx.Response]:
    return list(await asyncio.gather(*requests))


async def _stored_patients(server: Server, patient: dict[str, Any]) -> int:
    value = patient["identifier"][0]["value"]
    criteria = {"res.identifier.value": value, "del": False}
    return int(await server.database.Patient.count_documents(criteria))


async def test_concurrent_conditional_creates_make_one_resource(fresh_server: Server) -> None:
    patient = patient_resource()
    headers = fresh_server.as_system(**{"If-None-Exist": _condition(patient)})
    responses = await _together(
        [fresh_server.http.post("/fhir/Patient", json=patient, headers=headers) for _ in range(CLIENTS)]
    )
    statuses = Counter(response.status_code for response in responses)
    assert statuses == {201: 1, 200: CLIENTS - 1}, [response.text for response in responses]
    assert len({response.json()["id"] for response in responses}) == 1
    assert await _stored_patients(fresh_server, patient) == 1

    later = await fresh_server.http.post("/fhir/Patient", json=patient, headers=headers)
    assert later.status_code == 200
    assert later.json()["id"] == responses[0].json()["id"]


async def test_concurrent_conditional_creates_of_documents_make_one_resource(fresh_server: Server) -> None:
    """No unique index backs a document's identifier: only the condition's claim prevents duplicates."""
    patient = (
        await fresh_server.http.post(
            "/fhir/Patient", json=patient_resource(), headers=fresh_server.as_system()
        )
    ).json()
    document = document_resource(patient["id"])
    master = document["masterIdentifier"]
    condition = f"identifier={master['system']}|{master['value']}"
    headers = fresh_server.as_system(**{"If-None-Exist": condition})
    responses = await _together(
        [
            fresh_server.http.post("/fhir/DocumentReference", json=document, headers=headers)
            for _ in range(CLIENTS)
        ]
    )
    statuses = Counter(response.status_code for response in responses)
    assert statuses == {201: 1, 200: CLIENTS - 1}, [response.text for response in responses]
    stored = await fresh_server.database.DocumentReference.count_documents(
        {"res.masterIdentifier.value": master["value"]}
    )
    assert stored == 1
    later = await fresh_server.http.post("/fhir/DocumentReference", json=document, headers=headers)
    assert later.status_code == 200


async def test_the_condition_is_normalised_across_order_and_encoding(fresh_server: Server) -> None:
    patient = patient_resource()
    value = patient["identifier"][0]["value"]
    conditions = [
        f"identifier={NIR_SYSTEM}|{value}&birthdate=1984-03-12",
        f"birthdate=1984-03-12&identifier={NIR_SYSTEM}%7C{value}",
    ]
    responses = await _together(
        [
            fresh_server.http.post(
                "/fhir/Patient",
                json=patient,
                headers=fresh_server.as_system(**{"If-None-Exist": conditions[index % 2]}),
            )
            for index in range(CLIENTS)
        ]
    )
    assert sorted(response.status_code for response in responses) == [200] * (CLIENTS - 1) + [201]
    assert await _stored_patients(fresh_server, patient) == 1


async def test_concurrent_conditional_updates_make_one_resource(fresh_server: Server) -> None:
    patient = patient_resource()
    headers = fresh_server.as_system()
    url = f"/fhir/Patient?{_condition(patient)}"
    responses = await _together(
        [fresh_server.http.put(url, json=patient, headers=headers) for _ in range(CLIENTS)]
    )
    statuses = Counter(response.status_code for response in responses)
    assert statuses == {201: 1, 200: CLIENTS - 1}, [response.text for response in responses]
    ids = {response.json()["id"] for response in responses}
    assert len(ids) == 1
    assert await _stored_patients(fresh_server, patient) == 1
    [stored] = [document async for document in fresh_server.database.Patient.find({"_id": ids.pop()})]
    assert stored["vid"] == CLIENTS

    created = await fresh_server.http.post(
        "/fhir/Patient",
        json=patient,
        headers=fresh_server.as_system(**{"If-None-Exist": _condition(patient)}),
    )
    assert created.status_code == 200


def _transaction(patient: dict[str, Any]) -> dict[str, Any]:
    patient_url = f"urn:uuid:{uuid.uuid4()}"
    document = document_resource("x")
    document["subject"] = {"reference": patient_url}
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": patient_url,
                "resource": patient,
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": _condition(patient)},
            },
            {"resource": document, "request": {"method": "POST", "url": "DocumentReference"}},
        ],
    }


async def test_concurrent_transactions_with_if_none_exist_make_one_resource(fresh_server: Server) -> None:
    patient = patient_resource()
    headers = fresh_server.as_system()
    responses = await _together(
        [fresh_server.http.post("/fhir", json=_transaction(patient), headers=headers) for _ in range(CLIENTS)]
    )
    assert [response.status_code for response in responses] == [200] * CLIENTS, [r.text for r in responses]
    entries = [response.json()["entry"][0]["response"] for response in responses]
    statuses = Counter(entry["status"].split()[0] for entry in entries)
    assert statuses == {"201": 1, "200": CLIENTS - 1}
    locations = {entry["location"].split("/_history")[0] for entry in entries}
    assert len(locations) == 1
    assert await _stored_patients(fresh_server, patient) == 1
    [patient_id] = {location.rsplit("/", 1)[1] for location in locations}
    subjects = [
        document["res"]["subject"]["reference"]
        async for document in fresh_server.database.DocumentReference.find({"del": False})
    ]
    assert subjects == [f"Patient/{patient_id}"] * CLIENTS


async def test_sixteen_clients_writing_to_one_patient_all_succeed(fresh_server: Server) -> None:
    headers = fresh_server.as_system()
    patient = (await fresh_server.http.post("/fhir/Patient", json=patient_resource(), headers=headers)).json()

    async def client() -> list[int]:
        statuses = []
        for _ in range(WRITES_PER_CLIENT):
            document = document_resource(patient["id"])
            response = await fresh_server.http.post("/fhir/DocumentReference", json=document, headers=headers)
            statuses.append(response.status_code)
        return statuses

    results = await asyncio.gather(*(client() for _ in range(CLIENTS)))
    statuses = Counter(status for statuses in results for status in statuses)
    assert statuses == {201: CLIENTS * WRITES_PER_CLIENT}
    stored = await fresh_server.database.DocumentReference.count_documents(
        {"res.subject.reference": f"Patient/{patient['id']}"}
    )
    assert stored == CLIENTS * WRITES_PER_CLIENT
