"""The live server answers as a stranger expects: metadata without a token, 401 without one elsewhere."""

from __future__ import annotations

from tests.security.conftest import LiveServer


def test_metadata_is_public_and_patient_search_needs_a_token(live: LiveServer) -> None:
    assert live.http.get("/fhir/metadata").status_code == 200
    refused = live.http.get("/fhir/Patient")
    assert refused.status_code == 401
    assert refused.json()["resourceType"] == "OperationOutcome"
