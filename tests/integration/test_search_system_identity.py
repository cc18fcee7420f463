"""System-level search (https://hl7.org/fhir/R4/http.html#search, `GET [base]?_type=`), and the
identity lookup of docs/consent.md: a professional without consent finds a Patient only by exact
identifier."""

from __future__ import annotations

import pytest

from tests.integration.conftest import Server, document_resource, patient_resource

pytestmark = pytest.mark.asyncio


async def test_system_search_spans_types_named_in_type(server: Server) -> None:
    headers = server.as_doctor()
    patient = (await server.http.post("/fhir/Patient", json=patient_resource(), headers=headers)).json()
    await server.http.post("/fhir/DocumentReference", json=document_resource(patient["id"]), headers=headers)
    response = await server.http.get(
        f"/fhir?_type=Patient,DocumentReference&_id={patient['id']}", headers=headers
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["type"] == "searchset"
    assert [entry["resource"]["id"] for entry in body["entry"] if entry["search"]["mode"] == "match"] == [
        patient["id"]
    ]


async def test_system_search_by_post(server: Server) -> None:
    headers = server.as_doctor(**{"Content-Type": "application/x-www-form-urlencoded"})
    patient = (
        await server.http.post("/fhir/Patient", json=patient_resource(), headers=server.as_doctor())
    ).json()
    response = await server.http.post(
        "/fhir/_search", content=f"_type=Patient&_id={patient['id']}", headers=headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["total"] == 1


async def test_professional_without_consent_finds_patient_only_by_exact_identifier(
    deny_server: Server,
) -> None:
    patient = patient_resource()
    created = await deny_server.http.post("/fhir/Patient", json=patient, headers=deny_server.as_system())
    assert created.status_code == 201, created.text
    patient_id = created.json()["id"]
    identifier = patient["identifier"][0]
    doctor = deny_server.as_doctor(practitioner="dr-stranger")
    exact = await deny_server.http.get(
        f"/fhir/Patient?identifier={identifier['system']}|{identifier['value']}", headers=doctor
    )
    assert exact.status_code == 200
    assert [entry["resource"]["id"] for entry in exact.json()["entry"]] == [patient_id]
    by_name = await deny_server.http.get(
        f"/fhir/Patient?family={patient['name'][0]['family']}", headers=doctor
    )
    assert patient_id not in by_name.text
    by_value_only = await deny_server.http.get(
        f"/fhir/Patient?identifier={identifier['value']}", headers=doctor
    )
    assert patient_id not in by_value_only.text
    read = await deny_server.http.get(f"/fhir/Patient/{patient_id}", headers=doctor)
    assert read.status_code == 404


async def test_anchored_search_sees_only_that_patients_permitted_documents(server: Server) -> None:
    headers = server.as_doctor()
    first = (await server.http.post("/fhir/Patient", json=patient_resource(), headers=headers)).json()
    second = (await server.http.post("/fhir/Patient", json=patient_resource(), headers=headers)).json()
    for patient in (first, second):
        await server.http.post(
            "/fhir/DocumentReference", json=document_resource(patient["id"]), headers=headers
        )
    response = await server.http.get(
        f"/fhir/DocumentReference?patient={first['id']}&_total=accurate", headers=headers
    )
    assert response.json()["total"] == 1
    assert response.json()["entry"][0]["resource"]["subject"]["reference"] == f"Patient/{first['id']}"
