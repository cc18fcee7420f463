"""The exact IHE BALP shape of the AuditEvent stored for each RESTful interaction and outcome, over HTTP.

Covers docs/audit.md (types, subtypes, actions, outcomes, agents, entities, one event per patient, 405 on
AuditEvent writes, themselves audited) and §2 I2; STANDARDS §3.1 (RESTful profile rows, agent roles,
entity slices: patient, data, query = base64 of the raw request, XrequestId; sev-1), §3.2 (token
enrichment: iss/sub, jti policy, client_id, subject_name, subject_role, purpose_of_use) and the
Consent entity naming the consent that decided (docs/consent.md, last point).

Every request is sent with its own `X-Request-Id`; its events are found by that XrequestId entity.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from fhir_server.validation import validate_resource
from tests.integration.conftest import FHIR_JSON, Server, document_resource, patient_resource, unique

pytestmark = pytest.mark.asyncio

DCM = "http://dicom.nema.org/resources/ontology/DCM"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
BALP_ENTITY = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
JSON_PATCH = "application/json-patch+json"
CLIENT_ADDRESS = "10.1.2.3"
SERVER = "http://testserver/fhir"

AgentKey = tuple[tuple[str, ...], bool]
EntityKey = tuple[str, str, str]

READ_AGENTS: list[AgentKey] = [
    (("IRCP", "UserOauthAgent"), True),
    (("110152", "110150"), False),
    (("110153",), False),
]
WRITE_AGENTS: list[AgentKey] = [
    (("AUT", "UserOauthAgent"), True),
    (("110153", "110150"), False),
    (("110152",), False),
]
DELETE_AGENTS: list[AgentKey] = [
    (("AUT", "UserOauthAgent"), True),
    (("110150",), False),
    (("custodian",), False),
]
QUERY_AGENTS: list[AgentKey] = [
    (("IRCP", "UserOauthAgent"), True),
    (("110153", "110150"), False),
    (("110152",), False),
]
ANONYMOUS_READ_AGENTS: list[AgentKey] = [(("110150",), True), (("110153",), False)]

PATIENT_ENTITY: EntityKey = ("1", "1", "Patient/{patient}")
REQUEST_ENTITY: EntityKey = ("XrequestId", "", "{request}")
QUERY_ENTITY: EntityKey = ("2", "24", "query")
BUNDLE_ENTITY: EntityKey = ("Bundle", "", "?")
"""The Bundle of a batch or transaction, described (it is not stored), in the Bundle's own events."""


def data(reference: str) -> EntityKey:
    return ("2", "4", reference)


@dataclass
class Record:
    """One patient with one DocumentReference, created for a test by the doctor."""

    patient: str
    document: str
    document_body: dict[str, Any]


@pytest.fixture
async def record(server: Server) -> Record:
    headers = server.as_doctor()
    patient = await server.http.post("/fhir/Patient", json=patient_resource(), headers=headers)
    assert patient.status_code == 201, patient.text
    document = await server.http.post(
        "/fhir/DocumentReference", json=document_resource(patient.json()["id"]), headers=headers
    )
    assert document.status_code == 201, document.text
    return Record(patient.json()["id"], document.json()["id"], document.json())


async def events_of(server: Server, request_id: str) -> list[dict[str, Any]]:
    """The AuditEvents of one request, ordered by their patient entity (none first)."""
    found = [
        document["res"]
        async for document in server.database.AuditEvent.find(
            {"res.entity": {"$elemMatch": {"type.code": "XrequestId", "what.identifier.value": request_id}}}
        )
    ]
    return sorted(found, key=lambda event: patient_of(event) or "")


def patient_of(event: dict[str, Any]) -> str | None:
    patients = [
        entity["what"]["reference"].removeprefix("Patient/")
        for entity in event.get("entity", [])
        if entity.get("role", {}).get("code") == "1" and entity.get("type", {}).get("code") == "1"
    ]
    assert len(patients) <= 1, f"BALP: at most one patient entity per event, got {patients}"
    return patients[0] if patients else None


async def send(
    server: Server,
    method: str,
    path: str,
    *,
    headers: dict[str, str],
    body: Any = None,
    content_type: str = FHIR_JSON,
) -> tuple[httpx.Response, list[dict[str, Any]], str]:
    request_id = f"rq-{uuid.uuid4()}"
    sent = {**headers, "X-Request-Id": request_id}
    if body is not None:
        sent["Content-Type"] = content_type
    response = await server.http.request(method, path, json=body, headers=sent)
    return response, await events_of(server, request_id), request_id


def codes(concept: dict[str, Any]) -> tuple[str, ...]:
    return tuple(coding["code"] for coding in concept.get("coding", []))


def summary(event: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """The BALP skeleton of an event, with the test's ids replaced by their placeholder names."""

    def named(text: str) -> str:
        for value, name in names.items():
            text = text.replace(value, name)
        return text

    entities: list[EntityKey] = []
    for entity in event.get("entity", []):
        what = entity.get("what", {})
        if "query" in entity:
            label = "query"
        elif "reference" in what:
            label = named(what["reference"])
        else:
            label = named(what.get("identifier", {}).get("value", "?"))
        entities.append((entity["type"]["code"], entity.get("role", {}).get("code", ""), label))
    return {
        "type": (event["type"]["system"], event["type"]["code"]),
        "subtype": [(coding.get("system"), coding["code"]) for coding in event["subtype"]],
        "action": event["action"],
        "outcome": event["outcome"],
        "agents": [(codes(agent["type"]), agent["requestor"]) for agent in event["agent"]],
        "entities": entities,
    }


def check_common(event: dict[str, Any], *, outcome: str) -> None:
    """What every BALP RESTful event carries whatever the interaction (STANDARDS §3.1 'common')."""
    assert not [
        issue for issue in validate_resource(event, expected_type="AuditEvent") if issue.severity == "error"
    ]
    recorded = datetime.fromisoformat(event["recorded"])
    assert abs(datetime.now(UTC) - recorded) < timedelta(minutes=5)
    assert event["source"]["observer"]["identifier"]["value"] == SERVER
    assert codes({"coding": event["source"]["type"]}) == ("4",)
    assert len(event["agent"]) >= 2
    if outcome == "0":
        assert "outcomeDesc" not in event
    else:
        assert event["outcomeDesc"], "a failure explains itself in outcomeDesc"
    for agent in event["agent"]:
        assert agent["who"], "every agent names who"
        kinds = codes(agent["type"])
        if "UserOauthAgent" in kinds or kinds == ("PROV",):
            assert "network" not in agent, "BALP: the user agent has no network"
        elif agent["who"].get("identifier", {}).get("value") == SERVER:
            assert agent["network"] == {"address": SERVER, "type": "5"}
        else:
            assert agent["network"] == {"address": CLIENT_ADDRESS, "type": "2"}
    for entity in event.get("entity", []):
        if "query" in entity:
            assert "what" not in entity and "name" not in entity, "BALP query slice what 0..0; R4 sev-1"
            assert "detail" not in entity and "lifecycle" not in entity


DOCUMENT_V = "DocumentReference/{document}/_history/"

ROWS = [
    (
        "read",
        "GET",
        "/fhir/DocumentReference/{document}",
        "",
        200,
        [(RESTFUL, "read")],
        "R",
        "0",
        READ_AGENTS,
        [PATIENT_ENTITY, data(DOCUMENT_V + "1"), REQUEST_ENTITY],
    ),
    (
        "vread",
        "GET",
        "/fhir/DocumentReference/{document}/_history/1",
        "",
        200,
        [(RESTFUL, "vread")],
        "R",
        "0",
        READ_AGENTS,
        [PATIENT_ENTITY, data(DOCUMENT_V + "1"), REQUEST_ENTITY],
    ),
    (
        "create",
        "POST",
        "/fhir/DocumentReference",
        "new-document",
        201,
        [(RESTFUL, "create")],
        "C",
        "0",
        WRITE_AGENTS,
        [PATIENT_ENTITY, data("DocumentReference/{created}/_history/1"), REQUEST_ENTITY],
    ),
    (
        "update",
        "PUT",
        "/fhir/DocumentReference/{document}",
        "document",
        200,
        [(RESTFUL, "update")],
        "U",
        "0",
        WRITE_AGENTS,
        [PATIENT_ENTITY, data(DOCUMENT_V + "2"), REQUEST_ENTITY],
    ),
    (
        "patch",
        "PATCH",
        "/fhir/DocumentReference/{document}",
        "patch",
        200,
        [(RESTFUL, "patch")],
        "U",
        "0",
        WRITE_AGENTS,
        [PATIENT_ENTITY, data(DOCUMENT_V + "2"), REQUEST_ENTITY],
    ),
    (
        "delete",
        "DELETE",
        "/fhir/DocumentReference/{document}",
        "",
        204,
        [(RESTFUL, "delete")],
        "D",
        "0",
        DELETE_AGENTS,
        [PATIENT_ENTITY, data(DOCUMENT_V + "2"), REQUEST_ENTITY],
    ),
    (
        "search-type",
        "GET",
        "/fhir/DocumentReference?patient={patient}",
        "",
        200,
        [(RESTFUL, "search-type")],
        "E",
        "0",
        QUERY_AGENTS,
        [PATIENT_ENTITY, QUERY_ENTITY, REQUEST_ENTITY],
    ),
    (
        "history-instance",
        "GET",
        "/fhir/DocumentReference/{document}/_history",
        "",
        200,
        [(RESTFUL, "history-instance")],
        "E",
        "0",
        QUERY_AGENTS,
        [PATIENT_ENTITY, QUERY_ENTITY, REQUEST_ENTITY],
    ),
    (
        "$validate",
        "POST",
        "/fhir/DocumentReference/$validate",
        "new-document",
        200,
        [(RESTFUL, "operation"), (None, "$validate")],
        "E",
        "0",
        QUERY_AGENTS,
        [REQUEST_ENTITY],
    ),
    (
        "read 404",
        "GET",
        "/fhir/DocumentReference/{missing}",
        "",
        404,
        [(RESTFUL, "read")],
        "R",
        "4",
        READ_AGENTS,
        [data("DocumentReference/{missing}"), REQUEST_ENTITY],
    ),
    (
        "update 412 (If-Match)",
        "PUT",
        "/fhir/DocumentReference/{document}",
        "document-if-match-stale",
        412,
        [(RESTFUL, "update")],
        "U",
        "4",
        WRITE_AGENTS,
        [PATIENT_ENTITY, data("DocumentReference/{document}"), REQUEST_ENTITY],
    ),
    (
        "create 422",
        "POST",
        "/fhir/DocumentReference",
        "invalid-document",
        422,
        [(RESTFUL, "create")],
        "C",
        "4",
        WRITE_AGENTS,
        [REQUEST_ENTITY],
    ),
    (
        "create AuditEvent 405",
        "POST",
        "/fhir/AuditEvent",
        "audit-event",
        405,
        [(RESTFUL, "create")],
        "C",
        "4",
        WRITE_AGENTS,
        [REQUEST_ENTITY],
    ),
    (
        "update AuditEvent 405",
        "PUT",
        "/fhir/AuditEvent/{missing}",
        "audit-event",
        405,
        [(RESTFUL, "update")],
        "U",
        "4",
        WRITE_AGENTS,
        [data("AuditEvent/{missing}"), REQUEST_ENTITY],
    ),
    (
        "patch AuditEvent 405",
        "PATCH",
        "/fhir/AuditEvent/{missing}",
        "patch",
        405,
        [(RESTFUL, "patch")],
        "U",
        "4",
        WRITE_AGENTS,
        [data("AuditEvent/{missing}"), REQUEST_ENTITY],
    ),
    (
        "delete AuditEvent 405",
        "DELETE",
        "/fhir/AuditEvent/{missing}",
        "",
        405,
        [(RESTFUL, "delete")],
        "D",
        "4",
        DELETE_AGENTS,
        [data("AuditEvent/{missing}"), REQUEST_ENTITY],
    ),
]


def body_of(kind: str, record: Record) -> tuple[Any, str, dict[str, str]]:
    """Request body, content type and extra headers for a table row."""
    document = {**record.document_body, "description": f"edited {unique()}"}
    if kind == "new-document":
        return document_resource(record.patient), FHIR_JSON, {}
    if kind == "document":
        return document, FHIR_JSON, {}
    if kind == "document-if-match-stale":
        return document, FHIR_JSON, {"If-Match": 'W/"7"'}
    if kind == "patch":
        return [{"op": "add", "path": "/description", "value": "patched"}], JSON_PATCH, {}
    if kind == "invalid-document":
        return {"resourceType": "DocumentReference", "status": "bogus"}, FHIR_JSON, {}
    if kind == "audit-event":
        return {"resourceType": "AuditEvent"}, FHIR_JSON, {}
    return None, FHIR_JSON, {}


@pytest.mark.parametrize(
    ("label", "method", "path", "body", "status", "subtype", "action", "outcome", "agents", "entities"),
    ROWS,
    ids=[row[0] for row in ROWS],
)
async def test_each_interaction_and_outcome_stores_its_exact_balp_shape(
    server: Server,
    record: Record,
    label: str,
    method: str,
    path: str,
    body: str,
    status: int,
    subtype: list[tuple[str | None, str]],
    action: str,
    outcome: str,
    agents: list[AgentKey],
    entities: list[EntityKey],
) -> None:
    missing = f"missing-{unique()}"
    payload, content_type, extra = body_of(body, record)
    target = path.format(patient=record.patient, document=record.document, missing=missing)
    response, events, request_id = await send(
        server,
        method,
        target,
        headers={**server.as_doctor(), **extra},
        body=payload,
        content_type=content_type,
    )
    assert response.status_code == status, response.text
    names = {record.patient: "{patient}", record.document: "{document}", missing: "{missing}"}
    if status == 201:
        names[response.json()["id"]] = "{created}"
    names[request_id] = "{request}"
    assert len(events) == 1, f"{label}: one AuditEvent, got {len(events)}"
    [event] = events
    assert summary(event, names) == {
        "type": ("http://terminology.hl7.org/CodeSystem/audit-event-type", "rest"),
        "subtype": subtype,
        "action": action,
        "outcome": outcome,
        "agents": agents,
        "entities": entities,
    }
    check_common(event, outcome=outcome)


async def test_user_agent_carries_the_token_identity(server: Server, record: Record) -> None:
    """STANDARDS §3.2: iss/sub identifier, fhirUser, jti policy, subject_name, role, purpose, NPI."""
    _, [event], _ = await send(
        server, "GET", f"/fhir/DocumentReference/{record.document}", headers=server.as_doctor()
    )
    user, client, this_server = event["agent"]
    assert user["who"] == {
        "reference": "Practitioner/dr-core",
        "identifier": {"system": "fhir-server-dev", "value": "dr-core"},
        "display": "Dr Jeanne Durand",
    }
    assert user["name"] == "Dr Jeanne Durand"
    assert user["altId"] == "810002345678"
    [policy] = user["policy"]
    assert policy.startswith("urn:ietf:params:oauth:jti:") and len(policy) > len("urn:ietf:params:oauth:jti:")
    assert user["role"] == [
        {
            "coding": [
                {
                    "system": "https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante",
                    "code": "10",
                }
            ]
        }
    ]
    assert user["purposeOfUse"] == [{"coding": [{"system": ACT_REASON, "code": "TREAT"}]}]
    assert event["purposeOfEvent"] == user["purposeOfUse"]
    assert client["who"] == {"identifier": {"value": "test-client"}}
    assert client["network"] == {"address": CLIENT_ADDRESS, "type": "2"}
    assert this_server["who"]["identifier"] == {"system": "urn:ietf:rfc:3986", "value": SERVER}
    assert this_server["network"] == {"address": SERVER, "type": "5"}
    assert [coding["system"] for coding in client["type"]["coding"]] == [DCM, DCM]
    assert user["type"]["coding"][0]["system"] == PARTICIPATION
    assert {entity["type"]["system"] for entity in event["entity"]} == {ENTITY_TYPE, BALP_ENTITY}
    assert {entity["role"]["system"] for entity in event["entity"] if "role" in entity} == {OBJECT_ROLE}


async def test_organization_of_the_user_is_a_provider_agent(server: Server, record: Record) -> None:
    token = server.token(
        scopes=["user/DocumentReference.rs"],
        sub="dr-org",
        fhir_user="Practitioner/dr-org",
        iua={"subject_organization": "CH Test", "subject_organization_id": "1.2.250.1.71.4.2.2|123"},
    )
    _, [event], _ = await send(
        server, "GET", f"/fhir/DocumentReference/{record.document}", headers=server.headers(token)
    )
    [organization] = [agent for agent in event["agent"] if codes(agent["type"]) == ("PROV",)]
    assert organization["who"] == {"identifier": {"value": "1.2.250.1.71.4.2.2|123"}, "display": "CH Test"}
    assert organization["requestor"] is False


@pytest.mark.parametrize(
    ("authorization", "diagnostic"),
    [(None, "no token"), ("Bearer not-a-token", "malformed token"), ("Basic dXNlcjpwYXNz", "not bearer")],
)
async def test_refused_before_authentication_names_only_the_network_address(
    server: Server, record: Record, authorization: str | None, diagnostic: str
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response, [event], request_id = await send(
        server, "GET", f"/fhir/DocumentReference/{record.document}", headers=headers
    )
    assert response.status_code == 401, diagnostic
    names = {record.document: "{document}", request_id: "{request}"}
    assert summary(event, names) == {
        "type": ("http://terminology.hl7.org/CodeSystem/audit-event-type", "rest"),
        "subtype": [(RESTFUL, "read")],
        "action": "R",
        "outcome": "4",
        "agents": ANONYMOUS_READ_AGENTS,
        # Anyone can send this: the resource it names is only in the raw request (no compartment).
        "entities": [QUERY_ENTITY, REQUEST_ENTITY],
    }
    [query] = [entity["query"] for entity in event["entity"] if "query" in entity]
    assert base64.b64decode(query).decode() == f"GET /fhir/DocumentReference/{record.document}"
    assert not event.get("entity", [{}])[0].get("what")
    client = event["agent"][0]
    assert client["who"] == {"display": CLIENT_ADDRESS}
    assert client["network"] == {"address": CLIENT_ADDRESS, "type": "2"}
    assert "purposeOfEvent" not in event
    check_common(event, outcome="4")


async def test_expired_token_is_refused_and_audited_without_its_identity(server: Server) -> None:
    token = server.token(scopes=["user/*.rs"], sub="expired-user", lifetime=-120)
    response, [event], _ = await send(server, "GET", "/fhir/Patient?_count=1", headers=server.headers(token))
    assert response.status_code == 401
    assert "expired-user" not in str(event["agent"])
    assert [codes(agent["type"]) for agent in event["agent"]] == [("110150",), ("110152",)]


async def test_scope_refusal_is_403_with_the_user_named(server: Server, record: Record) -> None:
    token = server.token(scopes=["user/Patient.rs"], sub="scoped-user", fhir_user="Practitioner/scoped")
    response, [event], request_id = await send(
        server, "GET", f"/fhir/DocumentReference/{record.document}", headers=server.headers(token)
    )
    assert response.status_code == 403
    names = {record.document: "{document}", request_id: "{request}"}
    assert summary(event, names)["agents"] == READ_AGENTS
    assert summary(event, names)["entities"] == [data("DocumentReference/{document}"), REQUEST_ENTITY]
    assert event["outcome"] == "4"
    assert event["agent"][0]["who"]["reference"] == "Practitioner/scoped"
    check_common(event, outcome="4")


async def test_query_entity_is_base64_of_method_and_raw_target(server: Server, record: Record) -> None:
    path = f"/fhir/DocumentReference?patient={record.patient}&_count=5&type=http%3A%2F%2Floinc.org%7C11488-4"
    _, [event], _ = await send(server, "GET", path, headers=server.as_doctor())
    [query] = [entity for entity in event["entity"] if "query" in entity]
    assert base64.b64decode(query["query"]).decode() == f"GET {path}", (
        "BALP: the query entity is base64 of the raw request (method and target); "
        "fix in pipeline.facts_of: raw_query=_raw_request(ctx)"
    )


async def test_search_spanning_patients_records_one_event_per_patient(server: Server) -> None:
    headers = server.as_doctor()
    loinc = f"{uuid.uuid4().int % 10**5}-1"
    patients = []
    for _ in range(3):
        patient = (await server.http.post("/fhir/Patient", json=patient_resource(), headers=headers)).json()
        created = await server.http.post(
            "/fhir/DocumentReference", json=document_resource(patient["id"], loinc=loinc), headers=headers
        )
        assert created.status_code == 201
        patients.append(patient["id"])
    path = f"/fhir/DocumentReference?type={loinc}"
    response, events, _ = await send(server, "GET", path, headers=headers)
    assert response.json()["total"] == 3
    assert sorted(patient_of(event) or "" for event in events) == sorted(patients)
    for event in events:
        [query] = [entity for entity in event["entity"] if "query" in entity]
        assert base64.b64decode(query["query"]).decode() == f"GET {path}"
        assert not [entity for entity in event["entity"] if entity.get("role", {}).get("code") == "4"], (
            "BALP minimal: search results are not listed as data entities"
        )
        assert event["subtype"] == [{"system": RESTFUL, "code": "search-type"}]


async def test_search_with_no_result_records_one_event_with_the_query_and_no_patient(server: Server) -> None:
    path = f"/fhir/DocumentReference?_id=nothing-{unique()}"
    response, events, request_id = await send(server, "GET", path, headers=server.as_doctor())
    assert response.json()["total"] == 0
    [event] = events
    assert summary(event, {request_id: "{request}"})["entities"] == [QUERY_ENTITY, REQUEST_ENTITY]
    assert base64.b64decode(event["entity"][0]["query"]).decode() == f"GET {path}"


async def test_search_naming_a_patient_is_in_that_patients_trail_even_when_it_found_nothing(
    server: Server,
) -> None:
    """BALP patient-query: the patients a search names are concerned by it, whatever it found."""
    patient = f"nobody-{unique()}"
    path = f"/fhir/DocumentReference?patient={patient}"
    response, events, _ = await send(server, "GET", path, headers=server.as_doctor())
    assert response.json()["total"] == 0
    [event] = events
    assert patient_of(event) == patient
    [query] = [entity for entity in event["entity"] if "query" in entity]
    assert base64.b64decode(query["query"]).decode() == f"GET {path}"


async def test_history_spanning_patients_records_one_event_per_patient(
    server: Server, record: Record
) -> None:
    headers = server.as_doctor()
    other = (await server.http.post("/fhir/Patient", json=patient_resource(), headers=headers)).json()["id"]
    since = (datetime.now(UTC) - timedelta(seconds=30)).isoformat(timespec="seconds").replace("+00:00", "Z")
    await server.http.post("/fhir/DocumentReference", json=document_resource(other), headers=headers)
    response, events, _ = await send(
        server, "GET", f"/fhir/DocumentReference/_history?_since={since}&_count=1000", headers=headers
    )
    assert response.status_code == 200
    assert {record.patient, other} <= {patient_of(event) for event in events}
    assert all(event["subtype"] == [{"system": RESTFUL, "code": "history-type"}] for event in events)


async def test_request_id_entity_names_the_client_header_or_the_generated_one(server: Server) -> None:
    _, [sent], request_id = await send(server, "GET", "/fhir/metadata", headers={})
    [entity] = [entity for entity in sent["entity"] if entity["type"]["code"] == "XrequestId"]
    assert entity == {
        "what": {"identifier": {"value": request_id}},
        "type": {"system": BALP_ENTITY, "code": "XrequestId", "display": "XrequestId"},
    }
    response = await server.http.get(f"/fhir/Patient/unknown-{unique()}", headers=server.as_doctor())
    generated = response.headers["X-Request-Id"]
    assert generated
    assert len(await events_of(server, generated)) == 1


def consent_resource(patient: str, *, decision: str, practitioner: str) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": CONSENT_SCOPE, "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient}"},
        "policyRule": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]
        },
        "provision": {
            "type": decision,
            "actor": [
                {
                    "role": {"coding": [{"system": PARTICIPATION, "code": "IRCP"}]},
                    "reference": {"reference": f"Practitioner/{practitioner}"},
                }
            ],
        },
    }


def patient_headers(server: Server, patient: str) -> dict[str, str]:
    token = server.token(
        scopes=["patient/*.cruds"], sub=f"patient-{patient}", fhir_user=f"Patient/{patient}", patient=patient
    )
    return server.headers(token)


@pytest.mark.parametrize(("decision", "status"), [("permit", 200), ("deny", 404)])
async def test_consent_entity_names_the_consent_that_decided(
    server: Server, record: Record, decision: str, status: int
) -> None:
    practitioner = f"dr-{unique()}"
    created = await server.http.post(
        "/fhir/Consent",
        json=consent_resource(record.patient, decision=decision, practitioner=practitioner),
        headers=patient_headers(server, record.patient),
    )
    assert created.status_code == 201, created.text
    consent = f"Consent/{created.json()['id']}"
    response, [event], _ = await send(
        server,
        "GET",
        f"/fhir/DocumentReference/{record.document}",
        headers=server.as_doctor(practitioner=practitioner),
    )
    assert response.status_code == status
    assert event["outcome"] == ("0" if status == 200 else "4")
    [entity] = [entity for entity in event["entity"] if entity["type"]["code"] == "Consent"]
    assert entity["what"] == {"reference": consent}
    assert entity["type"] == {
        "system": "http://hl7.org/fhir/resource-types",
        "code": "Consent",
        "display": "Consent",
    }
    assert {"type": "decision", "valueString": decision} in entity["detail"]
    assert patient_of(event) == record.patient, "the patient is informed of refused accesses too"


async def test_transaction_records_one_event_per_entry_and_one_for_the_bundle(server: Server) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:6d3c1f0e-8a52-4c1b-9d0e-2f4b7a1c9e01",
                "resource": patient_resource(),
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": document_resource("placeholder")
                | {"subject": {"reference": "urn:uuid:6d3c1f0e-8a52-4c1b-9d0e-2f4b7a1c9e01"}},
                "request": {"method": "POST", "url": "DocumentReference"},
            },
        ],
    }
    response, events, request_id = await send(
        server, "POST", "/fhir", headers=server.as_doctor(), body=bundle
    )
    assert response.status_code == 200, response.text
    locations = [entry["response"]["location"] for entry in response.json()["entry"]]
    patient = locations[0].split("/")[-3]
    document = locations[1].split("/")[-3]
    names = {patient: "{patient}", document: "{document}", request_id: "{request}"}
    shapes = sorted((summary(event, names) for event in events), key=repr)
    assert shapes == sorted(
        [
            {
                "type": ("http://terminology.hl7.org/CodeSystem/audit-event-type", "rest"),
                "subtype": [(RESTFUL, "create"), (RESTFUL, "transaction")],
                "action": "C",
                "outcome": "0",
                "agents": WRITE_AGENTS,
                "entities": [PATIENT_ENTITY, data(reference), REQUEST_ENTITY],
            }
            for reference in sorted(
                ["Patient/{patient}/_history/1", "DocumentReference/{document}/_history/1"]
            )
        ]
        + [
            {
                "type": ("http://terminology.hl7.org/CodeSystem/audit-event-type", "rest"),
                "subtype": [(RESTFUL, "transaction")],
                "action": "E",
                "outcome": "0",
                "agents": WRITE_AGENTS,
                "entities": [
                    PATIENT_ENTITY,
                    data("Patient/{patient}"),
                    data("DocumentReference/{document}"),
                    BUNDLE_ENTITY,
                    REQUEST_ENTITY,
                ],
            }
        ],
        key=repr,
    )
    for event in events:
        check_common(event, outcome="0")


async def test_failed_transaction_writes_nothing_and_records_its_failure(server: Server) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": patient_resource(), "request": {"method": "POST", "url": "Patient"}},
            {
                "resource": {"resourceType": "DocumentReference", "status": "bogus"},
                "request": {"method": "POST", "url": "DocumentReference"},
            },
        ],
    }
    response, events, _ = await send(server, "POST", "/fhir", headers=server.as_doctor(), body=bundle)
    assert 400 <= response.status_code < 500
    assert events, "a refused transaction is audited"
    assert all(event["outcome"] == "4" for event in events)
    assert any(event["subtype"] == [{"system": RESTFUL, "code": "transaction"}] for event in events)
    assert not any(event["outcome"] == "0" for event in events), "no entry is recorded as done"


async def test_break_the_glass_read_is_flagged_three_ways(server: Server, record: Record) -> None:
    practitioner = f"dr-btg-{unique()}"
    created = await server.http.post(
        "/fhir/Consent",
        json=consent_resource(record.patient, decision="deny", practitioner=practitioner),
        headers=patient_headers(server, record.patient),
    )
    assert created.status_code == 201, created.text
    iua = {
        "subject_name": "Dr Urgence",
        "subject_role": [
            {
                "system": "https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante",
                "code": "10",
            }
        ],
        "purpose_of_use": [{"system": ACT_REASON, "code": "BTG"}],
    }
    token = server.token(
        scopes=["user/DocumentReference.rs"],
        sub=practitioner,
        fhir_user=f"Practitioner/{practitioner}",
        iua=iua,
    )
    response, [event], _ = await send(
        server, "GET", f"/fhir/DocumentReference/{record.document}", headers=server.headers(token)
    )
    assert response.status_code == 200
    btg = {"system": ACT_REASON, "code": "BTG", "display": "break the glass"}
    assert btg in event["meta"]["security"]
    assert [concept["coding"][0]["code"] for concept in event["purposeOfEvent"]] == ["BTG"]
    assert event["agent"][0]["purposeOfUse"][0]["coding"][0]["code"] == "BTG"
    [consent] = [entity for entity in event["entity"] if entity["type"]["code"] == "Consent"]
    assert consent["what"]["reference"] == f"Consent/{created.json()['id']}"
