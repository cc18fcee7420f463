"""decide(): every provision criterion and every fixed rule, as tables.

Covers docs/tokens.md (how token claims match actors) and docs/consent.md (applicability, criteria,
nesting, several
consents, default policy, patient self, author, masking, read-only professions, break-the-glass,
identity, no patient context); STANDARDS §1.2–1.3 (provision elements), §2 (PCF evaluation,
break-glass), §5.2 (MASQUE_PS / INVISIBLE_PATIENT), §6 (TRE_G15, TRE_R95).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from consent_builders import (
    A07,
    BTG,
    CONF,
    ETREAT,
    HPAYMT,
    INFIRMIER,
    LOINC,
    MEDECIN,
    OSTEOPATHE,
    action,
    actor,
    consent,
    dated,
    deny,
    document_reference,
    patient_user,
    permit,
    professional,
    purpose,
    request,
    stored,
    system_client,
)

from fhir_server.auth.principal import Principal
from fhir_server.consent import ConsentPolicy, Decision, decide
from fhir_server.fhir.interaction import Interaction

DENY_BY_DEFAULT = ConsentPolicy("deny", (MEDECIN,))
PERMIT_BY_DEFAULT = ConsentPolicy("permit", (MEDECIN,))
DR_A = professional()
DR_B = professional("Practitioner/b", npi="810000000002", organization_id="org-2")
NURSE = professional("Practitioner/n", roles=(INFIRMIER,), npi="810000000003")
C1 = "Consent/c1#provision"
RT = "http://hl7.org/fhir/resource-types"
MEDECINS = {
    "resourceType": "Group",
    "id": "medecins",
    "type": "practitioner",
    "actual": False,
    "characteristic": [
        {
            "code": {"text": "profession"},
            "valueCodeableConcept": {"coding": [{"system": MEDECIN.system, "code": "10"}]},
            "exclude": False,
        }
    ],
}
NOT_NURSES = {
    **MEDECINS,
    "id": "not-nurses",
    "characteristic": [
        {
            "code": {"text": "profession"},
            "valueCodeableConcept": {"coding": [{"code": "60"}]},
            "exclude": True,
        }
    ],
}
MEMBERS = {"resourceType": "Group", "id": "team", "member": [{"entity": {"reference": "Practitioner/a"}}]}
GROUPS = {"Group/medecins": MEDECINS, "Group/not-nurses": NOT_NURSES, "Group/team": MEMBERS}


def on(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(tzinfo=UTC)


@dataclass
class Case:
    provision: dict[str, Any] | None
    expect: tuple[bool, str]
    principal: Principal = DR_A
    interaction: Interaction = Interaction.READ
    resource: dict[str, Any] = field(default_factory=document_reference)
    index: dict[str, Any] = field(default_factory=lambda: dated(on("2024-03-01")))
    policy: ConsentPolicy = DENY_BY_DEFAULT
    consent_extra: dict[str, Any] = field(default_factory=dict)


CRITERIA = {
    "actor by literal reference": Case(permit(actor=[actor("Practitioner/a")]), (True, C1)),
    "actor by absolute reference": Case(
        permit(actor=[actor("https://x.org/fhir/Practitioner/a")]), (True, C1)
    ),
    "another actor says nothing": Case(permit(actor=[actor("Practitioner/z")]), (False, "default-deny")),
    "actor by national identifier, any system": Case(
        permit(actor=[actor(system="urn:oid:1.2.250.1.71.4.2.1", value="810000000001")]), (True, C1)
    ),
    "actor identifier typed Organization is not the professional": Case(
        permit(actor=[actor(type="Organization", value="810000000001")]), (False, "default-deny")
    ),
    "actor by organization reference": Case(permit(actor=[actor("Organization/org-1")]), (True, C1)),
    "actor by organization identifier": Case(
        permit(actor=[actor(type="Organization", value="org-1")]), (True, C1)
    ),
    "actor by Group characteristic naming the profession": Case(
        permit(actor=[actor("Group/medecins")]), (True, C1)
    ),
    "Group characteristic of another profession": Case(
        permit(actor=[actor("Group/medecins")]), (False, "default-deny"), principal=NURSE
    ),
    "Group excluding a profession admits the others": Case(
        permit(actor=[actor("Group/not-nurses")]), (True, C1)
    ),
    "Group excluding the profession": Case(
        permit(actor=[actor("Group/not-nurses")]), (False, "default-deny"), principal=NURSE
    ),
    "Group listing the user as member": Case(permit(actor=[actor("Group/team")]), (True, C1)),
    "Group not loaded matches nobody": Case(permit(actor=[actor("Group/unknown")]), (False, "default-deny")),
    "contained Group": Case(
        permit(actor=[actor("#g")]), (True, C1), consent_extra={"contained": [{**MEDECINS, "id": "g"}]}
    ),
    "several actors are alternatives": Case(
        permit(actor=[actor("Practitioner/z"), actor("Practitioner/a")]), (True, C1)
    ),
    "system client by Device reference": Case(
        permit(actor=[actor("Device/platform")]), (True, C1), principal=system_client()
    ),
    "system client by organization": Case(
        permit(actor=[actor("Organization/org-9")]), (True, C1), principal=system_client()
    ),
    "action access covers read": Case(permit(action=action("access")), (True, C1)),
    "action access covers search": Case(
        permit(action=action("access")), (True, C1), interaction=Interaction.SEARCH_TYPE
    ),
    "action access does not cover create": Case(
        permit(action=action("access")), (False, "default-deny"), interaction=Interaction.CREATE
    ),
    "action collect covers create": Case(
        permit(action=action("collect")), (True, C1), interaction=Interaction.CREATE
    ),
    "action correct covers patch": Case(
        permit(action=action("correct")), (True, C1), interaction=Interaction.PATCH
    ),
    "action correct does not cover history": Case(
        permit(action=action("correct")), (False, "default-deny"), interaction=Interaction.HISTORY_INSTANCE
    ),
    "purpose TREAT covers ETREAT": Case(
        permit(purpose=purpose("TREAT")), (True, C1), principal=professional(purpose=(ETREAT,))
    ),
    "purpose TREAT covers BTG": Case(
        permit(purpose=purpose("TREAT")),
        (True, C1),
        principal=professional(roles=(INFIRMIER,), purpose=(BTG,)),
    ),
    "purpose BTG does not cover TREAT": Case(permit(purpose=purpose("BTG")), (False, "default-deny")),
    "purpose of another kind": Case(
        permit(purpose=purpose("TREAT")), (False, "default-deny"), principal=professional(purpose=(HPAYMT,))
    ),
    "no purpose of use in the token": Case(
        permit(purpose=purpose("TREAT")), (False, "default-deny"), principal=professional(purpose=())
    ),
    "class by resource-types coding": Case(
        permit(**{"class": [{"system": RT, "code": "DocumentReference"}]}), (True, C1)
    ),
    "class by bare code": Case(permit(**{"class": [{"code": "DocumentReference"}]}), (True, C1)),
    "class of another type": Case(
        permit(**{"class": [{"system": RT, "code": "Consent"}]}), (False, "default-deny")
    ),
    "class in another system": Case(
        permit(**{"class": [{"system": "urn:other", "code": "DocumentReference"}]}), (False, "default-deny")
    ),
    "code with system": Case(permit(code=[{"coding": [{"system": LOINC, "code": "11488-4"}]}]), (True, C1)),
    "code without system": Case(permit(code=[{"coding": [{"code": "11488-4"}]}]), (True, C1)),
    "code of another system": Case(
        permit(code=[{"coding": [{"system": "urn:x", "code": "11488-4"}]}]), (False, "default-deny")
    ),
    "code of another document type": Case(
        permit(code=[{"coding": [{"system": LOINC, "code": "34133-9"}]}]), (False, "default-deny")
    ),
    "securityLabel R covers N": Case(
        permit(securityLabel=[{"system": CONF, "code": "R"}]),
        (True, C1),
        resource=document_reference(labels=((CONF, "N"),)),
    ),
    "securityLabel R covers an unlabelled document (N)": Case(
        permit(securityLabel=[{"system": CONF, "code": "R"}]), (True, C1)
    ),
    "securityLabel R does not cover V": Case(
        permit(securityLabel=[{"system": CONF, "code": "R"}]),
        (False, "default-deny"),
        resource=document_reference(labels=((CONF, "V"),)),
    ),
    "securityLabel takes the highest confidentiality": Case(
        permit(securityLabel=[{"system": CONF, "code": "N"}]),
        (False, "default-deny"),
        resource=document_reference(labels=((CONF, "L"), (CONF, "R"))),
    ),
    "securityLabel M does not cover an unlabelled document": Case(
        permit(securityLabel=[{"system": CONF, "code": "M"}]), (False, "default-deny")
    ),
    "securityLabel L covers U": Case(
        permit(securityLabel=[{"system": CONF, "code": "L"}]),
        (True, C1),
        resource=document_reference(labels=((CONF, "U"),)),
    ),
    "sensitivity label matches exactly": Case(
        permit(securityLabel=[{"system": "urn:act", "code": "HIV"}]),
        (True, C1),
        resource=document_reference(labels=(("urn:act", "HIV"),)),
    ),
    "sensitivity label absent": Case(
        permit(securityLabel=[{"system": "urn:act", "code": "HIV"}]), (False, "default-deny")
    ),
    "nested period covering now": Case(
        deny(provision=[permit(period={"start": "2025-01-01", "end": "2025-12-31"})]),
        (True, "Consent/c1#provision.provision[0]"),
    ),
    "nested period over": Case(
        deny(provision=[permit(period={"end": "2025-05-31"})]),
        (False, C1),
    ),
    "root period over: the consent says nothing": Case(
        permit(period={"start": "2024", "end": "2025-05"}), (True, "default-permit"), policy=PERMIT_BY_DEFAULT
    ),
    "root period not yet begun": Case(permit(period={"start": "2025-06-02"}), (False, "default-deny")),
    "dataPeriod overlapping the document date": Case(
        permit(dataPeriod={"start": "2024", "end": "2024"}), (True, C1)
    ),
    "dataPeriod before the document date": Case(
        permit(dataPeriod={"end": "2023-12-31"}), (False, "default-deny")
    ),
    "dataPeriod falls back to context.period": Case(
        permit(dataPeriod={"start": "2022-01", "end": "2022-02"}),
        (True, C1),
        index={"period": [{"lo": on("2021-12-01"), "hi": on("2022-01-15")}]},
    ),
    "dataPeriod on an undated document": Case(
        permit(dataPeriod={"start": "2020"}), (False, "default-deny"), index={}
    ),
    "data instance": Case(
        permit(data=[{"meaning": "instance", "reference": {"reference": "DocumentReference/d1"}}]), (True, C1)
    ),
    "data instance of another document": Case(
        permit(data=[{"meaning": "instance", "reference": {"reference": "DocumentReference/d2"}}]),
        (False, "default-deny"),
    ),
    "data related: documents of the encounter": Case(
        permit(data=[{"meaning": "related", "reference": {"reference": "Encounter/e1"}}]),
        (True, C1),
        resource=document_reference(context={"encounter": [{"reference": "Encounter/e1"}]}),
    ),
    "data instance does not reach the encounter's documents": Case(
        permit(data=[{"meaning": "instance", "reference": {"reference": "Encounter/e1"}}]),
        (False, "default-deny"),
        resource=document_reference(context={"encounter": [{"reference": "Encounter/e1"}]}),
    ),
    "data dependents: a document replacing it": Case(
        permit(data=[{"meaning": "dependents", "reference": {"reference": "DocumentReference/d0"}}]),
        (True, C1),
        resource=document_reference(
            relatesTo=[{"code": "replaces", "target": {"reference": "DocumentReference/d0"}}]
        ),
    ),
    "data dependents include the instance": Case(
        permit(data=[{"meaning": "dependents", "reference": {"reference": "DocumentReference/d1"}}]),
        (True, C1),
    ),
    "data authoredby": Case(
        permit(data=[{"meaning": "authoredby", "reference": {"reference": "Practitioner/b"}}]), (True, C1)
    ),
    "data authoredby another author": Case(
        permit(data=[{"meaning": "authoredby", "reference": {"reference": "Practitioner/c"}}]),
        (False, "default-deny"),
    ),
    "all criteria must match (AND)": Case(
        permit(actor=[actor("Practitioner/a")], action=action("correct")), (False, "default-deny")
    ),
    "nested deny for one professional": Case(
        permit(provision=[deny(actor=[actor("Practitioner/a")])]),
        (False, "Consent/c1#provision.provision[0]"),
    ),
    "nested deny for another professional": Case(
        permit(provision=[deny(actor=[actor("Practitioner/z")])]), (True, C1)
    ),
    "nested permit in a deny (except for)": Case(
        deny(provision=[permit(actor=[actor("Practitioner/a")])]), (True, "Consent/c1#provision.provision[0]")
    ),
    "matching siblings: deny wins": Case(
        deny(provision=[permit(actor=[actor("Practitioner/a")]), deny(action=action("access"))]),
        (False, "Consent/c1#provision.provision[1]"),
    ),
    "among matching permits the first names the decision": Case(
        deny(provision=[permit(action=action("correct")), permit(actor=[actor("Practitioner/a")]), permit()]),
        (True, "Consent/c1#provision.provision[1]"),
    ),
    "the deepest matching provision decides": Case(
        permit(
            provision=[
                deny(
                    **{"class": [{"code": "DocumentReference"}]},
                    provision=[permit(actor=[actor("Practitioner/a")])],
                )
            ]
        ),
        (True, "Consent/c1#provision.provision[0].provision[0]"),
    ),
    "a root that does not match says nothing, whatever its exceptions": Case(
        deny(actor=[actor("Practitioner/z")], provision=[permit(actor=[actor("Practitioner/a")])]),
        (True, "default-permit"),
        policy=PERMIT_BY_DEFAULT,
    ),
    "a provision without type denies": Case(
        {"actor": [actor("Practitioner/a")]}, (False, C1), policy=PERMIT_BY_DEFAULT
    ),
    "inactive consent does not apply": Case(
        permit(), (False, "default-deny"), consent_extra={"status": "inactive"}
    ),
    "draft consent does not apply": Case(
        deny(), (True, "default-permit"), policy=PERMIT_BY_DEFAULT, consent_extra={"status": "draft"}
    ),
    "research scope does not apply": Case(
        permit(), (False, "default-deny"), consent_extra={"scope": {"coding": [{"code": "research"}]}}
    ),
    "another patient's consent does not apply": Case(
        permit(), (False, "default-deny"), consent_extra={"patient": {"reference": "Patient/p2"}}
    ),
    "default permit": Case(None, (True, "default-permit"), policy=PERMIT_BY_DEFAULT),
    "default deny": Case(None, (False, "default-deny")),
}


def run(case: Case, *, groups: dict[str, Any] | None = None) -> Decision:
    consents = [] if case.provision is None else [{**consent("c1", case.provision), **case.consent_extra}]
    return decide(
        request(case.principal, case.interaction, case.resource["resourceType"]),
        stored(case.resource, index=case.index),
        consents,
        policy=case.policy,
        groups=GROUPS if groups is None else groups,
    )


@pytest.mark.parametrize("case", CRITERIA.values(), ids=CRITERIA.keys())
def test_each_provision_criterion_decides(case: Case) -> None:
    decision = run(case)
    assert (decision.permit, decision.rule) == case.expect
    assert decision.consents == (("Consent/c1",) if case.expect[1].startswith("Consent/") else ())
    assert decision.break_the_glass is False


def test_several_consents_deny_wins_and_names_the_denying_consents() -> None:
    consents = [
        consent("c1", permit()),
        consent("c2", deny(actor=[actor("Practitioner/a")])),
        consent("c3", deny()),
    ]
    decision = decide(request(DR_A), stored(document_reference()), consents, policy=PERMIT_BY_DEFAULT)
    assert decision == Decision.deny("Consent/c2#provision", consents=("Consent/c2", "Consent/c3"))


def test_several_permitting_consents_are_all_named() -> None:
    consents = [consent("c1", permit()), consent("c2", permit(actor=[actor("Practitioner/a")]))]
    decision = decide(request(DR_A), stored(document_reference()), consents, policy=DENY_BY_DEFAULT)
    assert decision == Decision.allow("Consent/c1#provision", consents=("Consent/c1", "Consent/c2"))


DENY_ALL = [consent("c1", deny())]
PERMIT_ALL = [consent("c1", permit())]
MASKED = document_reference(labels=((A07, "MASQUE_PS"),))
INVISIBLE = document_reference(labels=((A07, "INVISIBLE_PATIENT"),))
BINARY = {"resourceType": "Binary", "id": "b1", "contentType": "text/plain"}
PATIENT_P1 = {
    "resourceType": "Patient",
    "id": "p1",
    "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "1"}],
}
DOCTOR_BTG = professional(purpose=(BTG,))
NURSE_BTG = professional("Practitioner/n", roles=(INFIRMIER,), purpose=(BTG,))
REFUSE_BTG = [consent("c1", deny(provision=[deny(purpose=purpose("BTG"))]))]
REFUSE_EMERGENCY = [consent("c1", deny(purpose=purpose("ETREAT")))]
PERMIT_BTG = [consent("c1", deny(provision=[permit(purpose=purpose("BTG"))]))]
RECORDED = {**consent("new", permit()), "id": "new"}
AUDIT_TWO_PATIENTS = {
    "resourceType": "AuditEvent",
    "id": "ae1",
    "entity": [{"what": {"reference": "Patient/p1"}}, {"what": {"reference": "Patient/p2"}}],
}

FIXED = {
    "patient reads own document despite consents": (
        patient_user(),
        Interaction.READ,
        document_reference(),
        DENY_ALL,
        Decision.allow("patient-self"),
    ),
    "patient patches own document (masking)": (
        patient_user(),
        Interaction.PATCH,
        document_reference(),
        [],
        Decision.allow("patient-self"),
    ),
    "patient records own consent": (
        patient_user(),
        Interaction.CREATE,
        RECORDED,
        [],
        Decision.allow("patient-self"),
    ),
    "patient cannot see INVISIBLE_PATIENT": (
        patient_user(),
        Interaction.READ,
        INVISIBLE,
        [],
        Decision.deny("invisible-to-patient"),
    ),
    "patient sees a masked document": (
        patient_user(),
        Interaction.READ,
        MASKED,
        [],
        Decision.allow("patient-self"),
    ),
    "patient sees nothing of another patient": (
        patient_user("p2"),
        Interaction.READ,
        document_reference(),
        PERMIT_ALL,
        Decision.deny("outside-patient-compartment"),
    ),
    "patient sees no unlinked Binary": (
        patient_user(),
        Interaction.READ,
        BINARY,
        [],
        Decision.deny("outside-patient-compartment"),
    ),
    "author reads despite a deny": (
        DR_B,
        Interaction.READ,
        document_reference(),
        DENY_ALL,
        Decision.allow("author"),
    ),
    "author by national identifier": (
        DR_A,
        Interaction.SEARCH_TYPE,
        document_reference(authors=({"identifier": {"value": "810000000001"}},)),
        DENY_ALL,
        Decision.allow("author"),
    ),
    "author reads masked": (DR_B, Interaction.READ, MASKED, [], Decision.allow("author")),
    "author writes only by consent": (
        DR_B,
        Interaction.UPDATE,
        document_reference(),
        DENY_ALL,
        Decision.deny("Consent/c1#provision", consents=("Consent/c1",)),
    ),
    "masked despite a permitting consent": (
        DR_A,
        Interaction.READ,
        MASKED,
        PERMIT_ALL,
        Decision.deny("masked"),
    ),
    "masked stays hidden to break-the-glass": (
        DOCTOR_BTG,
        Interaction.READ,
        MASKED,
        [],
        Decision.deny("masked"),
    ),
    "masked hidden from system clients": (
        system_client(),
        Interaction.SEARCH_TYPE,
        MASKED,
        PERMIT_ALL,
        Decision.deny("masked"),
    ),
    "ostéopathe reads with a permit": (
        professional(roles=(OSTEOPATHE,)),
        Interaction.READ,
        document_reference(),
        PERMIT_ALL,
        Decision.allow(C1, consents=("Consent/c1",)),
    ),
    "ostéopathe never writes": (
        professional(roles=(OSTEOPATHE,)),
        Interaction.UPDATE,
        document_reference(),
        PERMIT_ALL,
        Decision.deny("read-only-profession"),
    ),
    "ostéopathe never creates a Patient": (
        professional(roles=(OSTEOPATHE,)),
        Interaction.CREATE,
        PATIENT_P1,
        [],
        Decision.deny("read-only-profession"),
    ),
    "break-the-glass overrides a deny": (
        DOCTOR_BTG,
        Interaction.READ,
        document_reference(),
        DENY_ALL,
        Decision.allow("break-the-glass", consents=("Consent/c1",), break_the_glass=True),
    ),
    "break-the-glass overrides the default deny": (
        DOCTOR_BTG,
        Interaction.SEARCH_TYPE,
        document_reference(),
        [],
        Decision.allow("break-the-glass", break_the_glass=True),
    ),
    "break-the-glass refused by the patient": (
        DOCTOR_BTG,
        Interaction.READ,
        document_reference(),
        REFUSE_BTG,
        Decision.deny("Consent/c1#provision.provision[0]", consents=("Consent/c1",)),
    ),
    "a deny of ETREAT is not an explicit BTG refusal": (
        DOCTOR_BTG,
        Interaction.READ,
        document_reference(),
        REFUSE_EMERGENCY,
        Decision.allow("break-the-glass", consents=("Consent/c1",), break_the_glass=True),
    ),
    "break-the-glass granted by the consent itself": (
        DOCTOR_BTG,
        Interaction.READ,
        document_reference(),
        PERMIT_BTG,
        Decision.allow("Consent/c1#provision.provision[0]", consents=("Consent/c1",)),
    ),
    "break-the-glass from a role not allowed": (
        NURSE_BTG,
        Interaction.READ,
        document_reference(),
        DENY_ALL,
        Decision.deny(C1, consents=("Consent/c1",)),
    ),
    "break-the-glass never writes": (
        DOCTOR_BTG,
        Interaction.UPDATE,
        document_reference(),
        DENY_ALL,
        Decision.deny(C1, consents=("Consent/c1",)),
    ),
    "Patient create needs only the scope": (
        DR_A,
        Interaction.CREATE,
        PATIENT_P1,
        DENY_ALL,
        Decision.allow("identity-create"),
    ),
    "system client manages identities": (
        system_client(scope="system/Patient.cruds"),
        Interaction.UPDATE,
        PATIENT_P1,
        DENY_ALL,
        Decision.allow("identity-management"),
    ),
    "system client without Patient scope": (
        system_client(scope="system/DocumentReference.rs"),
        Interaction.READ,
        PATIENT_P1,
        [],
        Decision.deny("default-deny"),
    ),
    "system identity manager deletes a Patient": (
        system_client(scope="system/Patient.cruds"),
        Interaction.DELETE,
        PATIENT_P1,
        [],
        Decision.allow("identity-management"),
    ),
    "professional sees a Patient by consent": (
        DR_A,
        Interaction.READ,
        PATIENT_P1,
        PERMIT_ALL,
        Decision.allow(C1, consents=("Consent/c1",)),
    ),
    "professional without consent does not see the Patient": (
        DR_A,
        Interaction.READ,
        PATIENT_P1,
        [],
        Decision.deny("default-deny"),
    ),
    "unlinked Binary is hidden from professionals": (
        DR_A,
        Interaction.READ,
        BINARY,
        [],
        Decision.deny("no-patient-context"),
    ),
    "unlinked Binary is visible to system clients": (
        system_client(),
        Interaction.READ,
        BINARY,
        [],
        Decision.allow("no-patient-context"),
    ),
    "unlinked Binary may be created": (
        DR_A,
        Interaction.CREATE,
        BINARY,
        [],
        Decision.allow("no-patient-context"),
    ),
    "professional never records a consent, even for a patient it serves": (
        DR_A,
        Interaction.CREATE,
        RECORDED,
        [consent("c1", permit())],
        Decision.deny("consent-writers"),
    ),
    "a DocumentReference create needs collect": (
        DR_A,
        Interaction.CREATE,
        document_reference(),
        [consent("c1", permit(action=action("access")))],
        Decision.deny("default-deny"),
    ),
    "a professional never reads the audit trail, whatever the consents": (
        DR_A,
        Interaction.READ,
        AUDIT_TWO_PATIENTS,
        PERMIT_ALL,
        Decision.deny("audit-readers"),
    ),
    "transactions are decided entry by entry": (
        DR_A,
        Interaction.TRANSACTION,
        document_reference(),
        PERMIT_ALL,
        Decision.deny("unsupported-interaction"),
    ),
}


@pytest.mark.parametrize(
    ("principal", "interaction", "resource", "consents", "expected"), FIXED.values(), ids=FIXED.keys()
)
def test_fixed_rules_decide_above_consents(
    principal: Principal,
    interaction: Interaction,
    resource: dict[str, Any],
    consents: list[dict[str, Any]],
    expected: Decision,
) -> None:
    decision = decide(
        request(principal, interaction, resource["resourceType"]),
        stored(resource),
        consents,
        policy=DENY_BY_DEFAULT,
    )
    assert decision == expected


@pytest.mark.parametrize(
    ("lookup", "expected"),
    [(True, Decision.allow("identity-lookup")), (False, Decision.deny(C1, consents=("Consent/c1",)))],
)
def test_identity_lookup_finds_the_patient_despite_consents(lookup: bool, expected: Decision) -> None:
    decision = decide(
        request(DR_A, Interaction.SEARCH_TYPE, "Patient"),
        stored(PATIENT_P1),
        DENY_ALL,
        policy=DENY_BY_DEFAULT,
        identity_lookup=lookup,
    )
    assert decision == expected


def test_identity_lookup_does_not_open_documents() -> None:
    decision = decide(
        request(DR_A, Interaction.SEARCH_TYPE),
        stored(document_reference()),
        DENY_ALL,
        policy=DENY_BY_DEFAULT,
        identity_lookup=True,
    )
    assert decision == Decision.deny(C1, consents=("Consent/c1",))


def test_deleted_versions_are_decided_on_compartment_and_labels() -> None:
    tombstone = stored(
        document_reference(labels=((A07, "MASQUE_PS"),)), deleted=True, history=True, version=2
    )
    assert decide(
        request(DR_A, Interaction.HISTORY_INSTANCE), tombstone, PERMIT_ALL, policy=DENY_BY_DEFAULT
    ) == Decision.deny("masked")
    assert decide(
        request(patient_user(), Interaction.HISTORY_INSTANCE), tombstone, [], policy=DENY_BY_DEFAULT
    ) == Decision.allow("patient-self")
