"""REST core on the embedded database: every interaction of issue 2 and each error path.

Covers https://hl7.org/fhir/R4/http.html (create, read, vread, update, patch, delete, history,
conditional create/update/patch, If-Match, Prefer) and docs/architecture.md status codes.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.integration.conftest import FHIR_JSON, Server, document_resource, patient_resource, unique

pytestmark = pytest.mark.asyncio


async def create_patient(server: Server, **kwargs: Any) -> dict[str, Any]:
    response = await server.http.post(
        "/fhir/Patient", json=patient_resource(**kwargs), headers=server.as_doctor()
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_create_assigns_id_version_and_location(server: Server) -> None:
    response = await server.http.post("/fhir/Patient", json=patient_resource(), headers=server.as_doctor())
    assert response.status_code == 201
    body = response.json()
    assert body["id"] and body["meta"]["versionId"] == "1"
    assert response.headers["etag"] == 'W/"1"'
    assert response.headers["location"] == f"http://testserver/fhir/Patient/{body['id']}/_history/1"
    assert response.headers["last-modified"].endswith("GMT")
    assert response.headers["content-type"].startswith(FHIR_JSON)


async def test_create_ignores_client_id_and_server_meta(server: Server) -> None:
    resource = patient_resource() | {
        "id": "chosen",
        "meta": {"versionId": "9", "lastUpdated": "2001-01-01T00:00:00Z"},
    }
    body = (await server.http.post("/fhir/Patient", json=resource, headers=server.as_doctor())).json()
    assert body["id"] != "chosen"
    assert body["meta"]["versionId"] == "1"
    assert not body["meta"]["lastUpdated"].startswith("2001")


async def test_read_returns_current_version_with_etag(server: Server) -> None:
    created = await create_patient(server)
    response = await server.http.get(f"/fhir/Patient/{created['id']}", headers=server.as_doctor())
    assert response.status_code == 200
    assert response.json() == created
    assert response.headers["etag"] == 'W/"1"'


async def test_read_unknown_is_404_operation_outcome(server: Server) -> None:
    response = await server.http.get(f"/fhir/Patient/{unique()}", headers=server.as_doctor())
    assert response.status_code == 404
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "not-found"


async def test_update_creates_new_version_and_vread_returns_each(server: Server) -> None:
    created = await create_patient(server)
    changed = created | {"gender": "male"}
    response = await server.http.put(
        f"/fhir/Patient/{created['id']}", json=changed, headers=server.as_system()
    )
    assert response.status_code == 200
    assert response.json()["meta"]["versionId"] == "2"
    first = await server.http.get(f"/fhir/Patient/{created['id']}/_history/1", headers=server.as_system())
    second = await server.http.get(f"/fhir/Patient/{created['id']}/_history/2", headers=server.as_system())
    assert first.json()["gender"] == "female"
    assert second.json()["gender"] == "male"
    missing = await server.http.get(f"/fhir/Patient/{created['id']}/_history/3", headers=server.as_system())
    assert missing.status_code == 404


async def test_update_with_client_id_creates_for_system_clients_only(server: Server) -> None:
    """Update as create is for `system/` clients; others get what an unknown id gets (404)."""
    resource_id = f"pat-{unique()}"
    resource = patient_resource() | {"id": resource_id}
    refused = await server.http.put(f"/fhir/Patient/{resource_id}", json=resource, headers=server.as_doctor())
    assert refused.status_code == 404
    assert refused.json()["issue"][0]["diagnostics"] == f"Resource Patient/{resource_id} is not known"
    assert await server.database.Patient.count_documents({"_id": resource_id}) == 0
    response = await server.http.put(
        f"/fhir/Patient/{resource_id}", json=resource, headers=server.as_system()
    )
    assert response.status_code == 201
    assert response.json()["id"] == resource_id
    assert response.headers["location"].endswith(f"/Patient/{resource_id}/_history/1")


async def test_update_with_mismatched_id_is_400_and_writes_nothing(server: Server) -> None:
    resource_id = f"pat-{unique()}"
    resource = patient_resource() | {"id": "other"}
    response = await server.http.put(
        f"/fhir/Patient/{resource_id}", json=resource, headers=server.as_doctor()
    )
    assert response.status_code == 400
    assert await server.database.Patient.count_documents({"_id": resource_id}) == 0


async def test_if_match_mismatch_is_412_and_match_updates(server: Server) -> None:
    created = await create_patient(server)
    url = f"/fhir/Patient/{created['id']}"
    stale = await server.http.put(url, json=created, headers=server.as_system(**{"If-Match": 'W/"7"'}))
    assert stale.status_code == 412
    assert await server.database.Patient_history.count_documents({"rid": created["id"]}) == 1
    fresh = await server.http.put(url, json=created, headers=server.as_system(**{"If-Match": 'W/"1"'}))
    assert fresh.status_code == 200
    assert fresh.headers["etag"] == 'W/"2"'


@pytest.mark.parametrize(
    ("prefer", "expect_body"),
    [
        ("return=minimal", None),
        ("return=representation", "Patient"),
        ("return=OperationOutcome", "OperationOutcome"),
    ],
)
async def test_prefer_return(server: Server, prefer: str, expect_body: str | None) -> None:
    response = await server.http.post(
        "/fhir/Patient", json=patient_resource(), headers=server.as_doctor(Prefer=prefer)
    )
    assert response.status_code == 201
    assert response.headers["location"]
    if expect_body is None:
        assert response.content == b""
    else:
        assert response.json()["resourceType"] == expect_body


async def test_json_patch_changes_element_and_bumps_version(server: Server) -> None:
    created = await create_patient(server)
    patch = [{"op": "replace", "path": "/gender", "value": "other"}]
    response = await server.http.patch(
        f"/fhir/Patient/{created['id']}",
        content=json.dumps(patch),
        headers=server.as_system(**{"Content-Type": "application/json-patch+json"}),
    )
    assert response.status_code == 200, response.text
    assert response.json()["gender"] == "other"
    assert response.json()["meta"]["versionId"] == "2"


async def test_patch_with_wrong_media_type_is_415(server: Server) -> None:
    created = await create_patient(server)
    response = await server.http.patch(
        f"/fhir/Patient/{created['id']}",
        json=[{"op": "remove", "path": "/gender"}],
        headers=server.as_doctor(),
    )
    assert response.status_code == 415
    assert response.json()["resourceType"] == "OperationOutcome"


async def test_patch_producing_invalid_resource_is_422_and_writes_nothing(server: Server) -> None:
    created = await create_patient(server)
    patch = [{"op": "replace", "path": "/gender", "value": "banana"}]
    response = await server.http.patch(
        f"/fhir/Patient/{created['id']}",
        content=json.dumps(patch),
        headers=server.as_system(**{"Content-Type": "application/json-patch+json"}),
    )
    assert response.status_code == 422
    assert await server.database.Patient_history.count_documents({"rid": created["id"]}) == 1


async def test_conditional_patch_masks_document_by_identifier(server: Server) -> None:
    patient = await create_patient(server)
    document = document_resource(patient["id"])
    created = await server.http.post("/fhir/DocumentReference", json=document, headers=server.as_doctor())
    assert created.status_code == 201, created.text
    identifier = document["masterIdentifier"]
    patch = [
        {
            "op": "add",
            "path": "/securityLabel",
            "value": [
                {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}
                    ]
                }
            ],
        }
    ]
    response = await server.http.patch(
        f"/fhir/DocumentReference?identifier={identifier['system']}|{identifier['value']}",
        content=json.dumps(patch),
        headers=server.as_doctor(**{"Content-Type": "application/json-patch+json"}),
    )
    assert response.status_code == 200, response.text
    assert response.json()["securityLabel"][0]["coding"][0]["code"] == "R"


async def test_delete_then_read_is_410_and_history_keeps_tombstone(server: Server) -> None:
    created = await create_patient(server)
    url = f"/fhir/Patient/{created['id']}"
    deleted = await server.http.delete(url, headers=server.as_system())
    assert deleted.status_code == 204
    gone = await server.http.get(url, headers=server.as_system())
    assert gone.status_code == 410
    assert gone.json()["issue"][0]["code"] == "deleted"
    history = (await server.http.get(f"{url}/_history", headers=server.as_system())).json()
    assert history["type"] == "history"
    assert [entry["request"]["method"] for entry in history["entry"]] == ["DELETE", "POST"]
    recreated = await server.http.put(url, json=created, headers=server.as_system())
    assert recreated.status_code == 201
    assert recreated.json()["meta"]["versionId"] == "3"


async def test_type_history_since_and_count_pages(server: Server) -> None:
    family = f"Hist{unique()}"
    ids = [(await create_patient(server, family=family))["id"] for _ in range(3)]
    first = (await server.http.get(f"/fhir/Patient/{ids[0]}", headers=server.as_doctor())).json()
    since = first["meta"]["lastUpdated"]
    page = (
        await server.http.get(f"/fhir/Patient/_history?_since={since}&_count=2", headers=server.as_doctor())
    ).json()
    seen = [entry["resource"]["id"] for entry in page["entry"]]
    assert len(seen) == 2
    links = {link["relation"]: link["url"] for link in page["link"]}
    while "next" in links:
        page = (await server.http.get(links["next"], headers=server.as_doctor())).json()
        seen += [entry["resource"]["id"] for entry in page["entry"]]
        links = {link["relation"]: link["url"] for link in page["link"]}
    assert set(ids) <= set(seen)
    assert len(seen) == len(set(seen))


async def test_conditional_create_returns_existing_match(server: Server) -> None:
    resource = patient_resource()
    identifier = resource["identifier"][0]
    condition = f"identifier={identifier['system']}|{identifier['value']}"
    first = await server.http.post(
        "/fhir/Patient", json=resource, headers=server.as_doctor(**{"If-None-Exist": condition})
    )
    second = await server.http.post(
        "/fhir/Patient", json=resource, headers=server.as_doctor(**{"If-None-Exist": condition})
    )
    assert first.status_code == 201
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    assert await server.database.Patient.count_documents({"res.identifier.value": identifier["value"]}) == 1


async def test_conditional_update_creates_then_updates(server: Server) -> None:
    resource = patient_resource()
    identifier = resource["identifier"][0]
    url = f"/fhir/Patient?identifier={identifier['system']}|{identifier['value']}"
    created = await server.http.put(url, json=resource, headers=server.as_system())
    assert created.status_code == 201
    updated = await server.http.put(url, json=resource | {"gender": "male"}, headers=server.as_system())
    assert updated.status_code == 200
    assert updated.json()["id"] == created.json()["id"]
    assert updated.json()["meta"]["versionId"] == "2"


async def test_invalid_resource_is_422_with_expression_and_nothing_written(fresh_server: Server) -> None:
    bad = patient_resource() | {"gender": "banana"}
    response = await fresh_server.http.post("/fhir/Patient", json=bad, headers=fresh_server.as_doctor())
    assert response.status_code == 422
    issues = response.json()["issue"]
    assert any("Patient.gender" in " ".join(issue.get("expression", [])) for issue in issues)
    assert await fresh_server.database.Patient.count_documents({}) == 0
    assert await fresh_server.database.Patient_history.count_documents({}) == 0


async def test_ins_with_wrong_length_is_422(server: Server) -> None:
    bad = patient_resource(nir="12345")
    response = await server.http.post("/fhir/Patient", json=bad, headers=server.as_doctor())
    assert response.status_code == 422
    assert any("identifier" in " ".join(issue.get("expression", [])) for issue in response.json()["issue"])


async def test_unparseable_json_is_400(server: Server) -> None:
    response = await server.http.post("/fhir/Patient", content=b"{not json", headers=server.as_doctor())
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"


async def test_wrong_content_type_is_415(server: Server) -> None:
    response = await server.http.post(
        "/fhir/Patient",
        content=b"<Patient/>",
        headers=server.as_doctor(**{"Content-Type": "application/xml"}),
    )
    assert response.status_code == 415


async def test_no_token_is_401_with_www_authenticate(server: Server) -> None:
    response = await server.http.get("/fhir/Patient/x")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["issue"][0]["code"] == "login"


@pytest.mark.parametrize("audience", ["http://elsewhere/fhir"])
async def test_token_for_another_audience_is_401(server: Server, audience: str) -> None:
    token = server.token(scopes=["user/*.cruds"], audience=audience)
    response = await server.http.get("/fhir/Patient/x", headers=server.headers(token))
    assert response.status_code == 401


async def test_expired_token_is_401(server: Server) -> None:
    token = server.token(scopes=["user/*.cruds"], lifetime=-120)
    response = await server.http.get("/fhir/Patient/x", headers=server.headers(token))
    assert response.status_code == 401


async def test_unsigned_token_is_401(server: Server) -> None:
    import jwt

    token = jwt.encode({"sub": "x", "scope": "user/*.cruds"}, key="", algorithm="none")
    response = await server.http.get("/fhir/Patient/x", headers=server.headers(token))
    assert response.status_code == 401


async def test_missing_scope_is_403_and_writes_nothing(fresh_server: Server) -> None:
    token = fresh_server.token(scopes=["user/Patient.rs"])
    response = await fresh_server.http.post(
        "/fhir/Patient", json=patient_resource(), headers=fresh_server.headers(token)
    )
    assert response.status_code == 403
    assert response.json()["issue"][0]["code"] == "forbidden"
    assert await fresh_server.database.Patient.count_documents({}) == 0


async def test_audit_event_writes_are_405(server: Server) -> None:
    event = {"resourceType": "AuditEvent"}
    headers = server.as_doctor()
    assert (await server.http.post("/fhir/AuditEvent", json=event, headers=headers)).status_code == 405
    assert (await server.http.put("/fhir/AuditEvent/x", json=event, headers=headers)).status_code == 405
    assert (await server.http.delete("/fhir/AuditEvent/x", headers=headers)).status_code == 405


async def test_unsupported_type_is_404(server: Server) -> None:
    response = await server.http.get("/fhir/Observation/1", headers=server.as_doctor())
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"


async def test_concurrent_updates_with_if_match_let_exactly_one_win(server: Server) -> None:
    created = await create_patient(server)
    url = f"/fhir/Patient/{created['id']}"
    headers = server.as_system(**{"If-Match": 'W/"1"'})
    responses = await asyncio.gather(
        *(
            server.http.put(url, json=created | {"gender": g}, headers=headers)
            for g in ("male", "other", "unknown")
        )
    )
    statuses = sorted(response.status_code for response in responses)
    assert statuses.count(200) == 1
    assert all(status in (409, 412) for status in statuses if status != 200)
    assert await server.database.Patient_history.count_documents({"rid": created["id"]}) == 2


async def test_validate_operation_reports_without_writing(fresh_server: Server) -> None:
    headers = fresh_server.as_doctor()
    good = await fresh_server.http.post("/fhir/Patient/$validate", json=patient_resource(), headers=headers)
    bad = await fresh_server.http.post(
        "/fhir/Patient/$validate", json={"resourceType": "Patient", "gender": "x"}, headers=headers
    )
    assert good.status_code == 200
    assert good.json()["issue"][0]["severity"] == "information"
    assert bad.status_code == 200
    assert any(issue["severity"] == "error" for issue in bad.json()["issue"])
    assert await fresh_server.database.Patient.count_documents({}) == 0


async def test_metadata_is_capability_statement_without_auth(server: Server) -> None:
    response = await server.http.get("/fhir/metadata")
    assert response.status_code == 200
    statement = response.json()
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    types = {resource["type"] for resource in statement["rest"][0]["resource"]}
    assert {"Patient", "DocumentReference", "Consent", "Binary", "AuditEvent"} <= types


async def test_health_without_auth(server: Server) -> None:
    response = await server.http.get("/health")
    assert response.status_code == 200
    assert response.json()["database"] == "up"
