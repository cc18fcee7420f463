"""Who writes and reads Consents, Patients and the audit trail, above any consent (consent/writers.py).

Each row is decided twice, by decide() on a stored version and by the guard's query filter on the same
stored document, under the most permissive consent there is (permit everything) and break-the-glass
where the caller is a médecin: a fixed rule must not move whatever the patient's consents say.
"""

from __future__ import annotations

from typing import Any

import pytest
from consent_builders import BTG, consent, deny, document, patient_user, permit, professional, request, stored
from consent_builders import system_client as system
from mongo_matcher import matches

from fhir_server.auth.principal import Principal
from fhir_server.consent import ConsentGuard, ConsentPolicy, Decision, decide, needs_consents
from fhir_server.consent.writers import identity_change
from fhir_server.fhir.interaction import Interaction

POLICIES = {
    "deny": ConsentPolicy("deny", (professional().roles[0],)),
    "permit": ConsentPolicy("permit", (professional().roles[0],)),
}
PERMIT_ALL = [consent("c1", permit())]
INS = "urn:oid:1.2.250.1.213.1.4.10"
PATIENT = {"resourceType": "Patient", "id": "p1", "identifier": [{"system": INS, "value": "1"}]}
CONSENT = consent("c2", permit())
AUDIT = {"resourceType": "AuditEvent", "id": "a1", "entity": [{"what": {"reference": "Patient/p1"}}]}
DOCTOR = professional()
DOCTOR_BTG = professional(purpose=(BTG,))
LAUNCHED_DOCTOR = professional(scope="patient/*.cruds")
"""A professional in a SMART EHR launch: `patient/` scopes, still a professional."""

ALLOW = Decision.allow
DENY = Decision.deny

ROWS: dict[str, tuple[Principal, Interaction, dict[str, Any], Decision]] = {
    # Consent
    "patient records own consent": (patient_user(), Interaction.CREATE, CONSENT, ALLOW("patient-self")),
    "patient revokes own consent": (patient_user(), Interaction.PATCH, CONSENT, ALLOW("patient-self")),
    "patient deletes own consent": (patient_user(), Interaction.DELETE, CONSENT, ALLOW("patient-self")),
    "patient writes no other patient's consent": (
        patient_user("p2"),
        Interaction.UPDATE,
        CONSENT,
        DENY("outside-patient-compartment"),
    ),
    "professional never records a consent": (DOCTOR, Interaction.CREATE, CONSENT, DENY("consent-writers")),
    "professional never updates a consent": (DOCTOR, Interaction.UPDATE, CONSENT, DENY("consent-writers")),
    "professional never patches a consent": (DOCTOR, Interaction.PATCH, CONSENT, DENY("consent-writers")),
    "professional never deletes a consent": (DOCTOR, Interaction.DELETE, CONSENT, DENY("consent-writers")),
    "professional never reads a consent": (DOCTOR, Interaction.READ, CONSENT, DENY("consent-readers")),
    "professional never searches consents": (
        DOCTOR,
        Interaction.SEARCH_TYPE,
        CONSENT,
        DENY("consent-readers"),
    ),
    "break-the-glass never reads a consent": (DOCTOR_BTG, Interaction.READ, CONSENT, DENY("consent-readers")),
    "EHR launch never writes a consent": (
        LAUNCHED_DOCTOR,
        Interaction.CREATE,
        CONSENT,
        DENY("consent-writers"),
    ),
    "system/* never writes a consent": (system(), Interaction.CREATE, CONSENT, DENY("consent-writers")),
    "system/* never patches a consent": (system(), Interaction.PATCH, CONSENT, DENY("consent-writers")),
    "consent-capture service records": (
        system(scope="system/Consent.cruds"),
        Interaction.CREATE,
        CONSENT,
        ALLOW("consent-management"),
    ),
    "consent-capture service revokes": (
        system(scope="system/Consent.u"),
        Interaction.PATCH,
        CONSENT,
        ALLOW("consent-management"),
    ),
    "consent-capture service reads what it manages": (
        system(scope="system/Consent.rs"),
        Interaction.READ,
        CONSENT,
        ALLOW("consent-management"),
    ),
    # Patient
    "professional creates a Patient": (DOCTOR, Interaction.CREATE, PATIENT, ALLOW("identity-create")),
    "professional never updates a Patient": (DOCTOR, Interaction.UPDATE, PATIENT, DENY("identity-writers")),
    "professional never patches a Patient": (DOCTOR, Interaction.PATCH, PATIENT, DENY("identity-writers")),
    "professional never deletes a Patient": (DOCTOR, Interaction.DELETE, PATIENT, DENY("identity-writers")),
    "system/Patient.* updates": (
        system(scope="system/Patient.cruds"),
        Interaction.UPDATE,
        PATIENT,
        ALLOW("identity-management"),
    ),
    "system/Patient.* deletes": (
        system(scope="system/Patient.cruds"),
        Interaction.DELETE,
        PATIENT,
        ALLOW("identity-management"),
    ),
    "system/*.cruds deletes": (system(), Interaction.DELETE, PATIENT, ALLOW("identity-management")),
    "system without a Patient scope does not update": (
        system(scope="system/DocumentReference.cruds"),
        Interaction.UPDATE,
        PATIENT,
        DENY("identity-writers"),
    ),
    "patient updates own demographics": (patient_user(), Interaction.UPDATE, PATIENT, ALLOW("patient-self")),
    "patient never deletes own Patient": (
        patient_user(),
        Interaction.DELETE,
        PATIENT,
        DENY("identity-writers"),
    ),
    # AuditEvent
    "patient reads own trail": (patient_user(), Interaction.SEARCH_TYPE, AUDIT, ALLOW("patient-self")),
    "patient reads no other trail": (
        patient_user("p2"),
        Interaction.READ,
        AUDIT,
        DENY("outside-patient-compartment"),
    ),
    "audit reviewer reads": (
        system(scope="system/AuditEvent.rs"),
        Interaction.SEARCH_TYPE,
        AUDIT,
        ALLOW("audit-review"),
    ),
    "system/* never reads the trail": (system(), Interaction.READ, AUDIT, DENY("audit-readers")),
    "professional never reads the trail": (DOCTOR, Interaction.SEARCH_TYPE, AUDIT, DENY("audit-readers")),
    "break-the-glass never reads the trail": (DOCTOR_BTG, Interaction.READ, AUDIT, DENY("audit-readers")),
    "EHR launch never reads the trail": (LAUNCHED_DOCTOR, Interaction.READ, AUDIT, DENY("audit-readers")),
}


@pytest.mark.parametrize("policy", POLICIES.values(), ids=POLICIES.keys())
@pytest.mark.parametrize(("principal", "interaction", "resource", "expected"), ROWS.values(), ids=ROWS.keys())
def test_fixed_writers_and_readers(
    principal: Principal,
    interaction: Interaction,
    resource: dict[str, Any],
    expected: Decision,
    policy: ConsentPolicy,
) -> None:
    access = request(principal, interaction, resource["resourceType"])
    decision = decide(access, stored(resource), PERMIT_ALL, policy=policy)
    assert decision == expected
    guard = ConsentGuard(access, {"p1": PERMIT_ALL}, policy=policy, all_patients=True)
    query = guard.query_filter(resource["resourceType"])
    found = query is not None and matches(document(resource), query)
    assert found == expected.permit, f"the filter disagrees with decide(): {query}"


@pytest.mark.parametrize("policy", POLICIES.values(), ids=POLICIES.keys())
@pytest.mark.parametrize(("principal", "interaction", "resource", "expected"), ROWS.values(), ids=ROWS.keys())
def test_consents_are_skipped_only_where_no_consent_can_change_the_decision(
    principal: Principal,
    interaction: Interaction,
    resource: dict[str, Any],
    expected: Decision,
    policy: ConsentPolicy,
) -> None:
    access = request(principal, interaction, resource["resourceType"])
    if needs_consents(access):
        return
    for consents in ([], PERMIT_ALL, [consent("c3", deny())]):
        assert decide(access, stored(resource), consents, policy=policy) == expected


NEEDS: dict[str, tuple[Principal, Interaction, str, bool]] = {
    "identity manager reads a Patient": (system(), Interaction.READ, "Patient", False),
    "identity manager searches Patients": (system(), Interaction.SEARCH_TYPE, "Patient", False),
    "professional reads a Patient": (DOCTOR, Interaction.READ, "Patient", True),
    "professional reads a document": (DOCTOR, Interaction.READ, "DocumentReference", True),
    "professional reads the trail": (DOCTOR, Interaction.SEARCH_TYPE, "AuditEvent", False),
    "platform reads a document": (system(), Interaction.READ, "DocumentReference", True),
    "platform reads a consent": (system(), Interaction.READ, "Consent", True),
    "patient reads her document": (patient_user(), Interaction.READ, "DocumentReference", False),
    "transaction": (DOCTOR, Interaction.TRANSACTION, "DocumentReference", False),
}


@pytest.mark.parametrize(
    ("principal", "interaction", "resource_type", "expected"), NEEDS.values(), ids=NEEDS.keys()
)
def test_which_requests_load_consents(
    principal: Principal, interaction: Interaction, resource_type: str, expected: bool
) -> None:
    assert needs_consents(request(principal, interaction, resource_type)) is expected


def _with(identifiers: list[dict[str, Any]], **demographics: Any) -> dict[str, Any]:
    return {**PATIENT, "identifier": identifiers, **demographics}


OWN = PATIENT["identifier"]
CHANGES: dict[str, tuple[Principal, dict[str, Any], Decision | None]] = {
    "patient changes her name": (patient_user(), _with(OWN, name=[{"family": "Martin"}]), None),
    "patient reorders nothing": (patient_user(), _with([dict(OWN[0])]), None),
    "patient adds an INS": (
        patient_user(),
        _with([*OWN, {"system": INS, "value": "2"}]),
        DENY("identity-identifiers"),
    ),
    "patient removes her identifiers": (patient_user(), _with([]), DENY("identity-identifiers")),
    "patient changes her INS": (
        patient_user(),
        _with([{"system": INS, "value": "2"}]),
        DENY("identity-identifiers"),
    ),
    "identity manager changes identifiers": (
        system(scope="system/Patient.cruds"),
        _with([{"system": INS, "value": "2"}]),
        None,
    ),
}


@pytest.mark.parametrize(("principal", "new", "expected"), CHANGES.values(), ids=CHANGES.keys())
def test_patient_keeps_her_identifiers(
    principal: Principal, new: dict[str, Any], expected: Decision | None
) -> None:
    assert identity_change(principal, PATIENT, new) == expected
