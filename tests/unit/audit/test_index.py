"""AuditEvent index values by element walks (audit/index.py) equal the FHIRPath extraction.

Every AuditEvent the BALP builders can produce (each interaction, each kind of caller, outcomes,
patients, refused patients, resources, queries, consent decisions, MHD transactions, bundle entries,
break-the-glass) is indexed both ways, with the id and meta the sink adds: the `idx` must be equal,
so every AuditEvent search (patient, date, agent, entity, type, subtype, action, outcome, _security...)
finds the same events as before.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import pytest

from fhir_server.audit.balp import InteractionFacts, build_audit_events
from fhir_server.audit.index import AuditIndexer
from fhir_server.auth.principal import Coding, Principal
from fhir_server.auth.scopes import parse_scopes
from fhir_server.consent.model import Decision
from fhir_server.fhir.interaction import Interaction
from fhir_server.search.registry import SearchParameter, SearchRegistry

SERVER = "https://fhir.example.org/fhir"
RECORDED = datetime(2025, 3, 4, 10, 11, 12, 345000, tzinfo=UTC)
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
DOCTOR = Principal(
    subject="8100000001",
    client_id="ehr-app",
    scopes=parse_scopes("user/*.cruds"),
    issuer="https://idp.example.org",
    token_id="jti-123",
    fhir_user="Practitioner/dr-house",
    name="Dr Gregory House",
    roles=(
        Coding("https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante", "10"),
    ),
    organization="Princeton Plainsboro",
    organization_id="urn:oid:1.2.250.1.71.4.2.2.123",
    purpose_of_use=(Coding(ACT_REASON, "TREAT"),),
    national_provider_identifier="810000000001",
    network_address="10.0.0.7",
)
BTG_DOCTOR = Principal(
    subject="8100000002",
    client_id="ehr-app",
    scopes=parse_scopes("user/*.cruds"),
    fhir_user="Practitioner/dr-who",
    purpose_of_use=(Coding(ACT_REASON, "BTG"),),
)
PATIENT_USER = Principal(
    subject="pat-sub",
    client_id="patient-portal",
    scopes=parse_scopes("patient/*.rs"),
    fhir_user="Patient/p1",
    patient="p1",
)
REGISTRY = SearchRegistry.load()
INDEXER = AuditIndexer(REGISTRY)

CALLERS = {"doctor": DOCTOR, "btg": BTG_DOCTOR, "patient": PATIENT_USER, "anonymous": None}
VARIANTS: dict[str, dict[str, Any]] = {
    "bare": {},
    "read target": {"resource_type": "DocumentReference", "resource_id": "d1", "version_id": "3"},
    "patients": {"patient_ids": ("p1", "p2"), "resources": ("Binary/b1", "List/l1/_history/2")},
    "refused": {"status": 403, "refused_patient_ids": ("p9",), "outcome_desc": "refused by consent"},
    "failed": {"status": 503},
    "query": {"raw_query": b"GET /fhir/DocumentReference?patient=p1", "patient_ids": ("p1",)},
    "consents": {
        "patient_ids": ("p1",),
        "decisions": (
            Decision.allow("consent", consents=("Consent/c1",), break_the_glass=True),
            Decision.deny("consent", consents=("Consent/c2", "Consent/c1")),
        ),
    },
    "mhd import": {"mhd_transaction": "ITI-65", "patient_ids": ("p1",)},
    "mhd retrieve": {"mhd_transaction": "ITI-68", "resources": ("Binary/b7",)},
    "bundle entry": {"bundle": Interaction.TRANSACTION, "operation": "$validate"},
}


def stored_form(event: dict[str, Any], number: int) -> dict[str, Any]:
    """The resource as the sink indexes it: id and meta assigned."""
    meta = {**(event.get("meta") or {}), "versionId": "1", "lastUpdated": "2025-03-04T10:11:12.345Z"}
    return {"resourceType": "AuditEvent", "id": f"ae-{number}", "meta": meta} | {
        key: value for key, value in event.items() if key not in ("resourceType", "meta")
    }


def all_events() -> list[tuple[str, dict[str, Any]]]:
    events = []
    for interaction, (caller, principal), (variant, values) in itertools.product(
        Interaction, CALLERS.items(), VARIANTS.items()
    ):
        given: dict[str, Any] = {
            "status": 200,
            "principal": principal,
            "client_address": "10.0.0.7",
            "request_id": "req-42",
            "operation": "$export" if interaction is Interaction.OPERATION else None,
        }
        facts = InteractionFacts(
            interaction=interaction, recorded=RECORDED, server=SERVER, **(given | values)
        )
        for event in build_audit_events(facts):
            events.append((f"{interaction.value}/{caller}/{variant}", stored_form(event, len(events))))
    return events


EVENTS = all_events()


def test_the_events_exercise_every_audit_event_search_parameter() -> None:
    indexed = {code.split(":")[0] for _, event in EVENTS for code in REGISTRY.extract(event)}
    assert {
        "patient",
        "date",
        "agent",
        "entity",
        "type",
        "subtype",
        "action",
        "outcome",
        "_security",
    } <= indexed
    assert {"address", "entity-role", "entity-type", "agent-role", "altid", "policy", "source"} <= indexed


def test_direct_index_equals_fhirpath_extraction() -> None:
    assert len(EVENTS) > 500
    mismatches = [name for name, event in EVENTS if INDEXER(event) != REGISTRY.extract(event)]
    assert not mismatches


def test_a_search_parameter_that_is_not_a_path_is_refused() -> None:
    computed = SearchParameter(
        code="requested",
        type="token",
        base=("AuditEvent",),
        expression="AuditEvent.agent.where(requestor = true).who",
        targets=(),
        url="http://example.org/SearchParameter/requested",
    )
    with pytest.raises(ValueError, match="requested"):
        AuditIndexer(SearchRegistry([*REGISTRY.all_parameters(), computed]))
