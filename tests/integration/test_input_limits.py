"""Hostile input is refused early with a clear OperationOutcome, and nothing is written.

https://hl7.org/fhir/R4/datatypes.html#string (1 MiB, no control characters),
https://hl7.org/fhir/R4/http.html (413 for bodies past `FHIR_MAX_BODY_BYTES`).
"""

from __future__ import annotations

from typing import Any

import orjson

from fhir_server.api.limits import MAX_REQUEST_ID_CHARACTERS
from fhir_server.validation.limits import MAX_DEPTH, MAX_STRING_CHARACTERS
from tests.integration.conftest import Server, document_resource, patient_resource, unique


def _nested_extension(levels: int) -> dict[str, Any]:
    extension: dict[str, Any] = {"url": "http://example.org/leaf", "valueString": "x"}
    for _ in range(levels):
        extension = {"url": "http://example.org/nest", "extension": [extension]}
    return extension


async def _patients_named(server: Server, family: str) -> int:
    response = await server.http.get(f"/fhir/Patient?family={family}", headers=server.as_system())
    assert response.status_code == 200
    return len(response.json().get("entry", []))


async def test_body_past_the_limit_is_413_and_writes_nothing(server: Server) -> None:
    family = f"Huge{unique()}"
    resource = patient_resource(family=family)
    resource["text"] = {"status": "generated", "div": "<div>" + "a" * (33 * 1024 * 1024) + "</div>"}
    response = await server.http.post(
        "/fhir/Patient", content=orjson.dumps(resource), headers=server.as_system()
    )
    assert response.status_code == 413
    assert response.json()["issue"][0]["code"] == "too-long"
    assert await _patients_named(server, family) == 0


async def test_extensions_nested_past_the_bound_are_400(server: Server) -> None:
    family = f"Deep{unique()}"
    resource = patient_resource(family=family)
    resource["extension"] = [_nested_extension(MAX_DEPTH + 80)]
    response = await server.http.post("/fhir/Patient", json=resource, headers=server.as_system())
    assert response.status_code == 400
    assert "nests deeper" in response.json()["issue"][0]["diagnostics"]
    assert await _patients_named(server, family) == 0


async def test_string_over_one_mebibyte_is_422_too_long(server: Server) -> None:
    family = f"Long{unique()}"
    resource = patient_resource(family=family)
    resource["name"][0]["given"] = ["g" * (MAX_STRING_CHARACTERS + 1)]
    response = await server.http.post("/fhir/Patient", json=resource, headers=server.as_system())
    assert response.status_code == 422
    issue = response.json()["issue"][0]
    assert issue["code"] == "too-long"
    assert issue["expression"] == ["name[0].given[0]"]
    assert await _patients_named(server, family) == 0


async def test_control_characters_in_a_string_are_422(server: Server) -> None:
    family = f"Nul{unique()}"
    resource = patient_resource(family=family)
    resource["name"][0]["given"] = ["Cla\u0000ire"]
    response = await server.http.post("/fhir/Patient", json=resource, headers=server.as_system())
    assert response.status_code == 422
    assert "control character" in response.json()["issue"][0]["diagnostics"]
    assert await _patients_named(server, family) == 0


async def test_json_patch_with_a_deep_value_is_400_and_changes_nothing(server: Server) -> None:
    created = await server.http.post("/fhir/Patient", json=patient_resource(), headers=server.as_system())
    assert created.status_code == 201
    patient_id = created.json()["id"]
    patch = [{"op": "add", "path": "/extension", "value": [_nested_extension(MAX_DEPTH + 10)]}]
    response = await server.http.patch(
        f"/fhir/Patient/{patient_id}",
        content=orjson.dumps(patch),
        headers=server.as_system(**{"Content-Type": "application/json-patch+json"}),
    )
    assert response.status_code == 400
    read = await server.http.get(f"/fhir/Patient/{patient_id}", headers=server.as_system())
    assert read.json()["meta"]["versionId"] == "1"


async def test_long_string_search_value_is_400_not_a_database_error(server: Server) -> None:
    response = await server.http.get("/fhir/Patient?family=" + "a" * 1000, headers=server.as_system())
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"


async def test_oversized_request_id_is_replaced_and_the_request_served(server: Server) -> None:
    huge = "r" * (1024 * 1024)
    response = await server.http.get(
        "/fhir/Patient?_count=1", headers=server.as_system(**{"X-Request-Id": huge})
    )
    assert response.status_code == 200
    echoed = response.headers["x-request-id"]
    assert echoed != huge
    assert 0 < len(echoed) <= MAX_REQUEST_ID_CHARACTERS


async def test_reasonable_request_id_is_kept(server: Server) -> None:
    request_id = f"req-{unique()}"
    response = await server.http.get(
        "/fhir/Patient?_count=1", headers=server.as_system(**{"X-Request-Id": request_id})
    )
    assert response.headers["x-request-id"] == request_id


async def test_a_document_too_big_for_one_database_document_is_413(server: Server) -> None:
    """Inline attachment data of 20 MB would exceed MongoDB's 16 MB document: 413, nothing written."""
    patient = await server.http.post("/fhir/Patient", json=patient_resource(), headers=server.as_system())
    document = document_resource(patient.json()["id"])
    document["content"] = [{"attachment": {"contentType": "text/plain", "data": "QUFB" * (5 * 1024 * 1024)}}]
    response = await server.http.post("/fhir/DocumentReference", json=document, headers=server.as_system())
    assert response.status_code == 413, response.text[:300]
    assert "cannot be stored" in response.json()["issue"][0]["diagnostics"]
