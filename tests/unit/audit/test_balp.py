"""BALP AuditEvent builders.

Covers STANDARDS §3.1 (RESTful profiles: type, subtype, action, agents and their roles, entity
slices, PatientQuery split, sev-1), §3.2 (OAuth token enrichment), §3.3 (Consent entities), §5.1
(MHD audit subtypes), docs/audit.md (outcomes of refused and failed interactions, BTG review).
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent

from fhir_server.audit.balp import InteractionFacts, build_audit_events, outcome_of
from fhir_server.auth.principal import Coding, Principal
from fhir_server.auth.scopes import parse_scopes
from fhir_server.consent.model import Decision
from fhir_server.fhir.interaction import Interaction

SERVER = "https://fhir.example.org/fhir"
RECORDED = datetime(2025, 3, 4, 10, 11, 12, 345000, tzinfo=UTC)
DCM = "http://dicom.nema.org/resources/ontology/DCM"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
DOCTOR_ROLE = Coding(
    "https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante", "10"
)

DOCTOR = Principal(
    subject="8100000001",
    client_id="ehr-app",
    scopes=parse_scopes("user/*.cruds"),
    issuer="https://idp.example.org",
    token_id="jti-123",
    fhir_user="Practitioner/dr-house",
    name="Dr Gregory House",
    roles=(DOCTOR_ROLE,),
    organization="Princeton Plainsboro",
    organization_id="urn:oid:1.2.250.1.71.4.2.2.123",
    purpose_of_use=(Coding(ACT_REASON, "TREAT"),),
    national_provider_identifier="810000000001",
    network_address="10.0.0.7",
)
BTG_DOCTOR = Principal(
    subject=DOCTOR.subject,
    client_id=DOCTOR.client_id,
    scopes=DOCTOR.scopes,
    issuer=DOCTOR.issuer,
    fhir_user=DOCTOR.fhir_user,
    purpose_of_use=(Coding(ACT_REASON, "BTG"),),
)
PATIENT_USER = Principal(
    subject="pat-sub",
    client_id="patient-portal",
    scopes=parse_scopes("patient/*.rs"),
    fhir_user="Patient/p1",
    patient="p1",
)


def facts(interaction: Interaction, **overrides: Any) -> InteractionFacts:
    values: dict[str, Any] = {
        "interaction": interaction,
        "status": 200,
        "recorded": RECORDED,
        "server": SERVER,
        "principal": DOCTOR,
        "client_address": "10.0.0.7",
        "request_id": "req-42",
    }
    values.update(overrides)
    return InteractionFacts(**values)


def one(event_facts: InteractionFacts) -> dict[str, Any]:
    events = build_audit_events(event_facts)
    assert len(events) == 1
    return events[0]


def agent_with(event: dict[str, Any], system: str, code: str) -> dict[str, Any]:
    matches = [
        agent
        for agent in event["agent"]
        if any(c.get("system") == system and c.get("code") == code for c in agent["type"]["coding"])
    ]
    assert len(matches) == 1, f"one agent typed {system}#{code} expected in {event['agent']}"
    return matches[0]


def entities_with_role(event: dict[str, Any], code: str) -> list[dict[str, Any]]:
    return [e for e in event.get("entity", []) if e.get("role", {}).get("code") == code]


def user_agent(event: dict[str, Any]) -> dict[str, Any]:
    users = [agent for agent in event["agent"] if agent["requestor"]]
    assert len(users) == 1
    return users[0]


def client_agent(event: dict[str, Any]) -> dict[str, Any]:
    return agent_with(event, DCM, "110150")


def server_agent(event: dict[str, Any]) -> dict[str, Any]:
    servers = [agent for agent in event["agent"] if agent.get("network", {}).get("type") == "5"]
    assert len(servers) == 1
    return servers[0]


# -- the interaction table (STANDARDS §3.1) ---------------------------------------------------------

INTERACTION_TABLE = [
    # interaction, action, client role, server role (system, code), user type
    (Interaction.CREATE, "C", "110153", (DCM, "110152"), "AUT"),
    (Interaction.READ, "R", "110152", (DCM, "110153"), "IRCP"),
    (Interaction.VREAD, "R", "110152", (DCM, "110153"), "IRCP"),
    (Interaction.UPDATE, "U", "110153", (DCM, "110152"), "AUT"),
    (Interaction.PATCH, "U", "110153", (DCM, "110152"), "AUT"),
    (
        Interaction.DELETE,
        "D",
        "110150",
        ("http://terminology.hl7.org/CodeSystem/provenance-participant-type", "custodian"),
        "AUT",
    ),
    (Interaction.SEARCH_TYPE, "E", "110153", (DCM, "110152"), "IRCP"),
    (Interaction.SEARCH_SYSTEM, "E", "110153", (DCM, "110152"), "IRCP"),
    (Interaction.HISTORY_INSTANCE, "E", "110153", (DCM, "110152"), "IRCP"),
    (Interaction.HISTORY_TYPE, "E", "110153", (DCM, "110152"), "IRCP"),
    (Interaction.HISTORY_SYSTEM, "E", "110153", (DCM, "110152"), "IRCP"),
    (Interaction.TRANSACTION, "E", "110153", (DCM, "110152"), "AUT"),
    (Interaction.BATCH, "E", "110153", (DCM, "110152"), "AUT"),
    (Interaction.OPERATION, "E", "110153", (DCM, "110152"), "IRCP"),
    (Interaction.CAPABILITIES, "R", "110152", (DCM, "110153"), "IRCP"),
]


@pytest.mark.parametrize(
    ("interaction", "action", "client_role", "server_role", "user_type"), INTERACTION_TABLE
)
def test_each_interaction_has_its_balp_type_subtype_action_and_agent_roles(
    interaction: Interaction, action: str, client_role: str, server_role: tuple[str, str], user_type: str
) -> None:
    event = one(facts(interaction, resource_type="Patient", patient_ids=("p1",)))

    assert event["resourceType"] == "AuditEvent"
    assert "id" not in event
    assert event["type"] == {
        "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
        "code": "rest",
        "display": "Restful Operation",
    }
    assert event["subtype"][0] == {"system": RESTFUL, "code": interaction.value}
    assert event["action"] == action
    assert event["recorded"] == "2025-03-04T10:11:12.345Z"
    client = client_agent(event)
    assert [c["code"] for c in client["type"]["coding"]] == list(dict.fromkeys([client_role, "110150"]))
    assert client["requestor"] is False
    assert [(c["system"], c["code"]) for c in server_agent(event)["type"]["coding"]] == [server_role]
    user_types = user_agent(event)["type"]["coding"]
    assert (PARTICIPATION, user_type) in [(c["system"], c["code"]) for c in user_types]
    assert any(c["code"] == "UserOauthAgent" for c in user_types)


# -- outcomes ------------------------------------------------------------------------------------------

OUTCOMES = [
    (200, "0", None, None),
    (201, "0", None, None),
    (304, "0", None, None),
    (401, "4", "Missing bearer token", "Missing bearer token"),
    (403, "4", "No granted scope permits read on Patient", "No granted scope permits read on Patient"),
    (404, "4", None, "HTTP 404"),
    (409, "4", "Version conflict", "Version conflict"),
    (412, "4", "If-Match does not match", "If-Match does not match"),
    (422, "4", "Patient.gender: invalid code", "Patient.gender: invalid code"),
    (500, "8", "Internal server error", "Internal server error"),
    (503, "8", None, "HTTP 503"),
]


@pytest.mark.parametrize(("status", "outcome", "desc", "expected_desc"), OUTCOMES)
@pytest.mark.parametrize("interaction", [row[0] for row in INTERACTION_TABLE])
def test_outcome_and_outcome_desc_follow_the_http_status(
    interaction: Interaction, status: int, outcome: str, desc: str | None, expected_desc: str | None
) -> None:
    event = one(facts(interaction, status=status, outcome_desc=desc, resource_type="Patient"))

    assert event["outcome"] == outcome
    assert event.get("outcomeDesc") == expected_desc


@pytest.mark.parametrize(
    ("status", "outcome"), [(100, "0"), (399, "0"), (400, "4"), (499, "4"), (500, "8"), (599, "8")]
)
def test_outcome_code_boundaries(status: int, outcome: str) -> None:
    assert outcome_of(status) == outcome


# -- agents ------------------------------------------------------------------------------------------


def test_user_agent_carries_the_token_identity_role_purpose_and_jti() -> None:
    user = user_agent(one(facts(Interaction.READ, resource_type="Patient", resource_id="p1")))

    assert user["who"] == {
        "reference": "Practitioner/dr-house",
        "identifier": {"system": "https://idp.example.org", "value": "8100000001"},
        "display": "Dr Gregory House",
    }
    assert user["name"] == "Dr Gregory House"
    assert user["altId"] == "810000000001"
    assert user["role"] == [{"coding": [DOCTOR_ROLE.to_fhir()]}]
    assert user["purposeOfUse"] == [{"coding": [{"system": ACT_REASON, "code": "TREAT"}]}]
    assert user["policy"] == ["urn:ietf:params:oauth:jti:jti-123"]
    assert "network" not in user


def test_client_agent_is_the_client_id_at_its_ip_address() -> None:
    client = client_agent(one(facts(Interaction.READ, resource_type="Patient", resource_id="p1")))

    assert client["who"] == {"identifier": {"value": "ehr-app"}}
    assert client["network"] == {"address": "10.0.0.7", "type": "2"}


def test_server_agent_and_source_observer_are_this_server() -> None:
    event = one(facts(Interaction.READ, resource_type="Patient", resource_id="p1"))
    reference = {"identifier": {"system": "urn:ietf:rfc:3986", "value": SERVER}, "display": SERVER}

    assert server_agent(event)["who"] == reference
    assert server_agent(event)["network"] == {"address": SERVER, "type": "5"}
    assert server_agent(event)["requestor"] is False
    assert event["source"]["observer"] == reference
    assert event["source"]["type"][0]["code"] == "4"


def test_user_organization_agent_comes_from_the_iua_subject_organization() -> None:
    event = one(facts(Interaction.READ, resource_type="Patient", resource_id="p1"))

    organization = agent_with(event, "http://terminology.hl7.org/CodeSystem/v3-RoleClass", "PROV")
    assert organization["who"] == {
        "identifier": {"value": "urn:oid:1.2.250.1.71.4.2.2.123"},
        "display": "Princeton Plainsboro",
    }
    assert organization["requestor"] is False


def test_minimal_token_gives_a_user_agent_without_optional_fields_and_no_organization() -> None:
    event = one(facts(Interaction.READ, principal=PATIENT_USER, resource_type="Patient", resource_id="p1"))

    user = user_agent(event)
    assert user["who"] == {"reference": "Patient/p1", "identifier": {"value": "pat-sub"}}
    assert {"role", "policy", "purposeOfUse", "name", "altId"}.isdisjoint(user)
    assert len(event["agent"]) == 3


@pytest.mark.parametrize(("address", "who"), [("203.0.113.9", "203.0.113.9"), (None, "unknown client")])
def test_refused_before_authentication_names_only_the_client_address_and_the_server(
    address: str | None, who: str
) -> None:
    event = one(
        facts(Interaction.READ, principal=None, client_address=address, status=401, resource_type="Patient")
    )

    assert event["outcome"] == "4"
    assert len(event["agent"]) == 2
    client = client_agent(event)
    assert client["who"] == {"display": who}
    assert client["requestor"] is True
    assert client["type"]["coding"] == [{"system": DCM, "code": "110150", "display": "Application"}]
    assert client.get("network") == ({"address": address, "type": "2"} if address else None)
    assert server_agent(event)["requestor"] is False


# -- entities ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("interaction", "version", "expected"),
    [
        (Interaction.READ, None, "DocumentReference/d1"),
        (Interaction.VREAD, "3", "DocumentReference/d1/_history/3"),
        (Interaction.CREATE, "1", "DocumentReference/d1/_history/1"),
        (Interaction.UPDATE, "4", "DocumentReference/d1/_history/4"),
        (Interaction.PATCH, "5", "DocumentReference/d1/_history/5"),
        (Interaction.DELETE, "6", "DocumentReference/d1/_history/6"),
    ],
)
def test_data_entity_names_the_resource_and_its_version(
    interaction: Interaction, version: str | None, expected: str
) -> None:
    event = one(
        facts(
            interaction,
            resource_type="DocumentReference",
            resource_id="d1",
            version_id=version,
            resources=("DocumentReference/d1", "Binary/b1"),
            patient_ids=("p1",),
        )
    )

    data = entities_with_role(event, "4")
    assert [entity["what"]["reference"] for entity in data] == [expected, "Binary/b1"]
    assert all(entity["type"]["code"] == "2" for entity in data)
    patient = entities_with_role(event, "1")
    assert patient == [
        {
            "what": {"reference": "Patient/p1"},
            "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
            "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
        }
    ]


def test_failed_create_has_no_data_entity() -> None:
    event = one(facts(Interaction.CREATE, status=422, resource_type="Patient"))

    assert entities_with_role(event, "4") == []


@pytest.mark.parametrize(
    "interaction",
    [
        Interaction.SEARCH_TYPE,
        Interaction.SEARCH_SYSTEM,
        Interaction.HISTORY_INSTANCE,
        Interaction.HISTORY_TYPE,
    ],
)
def test_search_and_history_record_the_raw_request_as_query_and_not_their_results(
    interaction: Interaction,
) -> None:
    raw = b"GET /fhir/DocumentReference?patient=p1&status=current&_count=\xff"
    event = one(
        facts(
            interaction,
            resource_type="DocumentReference",
            resource_id="d1" if interaction is Interaction.HISTORY_INSTANCE else None,
            resources=("DocumentReference/d1", "DocumentReference/d2"),
            patient_ids=("p1",),
            raw_query=raw,
        )
    )

    query = entities_with_role(event, "24")
    assert query == [
        {
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": OBJECT_ROLE, "code": "24", "display": "Query"},
            "query": base64.b64encode(raw).decode(),
        }
    ]
    assert base64.b64decode(query[0]["query"]) == raw
    assert entities_with_role(event, "4") == []
    assert not any("name" in entity and "query" in entity for entity in event["entity"])  # sev-1


def test_request_id_entity_carries_the_x_request_id() -> None:
    event = one(facts(Interaction.READ, resource_type="Patient", resource_id="p1", request_id="abc-123"))

    transaction = [e for e in event["entity"] if e["type"]["code"] == "XrequestId"]
    assert transaction == [
        {
            "what": {"identifier": {"value": "abc-123"}},
            "type": {
                "system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType",
                "code": "XrequestId",
                "display": "XrequestId",
            },
        }
    ]


def test_consents_that_decided_are_entities_with_the_decision() -> None:
    decisions = (
        Decision.allow("consent-permit", consents=("Consent/c1", "Consent/c2")),
        Decision.deny("consent-deny", consents=("Consent/c2", "Consent/c3")),
        Decision.allow("treating-relationship"),
    )
    event = one(facts(Interaction.READ, resource_type="Patient", resource_id="p1", decisions=decisions))

    consents = [e for e in event["entity"] if e["type"]["code"] == "Consent"]
    assert [
        (e["what"]["reference"], e["detail"][0]["valueString"], e["detail"][1]["valueString"])
        for e in consents
    ] == [
        ("Consent/c1", "permit", "consent-permit"),
        ("Consent/c2", "permit", "consent-permit"),
        ("Consent/c3", "deny", "consent-deny"),
    ]
    assert consents[0]["type"] == {
        "system": "http://hl7.org/fhir/resource-types",
        "code": "Consent",
        "display": "Consent",
    }


# -- per-patient split ---------------------------------------------------------------------------------


def test_search_spanning_several_patients_records_one_event_per_patient_each_with_the_query() -> None:
    raw = b"GET /fhir/DocumentReference?status=current"
    events = build_audit_events(
        facts(
            Interaction.SEARCH_TYPE,
            resource_type="DocumentReference",
            patient_ids=("p2", "p1", "p3", "p1"),
            raw_query=raw,
        )
    )

    assert [entities_with_role(event, "1")[0]["what"]["reference"] for event in events] == [
        "Patient/p2",
        "Patient/p1",
        "Patient/p3",
    ]
    for event in events:
        assert len(entities_with_role(event, "1")) == 1
        assert entities_with_role(event, "24")[0]["query"] == base64.b64encode(raw).decode()


def test_search_with_no_results_records_one_event_with_the_query_and_no_patient() -> None:
    events = build_audit_events(
        facts(
            Interaction.SEARCH_TYPE,
            resource_type="Patient",
            patient_ids=(),
            raw_query=b"GET /fhir/Patient?name=x",
        )
    )

    assert len(events) == 1
    assert entities_with_role(events[0], "1") == []
    assert len(entities_with_role(events[0], "24")) == 1


# -- break the glass -----------------------------------------------------------------------------------

BTG = {"system": ACT_REASON, "code": "BTG", "display": "break the glass"}


@pytest.mark.parametrize(
    ("principal", "decisions"),
    [
        (BTG_DOCTOR, ()),
        (DOCTOR, (Decision.allow("break-the-glass", break_the_glass=True),)),
    ],
)
def test_break_the_glass_is_flagged_on_the_user_the_event_and_its_security_label(
    principal: Principal, decisions: tuple[Decision, ...]
) -> None:
    event = one(
        facts(
            Interaction.READ,
            principal=principal,
            decisions=decisions,
            resource_type="Patient",
            resource_id="p1",
        )
    )

    btg = {"system": ACT_REASON, "code": "BTG"}
    purposes = [coding for concept in user_agent(event)["purposeOfUse"] for coding in concept["coding"]]
    assert [(c["system"], c["code"]) for c in purposes].count((btg["system"], btg["code"])) == 1
    event_purposes = [coding for concept in event["purposeOfEvent"] for coding in concept["coding"]]
    assert (btg["system"], btg["code"]) in [(c["system"], c["code"]) for c in event_purposes]
    assert event["meta"] == {"security": [BTG]}


def test_ordinary_access_has_no_btg_flag() -> None:
    event = one(facts(Interaction.READ, resource_type="Patient", resource_id="p1"))

    assert "meta" not in event
    assert event["purposeOfEvent"] == [{"coding": [{"system": ACT_REASON, "code": "TREAT"}]}]


def test_refused_before_authentication_has_no_purpose_of_event() -> None:
    event = one(facts(Interaction.READ, principal=None, status=401))

    assert "purposeOfEvent" not in event
    assert "meta" not in event


@pytest.mark.parametrize("scope", ["patient/*.rs", "user/*.rs"])
def test_a_patient_users_refused_read_never_names_the_owner_in_her_own_event(scope: str) -> None:
    """docs/audit.md: her own trail is the same whether the target exists or not, whatever her scopes."""
    principal = Principal(
        subject="pat-sub", client_id="portal", scopes=parse_scopes(scope), fhir_user="Patient/p1"
    )
    events = build_audit_events(
        facts(
            Interaction.READ,
            principal=principal,
            status=404,
            resource_type="DocumentReference",
            resource_id="d9",
            refused_patient_ids=("p2",),
        )
    )
    own = [event for event in events if user_agent(event)["who"].get("reference") == "Patient/p1"]
    assert len(own) == 1 and "Patient/p2" not in str(own[0])
    [other] = [event for event in events if event is not own[0]]
    assert entities_with_role(other, "1")[0]["what"]["reference"] == "Patient/p2"
    assert "reference" not in user_agent(other)["who"]


# -- operations, bundles, MHD ------------------------------------------------------------------------


@pytest.mark.parametrize("operation", ["$validate", "$export"])
def test_operation_subtype_names_the_operation(operation: str) -> None:
    event = one(facts(Interaction.OPERATION, operation=operation, resource_type="Patient"))

    assert event["subtype"] == [
        {"system": RESTFUL, "code": "operation"},
        {"code": operation, "display": operation},
    ]
    assert event["action"] == "E"


@pytest.mark.parametrize("bundle", [Interaction.TRANSACTION, Interaction.BATCH])
def test_bundle_entry_event_keeps_its_own_interaction_and_names_the_bundle(bundle: Interaction) -> None:
    event = one(
        facts(Interaction.CREATE, bundle=bundle, resource_type="Patient", resource_id="p9", version_id="1")
    )

    assert event["subtype"] == [
        {"system": RESTFUL, "code": "create"},
        {"system": RESTFUL, "code": bundle.value},
    ]
    assert event["action"] == "C"


@pytest.mark.parametrize(
    ("interaction", "transaction", "display"),
    [
        (Interaction.SEARCH_TYPE, "ITI-67", "Find Document References"),
        (Interaction.SEARCH_TYPE, "ITI-66", "Find Document Lists"),
        (Interaction.READ, "ITI-68", "Retrieve Document"),
        (Interaction.TRANSACTION, "ITI-65", "Provide Document Bundle"),
    ],
)
def test_mhd_transactions_add_their_ihe_event_type_subtype(
    interaction: Interaction, transaction: str, display: str
) -> None:
    event = one(facts(interaction, mhd_transaction=transaction, resource_type="DocumentReference"))

    assert event["subtype"][-1] == {
        "system": "urn:ihe:event-type-code",
        "code": transaction,
        "display": display,
    }


def test_mhd_provide_bundle_at_the_recipient_is_an_import_with_action_create() -> None:
    event = one(facts(Interaction.TRANSACTION, mhd_transaction="ITI-65", status=200))

    assert event["type"] == {"system": DCM, "code": "110107", "display": "Import"}
    assert event["action"] == "C"


def test_mhd_retrieve_document_marks_the_data_entity_as_a_report() -> None:
    event = one(
        facts(
            Interaction.READ,
            mhd_transaction="ITI-68",
            resource_type="Binary",
            resource_id="b1",
            patient_ids=("p1",),
        )
    )

    assert [e["what"]["reference"] for e in entities_with_role(event, "3")] == ["Binary/b1"]
    assert entities_with_role(event, "4") == []


# -- structure ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 401, 403, 404, 409, 412, 422, 500, 503])
@pytest.mark.parametrize("interaction", [row[0] for row in INTERACTION_TABLE])
@pytest.mark.parametrize(
    "principal", [DOCTOR, BTG_DOCTOR, PATIENT_USER, None], ids=["doctor", "btg", "patient", "anon"]
)
def test_every_event_is_a_valid_r4_audit_event(
    interaction: Interaction, status: int, principal: Principal | None
) -> None:
    events = build_audit_events(
        facts(
            interaction,
            status=status,
            principal=principal,
            resource_type="DocumentReference",
            resource_id="d1",
            version_id="2",
            resources=("Binary/b1",),
            patient_ids=("p1", "p2"),
            raw_query=b"GET /fhir/DocumentReference?patient=p1",
            decisions=(Decision.allow("consent-permit", consents=("Consent/c1",)),),
            operation="$validate",
            outcome_desc=None if status < 400 else "refused",
        )
    )

    assert len(events) == 2
    for event in events:
        AuditEvent.model_validate(event)
        assert len(event["agent"]) >= 2
        assert all(
            "who" in agent and "network" in agent
            for agent in event["agent"]
            if not agent["requestor"] and agent["type"]["coding"][0]["system"] == DCM
        )
        assert not any("name" in entity and "query" in entity for entity in event.get("entity", []))


def test_the_builder_is_pure() -> None:
    event_facts = facts(Interaction.SEARCH_TYPE, patient_ids=("p1", "p2"), raw_query=b"GET /fhir/Patient")

    assert build_audit_events(event_facts) == build_audit_events(event_facts)
