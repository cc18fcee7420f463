"""The patient's view of her trail (audit/views.py) and the events a patient's own request records
(audit/balp.py): she never learns a resource she may not read, nor another record's existence."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from fhir_server.audit.balp import InteractionFacts, build_audit_events
from fhir_server.audit.views import REDACTED_CODING, patient_view
from fhir_server.auth.principal import Principal
from fhir_server.auth.scopes import parse_scopes
from fhir_server.fhir.interaction import Interaction
from fhir_server.storage.documents import compartment

NOW = datetime(2026, 1, 1, tzinfo=UTC)
PATIENT = Principal(
    subject="citizen",
    client_id="app",
    scopes=parse_scopes("patient/*.rs"),
    fhir_user="Patient/a",
    patient="a",
)
DOCTOR = Principal(
    subject="dr", client_id="ehr", scopes=parse_scopes("user/*.rs"), fhir_user="Practitioner/dr"
)


def events(principal: Principal, **values: Any) -> list[dict[str, Any]]:
    facts = InteractionFacts(
        interaction=values.pop("interaction", Interaction.READ),
        status=values.pop("status", 200),
        recorded=NOW,
        server="https://fhir.example",
        principal=principal,
        **values,
    )
    return build_audit_events(facts)


def view(
    found: list[dict[str, Any]],
    *,
    readable: set[str],
    hidden: set[str],
    foreign: frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    async def can_read(resource_type: str, ids: Sequence[str]) -> set[str]:
        return {item for item in ids if f"{resource_type}/{item}" in readable}

    async def invisible() -> set[str]:
        return hidden

    async def names_another(text: str) -> bool:
        return text in foreign

    built = asyncio.run(
        patient_view(
            found,
            "a",
            types=("DocumentReference", "Patient"),
            readable=can_read,
            hidden=invisible,
            foreign=names_another,
        )
    )
    return [built.show(event) for event in found]


def test_an_event_about_her_record_leaves_out_an_invisible_document_and_says_so() -> None:
    [event] = events(
        DOCTOR, resource_type="DocumentReference", resource_id="inv", patient_ids=("a",), version_id="1"
    )
    [shown] = view([event], readable={"Patient/a"}, hidden={"inv"})
    assert "inv" not in str(shown)
    assert REDACTED_CODING in shown["meta"]["security"]
    assert "inv" in str(event), "the stored event is unchanged"


def test_a_query_naming_an_invisible_document_is_left_out() -> None:
    raw = b"GET /fhir/DocumentReference?_id=inv&patient=a"
    [event] = events(DOCTOR, interaction=Interaction.SEARCH_TYPE, patient_ids=("a",), raw_query=raw)
    [shown] = view([event], readable={"Patient/a"}, hidden={"inv"})
    assert not [entity for entity in shown["entity"] if "query" in entity]
    assert base64.b64encode(raw).decode() in str(event)


def test_a_query_naming_another_patient_is_left_out_of_her_copy() -> None:
    """A professional's search by two INS returned her and another patient: her copy of the event
    never carries the other patient's identifier."""
    raw = (
        b"GET /fhir/Patient?identifier=urn:oid:1.2.250.1.213.1.4.10|b-ins,urn:oid:1.2.250.1.213.1.4.10|a-ins"
    )
    [event] = events(DOCTOR, interaction=Interaction.SEARCH_TYPE, patient_ids=("a",), raw_query=raw)
    [shown] = view([event], readable={"Patient/a"}, hidden=set(), foreign=frozenset({raw.decode()}))
    assert not [entity for entity in shown["entity"] if "query" in entity]
    assert REDACTED_CODING in shown["meta"]["security"]
    [kept] = view([event], readable={"Patient/a"}, hidden=set())
    assert kept == event, "a query naming only her is served whole"


def test_an_event_naming_only_what_she_may_read_is_served_whole() -> None:
    [event] = events(DOCTOR, resource_type="DocumentReference", resource_id="d1", patient_ids=("a",))
    assert view([event], readable={"Patient/a", "DocumentReference/d1"}, hidden=set()) == [event]


def test_her_refused_read_of_another_record_looks_like_a_read_of_an_unknown_id() -> None:
    hidden = events(
        PATIENT, status=404, resource_type="DocumentReference", resource_id="x", refused_patient_ids=("b",)
    )
    unknown = events(PATIENT, status=404, resource_type="DocumentReference", resource_id="x")
    mine = [event for event in hidden if "a" in compartment(event)]
    assert mine == unknown, "her own trail is the same whether the id exists elsewhere or not"
    [theirs] = [event for event in hidden if "b" in compartment(event)]
    assert "a" not in compartment(theirs), "the other patient's event is not in her compartment"
    assert view(mine, readable=set(), hidden={"x"}) == mine, "her own requests are served whole"


def test_her_refused_read_of_her_own_invisible_document_names_no_patient() -> None:
    found = events(
        PATIENT, status=404, resource_type="DocumentReference", resource_id="inv", refused_patient_ids=("a",)
    )
    unknown = events(PATIENT, status=404, resource_type="DocumentReference", resource_id="inv")
    assert found == unknown
