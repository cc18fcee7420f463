"""REST semantics seen from outside: status codes, headers, versioning, OperationOutcome on errors.

FHIR R4 http.html (create, read, vread, update, patch, delete, history, conditional create, If-Match,
Prefer), docs/configuration.md, docs/tokens.md, docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

import pytest
from conformance_harness import (
    INS_NIR_TEST,
    Fhir,
    Record,
    is_outcome,
    nir_test_value,
    patient_resource,
    unique,
)


def _create_patient(fhir: Fhir, **headers: str) -> dict[str, Any]:
    response = fhir.post("Patient", patient_resource(family=f"Rest{unique()}"), who="system", headers=headers)
    assert response.status_code == 201, response.text[:300]
    return dict(response.json())


def test_metadata_needs_no_token(fhir: Fhir) -> None:
    """GET [base]/metadata is served without a token (the one anonymous FHIR interaction)."""
    response = fhir.get("metadata", who=None)
    assert response.status_code == 200
    assert response.json()["resourceType"] == "CapabilityStatement"


def test_smart_configuration_is_published(fhir: Fhir) -> None:
    """[base]/.well-known/smart-configuration describes the SMART capabilities (SMART App Launch v2)."""
    response = fhir.get(".well-known/smart-configuration", who=None)
    assert response.status_code == 200
    assert "capabilities" in response.json()


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer not-a-jwt", "Basic dXNlcjpwYXNz"],
    ids=["no-token", "malformed-token", "not-bearer"],
)
def test_request_without_a_valid_token_is_401(
    fhir: Fhir, shared_record: Record, authorization: str | None
) -> None:
    """A missing or malformed token is 401 with `WWW-Authenticate: Bearer` and an OperationOutcome."""
    headers = {"Authorization": authorization} if authorization else {}
    response = fhir.get(shared_record.reference, who=None, headers=headers)
    assert response.status_code == 401
    assert response.headers.get("www-authenticate", "").lower().startswith("bearer")
    assert is_outcome(response)


def test_token_with_a_broken_signature_is_401(fhir: Fhir, shared_record: Record) -> None:
    """A token whose signature does not verify is 401."""
    token = fhir.tokens.token("system")
    header, payload, signature = token.split(".")
    forged = f"{header}.{payload}.{signature[::-1]}"
    response = fhir.get(shared_record.reference, who=None, headers={"Authorization": f"Bearer {forged}"})
    assert response.status_code == 401


def test_scope_that_does_not_cover_the_interaction_is_403(fhir: Fhir) -> None:
    """A valid token whose scopes do not cover the interaction (user/Patient.rs creating) is 403."""
    response = fhir.post("Patient", patient_resource(family=f"Scope{unique()}"), who="reader")
    assert response.status_code == 403
    assert is_outcome(response)


def test_create_answers_201_with_location_etag_and_last_modified(fhir: Fhir) -> None:
    """create: 201, `Location` naming the new id and version, `ETag: W/"1"`, `Last-Modified`, meta set."""
    response = fhir.post("Patient", patient_resource(family=f"Rest{unique()}"), who="system")
    assert response.status_code == 201
    created = response.json()
    assert f"Patient/{created['id']}" in response.headers["location"]
    assert response.headers["etag"] == 'W/"1"'
    assert response.headers.get("last-modified")
    assert created["meta"]["versionId"] == "1" and created["meta"]["lastUpdated"]


def test_read_of_an_unknown_id_is_404_with_outcome(fhir: Fhir) -> None:
    """read of an id that does not exist: 404 with an OperationOutcome."""
    response = fhir.get(f"Patient/unknown-{unique()}", who="system")
    assert response.status_code == 404
    assert is_outcome(response)


def test_unknown_resource_type_is_refused_with_outcome(fhir: Fhir) -> None:
    """A resource type the server does not serve is refused (400 or 404) with an OperationOutcome."""
    response = fhir.get("Spaceship", who="system")
    assert response.status_code in (400, 404)
    assert is_outcome(response)


def test_update_makes_a_new_version_and_every_version_stays_readable(fhir: Fhir) -> None:
    """update: 200, versionId 2 and its ETag; vread returns each version; history lists both, newest first."""
    created = _create_patient(fhir)
    changed = {**created, "gender": "male"}
    response = fhir.put(f"Patient/{created['id']}", changed, who="system")
    assert response.status_code == 200
    assert response.json()["meta"]["versionId"] == "2"
    assert response.headers["etag"] == 'W/"2"'
    first = fhir.get(f"Patient/{created['id']}/_history/1", who="system")
    assert first.status_code == 200 and first.json()["gender"] == "female"
    history = fhir.get(f"Patient/{created['id']}/_history", who="system").json()
    assert history["type"] == "history"
    assert [entry["resource"]["meta"]["versionId"] for entry in history["entry"]] == ["2", "1"]


def test_update_with_a_stale_if_match_is_412(fhir: Fhir) -> None:
    """update with `If-Match` naming an older version: 412 and nothing written."""
    created = _create_patient(fhir)
    assert fhir.put(f"Patient/{created['id']}", created, who="system").status_code == 200
    response = fhir.put(f"Patient/{created['id']}", created, who="system", headers={"If-Match": 'W/"1"'})
    assert response.status_code == 412
    assert is_outcome(response)
    assert fhir.get(f"Patient/{created['id']}", who="system").json()["meta"]["versionId"] == "2"


def test_update_with_the_current_if_match_succeeds(fhir: Fhir) -> None:
    """update with `If-Match` naming the current version succeeds."""
    created = _create_patient(fhir)
    response = fhir.put(f"Patient/{created['id']}", created, who="system", headers={"If-Match": 'W/"1"'})
    assert response.status_code == 200


def test_update_whose_body_id_differs_from_the_url_is_400(fhir: Fhir) -> None:
    """update whose resource id is not the id in the URL: 400 with an OperationOutcome."""
    created = _create_patient(fhir)
    response = fhir.put(f"Patient/{created['id']}", {**created, "id": "another-id"}, who="system")
    assert response.status_code == 400
    assert is_outcome(response)


def test_json_patch_changes_the_resource(fhir: Fhir) -> None:
    """patch (JSON Patch): 200 with the patched resource and a new version."""
    created = _create_patient(fhir)
    response = fhir.patch(
        f"Patient/{created['id']}",
        [{"op": "replace", "path": "/birthDate", "value": "1985-04-01"}],
        who="system",
    )
    assert response.status_code == 200
    assert response.json()["birthDate"] == "1985-04-01"
    assert response.json()["meta"]["versionId"] == "2"


def test_read_after_delete_is_410(fhir: Fhir, shared_record: Record) -> None:
    """delete: a later read is 410 Gone, and the history keeps the deletion."""
    document = shared_record.document()
    path = f"DocumentReference/{document['id']}"
    assert fhir.delete(path, who="gp").status_code in (200, 204)
    response = fhir.get(path, who="gp")
    assert response.status_code == 410
    assert is_outcome(response)
    history = fhir.get(f"{path}/_history", who="gp").json()
    assert history["entry"][0]["request"]["method"] == "DELETE"


def test_conditional_create_returns_the_existing_match(fhir: Fhir) -> None:
    """create with `If-None-Exist` matching one resource: 200 and nothing new."""
    nir = nir_test_value()
    resource = patient_resource(family=f"Cond{unique()}", nir=nir)
    condition = {"If-None-Exist": f"identifier={INS_NIR_TEST}|{nir}"}
    first = fhir.post("Patient", resource, who="system", headers=condition)
    second = fhir.post("Patient", resource, who="system", headers=condition)
    assert first.status_code == 201
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]


def test_prefer_return_minimal_sends_no_body(fhir: Fhir) -> None:
    """`Prefer: return=minimal`: 201 with Location and no resource in the body."""
    response = fhir.post(
        "Patient",
        patient_resource(family=f"Min{unique()}"),
        who="system",
        headers={"Prefer": "return=minimal"},
    )
    assert response.status_code == 201
    assert response.headers.get("location")
    assert not response.content.strip()


def test_unsupported_media_type_is_415(fhir: Fhir) -> None:
    """A body declared in a media type the server does not take (XML) is 415 with an OperationOutcome."""
    response = fhir.request(
        "POST",
        "Patient",
        who="system",
        content=b"<Patient xmlns='http://hl7.org/fhir'/>",
        content_type="application/fhir+xml",
    )
    assert response.status_code == 415
    assert is_outcome(response)


def test_unparseable_body_is_400(fhir: Fhir) -> None:
    """A body that is not JSON is 400 with an OperationOutcome."""
    response = fhir.request("POST", "Patient", who="system", content=b"{not json")
    assert response.status_code == 400
    assert is_outcome(response)


def test_invalid_resource_is_422_with_expression(fhir: Fhir) -> None:
    """A resource breaking a profile rule (an INS-NIR with a wrong key) is 422, the issue naming where."""
    resource = patient_resource(family=f"Bad{unique()}", nir="284037505612300")
    response = fhir.post("Patient", resource, who="system")
    assert response.status_code == 422
    assert is_outcome(response)
    assert any(issue.get("expression") for issue in response.json()["issue"])


def test_resource_of_the_wrong_type_is_refused(fhir: Fhir) -> None:
    """POST [base]/Patient with a Consent body is refused (400 or 422) with an OperationOutcome."""
    response = fhir.post("Patient", {"resourceType": "Consent", "status": "active"}, who="system")
    assert response.status_code in (400, 422)
    assert is_outcome(response)


def test_invalid_search_value_is_400(fhir: Fhir) -> None:
    """A search value that does not parse as the parameter's type (date) is 400 with an OperationOutcome."""
    response = fhir.get("Patient", who="system", params={"birthdate": "not-a-date"})
    assert response.status_code == 400
    assert is_outcome(response)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_audit_events_cannot_be_written_through_the_api(fhir: Fhir, method: str) -> None:
    """AuditEvent is append-only through the API: create, update and delete answer 405 (docs/audit.md)."""
    body = {"resourceType": "AuditEvent", "id": "x", "recorded": "2026-01-01T00:00:00Z"}
    path = "AuditEvent" if method == "POST" else "AuditEvent/x"
    response = fhir.request(method, path, who="system", json_body=None if method == "DELETE" else body)
    assert response.status_code == 405
    assert is_outcome(response)
