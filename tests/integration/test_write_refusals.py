"""A refused write says which rule of the consent decision refused it (the default opt-in policy here)."""

from __future__ import annotations

from tests.integration.conftest import Server, document_resource, patient_resource


async def test_a_write_without_consent_names_the_default_deny_rule(deny_server: Server) -> None:
    created = await deny_server.http.post(
        "/fhir/Patient", json=patient_resource(), headers=deny_server.as_system()
    )
    assert created.status_code == 201, created.text
    patient_id = created.json()["id"]

    refused = await deny_server.http.post(
        "/fhir/DocumentReference", json=document_resource(patient_id), headers=deny_server.as_system()
    )

    assert refused.status_code == 403, refused.text
    assert refused.json()["resourceType"] == "OperationOutcome"
    assert (
        f"You may not create this DocumentReference: no Consent of Patient/{patient_id} permits it "
        "(default policy: deny" in refused.text
    )
