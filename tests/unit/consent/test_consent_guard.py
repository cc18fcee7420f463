"""ConsentGuard: which patients are visible, and its filter and re-check on chosen documents.

Covers docs/architecture.md I4 (filter in the query, post-check), docs/consent.md (default policy for
patients without consent,
dataPeriod on the document date else context.period, history versions) and the AccessGuard seam of
storage/guard.py.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from consent_builders import (
    A07,
    CONF,
    consent,
    deny,
    document,
    document_reference,
    patient_user,
    permit,
    professional,
    request,
    system_client,
)
from mongo_matcher import matches

from fhir_server.consent import ConsentGuard, ConsentPolicy, Decision
from fhir_server.fhir.interaction import Interaction
from fhir_server.record.documents import StoredResource
from fhir_server.storage.guard import AccessGuard

DENY_BY_DEFAULT = ConsentPolicy("deny")
PERMIT_BY_DEFAULT = ConsentPolicy("permit")
DR_A = professional()


def day(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def visible(guard: AccessGuard, doc: dict[str, Any]) -> bool:
    """The filter's answer, after checking that the re-check agrees with it."""
    query = guard.query_filter("DocumentReference")
    in_query = query is not None and matches(doc, query)
    assert guard.decide(StoredResource.from_document("DocumentReference", doc)).permit is in_query
    return in_query


P1_DOC = document(document_reference("d1", patient="p1"))
P2_DOC = document(document_reference("d2", patient="p2"))


@pytest.mark.parametrize(
    ("loaded", "all_patients", "policy", "expected"),
    [
        ({"p1": [consent("c1", permit())]}, False, PERMIT_BY_DEFAULT, (True, False)),
        ({"p1": [consent("c1", permit())]}, True, PERMIT_BY_DEFAULT, (True, True)),
        ({"p1": [consent("c1", permit())]}, True, DENY_BY_DEFAULT, (True, False)),
        ({"p1": [consent("c1", deny())], "p2": []}, False, PERMIT_BY_DEFAULT, (False, True)),
        ({}, True, PERMIT_BY_DEFAULT, (True, True)),
        ({}, False, PERMIT_BY_DEFAULT, (False, False)),
    ],
)
def test_patients_absent_from_the_map_are_invisible_unless_all_patients_were_loaded(
    loaded: dict[str, list[dict[str, Any]]],
    all_patients: bool,
    policy: ConsentPolicy,
    expected: tuple[bool, bool],
) -> None:
    guard = ConsentGuard(
        request(DR_A, Interaction.SEARCH_TYPE), loaded, policy=policy, all_patients=all_patients
    )
    assert (visible(guard, P1_DOC), visible(guard, P2_DOC)) == expected


def test_a_patient_not_loaded_is_named_in_the_decision() -> None:
    guard = ConsentGuard(request(DR_A), {}, policy=PERMIT_BY_DEFAULT, all_patients=False)
    assert guard.decide(StoredResource.from_document("DocumentReference", P1_DOC)) == Decision.deny(
        "patient-not-loaded"
    )


DATED = {"start": "2024-01-01", "end": "2024-01-31"}
JANUARY = [{"lo": day("2024-01-10"), "hi": day("2024-01-10")}]
JUNE = [{"lo": day("2024-06-10"), "hi": day("2024-06-10")}]


@pytest.mark.parametrize(
    ("index", "expected"),
    [
        ({"date": JANUARY}, True),
        ({"date": JUNE}, False),
        ({"date": JUNE, "period": JANUARY}, False),
        ({"period": JANUARY}, True),
        ({"date": [], "period": JANUARY}, True),
        ({}, False),
    ],
)
def test_data_period_reads_the_date_else_the_context_period(index: dict[str, Any], expected: bool) -> None:
    guard = ConsentGuard(
        request(DR_A, Interaction.SEARCH_TYPE),
        {"p1": [consent("c1", permit(dataPeriod=DATED))]},
        policy=DENY_BY_DEFAULT,
        all_patients=False,
    )
    assert visible(guard, document(document_reference(), index=index)) is expected


@pytest.mark.parametrize("history", [False, True])
def test_data_instance_covers_current_and_history_versions(history: bool) -> None:
    instance = [{"meaning": "instance", "reference": {"reference": "DocumentReference/d1"}}]
    guard = ConsentGuard(
        request(DR_A, Interaction.HISTORY_INSTANCE),
        {"p1": [consent("c1", deny(provision=[permit(data=instance)]))]},
        policy=DENY_BY_DEFAULT,
        all_patients=False,
    )
    assert visible(guard, document(document_reference("d1"), version=3, history=history)) is True
    assert visible(guard, document(document_reference("d2"), version=3, history=history)) is False


def test_filter_is_none_when_nothing_can_be_visible() -> None:
    guard = ConsentGuard(
        request(DR_A, Interaction.TRANSACTION), {}, policy=PERMIT_BY_DEFAULT, all_patients=True
    )
    assert guard.query_filter("DocumentReference") is None


def test_identity_management_filter_matches_every_patient() -> None:
    guard = ConsentGuard(
        request(system_client(scope="system/Patient.rs"), Interaction.SEARCH_TYPE, "Patient"),
        {},
        policy=DENY_BY_DEFAULT,
        all_patients=False,
    )
    assert guard.query_filter("Patient") == {}


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (P1_DOC, True),
        (P2_DOC, False),
        (document(document_reference(labels=((A07, "INVISIBLE_PATIENT"),))), False),
        (document(document_reference(labels=((A07, "MASQUE_PS"),))), True),
    ],
)
def test_patient_filter_is_one_key_for_the_own_compartment_without_invisible_documents(
    doc: dict[str, Any], expected: bool
) -> None:
    guard = ConsentGuard(
        request(patient_user("p1"), Interaction.SEARCH_TYPE), {}, policy=DENY_BY_DEFAULT, all_patients=False
    )
    assert guard.query_filter("DocumentReference") == {"vis": "patient:p1"}
    assert visible(guard, doc) is expected


def test_patients_with_the_same_rules_share_one_clause() -> None:
    normal = permit(securityLabel=[{"system": CONF, "code": "N"}])
    loaded = {p: [consent(f"c-{p}", deny(provision=[normal]), patient=p)] for p in ("p1", "p2", "p3")}
    guard = ConsentGuard(
        request(DR_A, Interaction.SEARCH_TYPE), loaded, policy=DENY_BY_DEFAULT, all_patients=True
    )
    assert repr(guard.query_filter("DocumentReference")).count(f"{CONF}|R") == 1
