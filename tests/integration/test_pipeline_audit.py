"""The one pipeline (docs/architecture.md, I2): every request that reaches the FHIR API leaves an AuditEvent,
refusals included, and an AuditEvent that cannot be persisted means 503 with nothing written.

Audit codes: IHE BALP (STANDARDS §3); outcome per http://hl7.org/fhir/audit-event-outcome.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Server, patient_resource, start_server, unique

pytestmark = pytest.mark.asyncio


async def events(server: Server, **criteria: Any) -> list[dict[str, Any]]:
    return [document["res"] async for document in server.database.AuditEvent.find(criteria)]


def subtype_codes(event: dict[str, Any]) -> set[str]:
    return {coding["code"] for coding in event.get("subtype", [])}


async def test_each_request_records_exactly_one_event(fresh_server: Server) -> None:
    headers = fresh_server.as_doctor()
    created = (await fresh_server.http.post("/fhir/Patient", json=patient_resource(), headers=headers)).json()
    await fresh_server.http.get(f"/fhir/Patient/{created['id']}", headers=headers)
    await fresh_server.http.get(f"/fhir/Patient/{created['id']}/_history/1", headers=headers)
    await fresh_server.http.get(f"/fhir/Patient/{unique()}", headers=headers)
    await fresh_server.http.get("/fhir/Patient/x")
    stored = await events(fresh_server)
    assert len(stored) == 5
    by_subtype = sorted(sorted(subtype_codes(event)) for event in stored)
    assert by_subtype == [["create"], ["read"], ["read"], ["read"], ["vread"]]


async def test_successful_read_names_patient_and_user(fresh_server: Server) -> None:
    headers = fresh_server.as_doctor()
    created = (await fresh_server.http.post("/fhir/Patient", json=patient_resource(), headers=headers)).json()
    await fresh_server.http.get(f"/fhir/Patient/{created['id']}", headers=headers)
    [event] = [event for event in await events(fresh_server) if "read" in subtype_codes(event)]
    assert event["action"] == "R"
    assert event["outcome"] == "0"
    whats = {entity.get("what", {}).get("reference") for entity in event["entity"]}
    assert f"Patient/{created['id']}" in whats
    requestor = [agent for agent in event["agent"] if agent.get("requestor")]
    assert requestor and requestor[0]["who"].get("display") == "Dr Jeanne Durand"


@pytest.mark.parametrize(
    ("method", "path", "auth", "status"),
    [
        ("GET", "/fhir/Patient/nobody", False, 401),
        ("GET", "/fhir/Patient/nobody", True, 404),
        ("POST", "/fhir/AuditEvent", True, 405),
        ("DELETE", "/fhir/AuditEvent/whatever", True, 405),
    ],
)
async def test_refusals_are_audited_with_failure_outcome(
    fresh_server: Server, method: str, path: str, auth: bool, status: int
) -> None:
    headers = fresh_server.as_doctor() if auth else {}
    body = {"resourceType": "AuditEvent"} if method == "POST" else None
    response = await fresh_server.http.request(method, path, json=body, headers=headers)
    assert response.status_code == status
    [event] = await events(fresh_server)
    assert event["outcome"] == "4"
    assert event.get("outcomeDesc")


async def test_unauthenticated_request_names_only_the_network_address(fresh_server: Server) -> None:
    await fresh_server.http.get("/fhir/Patient/x", headers={"Authorization": "Bearer not-a-token"})
    [event] = await events(fresh_server)
    assert not any(
        agent.get("requestor") and agent.get("who", {}).get("identifier") for agent in event["agent"]
    )
    addresses = {agent.get("network", {}).get("address") for agent in event["agent"]}
    assert "10.1.2.3" in addresses


async def test_scope_refusal_is_403_and_audited(fresh_server: Server) -> None:
    token = fresh_server.token(scopes=["user/Consent.rs"])
    response = await fresh_server.http.get("/fhir/Patient/x", headers=fresh_server.headers(token))
    assert response.status_code == 403
    [event] = await events(fresh_server)
    assert event["outcome"] == "4"


async def refuse_audit_inserts(server: Server) -> None:
    """A real server-side refusal: a validator no AuditEvent document can satisfy."""
    names = await server.database.list_collection_names()
    if "AuditEvent" not in names:
        await server.database.create_collection("AuditEvent")
    await server.database.command(
        {"collMod": "AuditEvent", "validator": {"never": {"$exists": True}}, "validationAction": "error"}
    )


async def test_write_whose_audit_cannot_be_persisted_is_503_and_writes_nothing(fresh_server: Server) -> None:
    await refuse_audit_inserts(fresh_server)
    response = await fresh_server.http.post(
        "/fhir/Patient", json=patient_resource(), headers=fresh_server.as_doctor()
    )
    assert response.status_code == 503
    assert response.json()["resourceType"] == "OperationOutcome"
    assert await fresh_server.database.Patient.count_documents({}) == 0
    assert await fresh_server.database.Patient_history.count_documents({}) == 0


async def test_read_whose_audit_cannot_be_persisted_is_503_without_data(fresh_server: Server) -> None:
    created = (
        await fresh_server.http.post(
            "/fhir/Patient", json=patient_resource(), headers=fresh_server.as_doctor()
        )
    ).json()
    await refuse_audit_inserts(fresh_server)
    response = await fresh_server.http.get(f"/fhir/Patient/{created['id']}", headers=fresh_server.as_doctor())
    assert response.status_code == 503
    assert "identifier" not in response.text


async def test_x_forwarded_for_is_believed_from_a_trusted_proxy_only(mongo_uri: str, tmp_path: Path) -> None:
    """The test client's socket address is 10.1.2.3: here it is a trusted proxy (FHIR_TRUSTED_PROXIES)."""
    async for proxied in start_server(
        mongo_uri, tmp_path, f"it_{uuid.uuid4().hex[:10]}", trusted_proxies="10.9.9.9, 10.1.2.3"
    ):
        forwarded = {"X-Forwarded-For": "198.51.100.1, 203.0.113.7, 10.9.9.9"}
        await proxied.http.get("/fhir/Patient/x", headers={**proxied.as_doctor(), **forwarded})
        [event] = await events(proxied)
        addresses = {agent.get("network", {}).get("address") for agent in event["agent"]}
        assert "203.0.113.7" in addresses
        assert not addresses & {"10.1.2.3", "198.51.100.1", "10.9.9.9"}
