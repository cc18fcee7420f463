"""Hypothesis strategies for the consent property tests: random principals, documents and consents.

Values come from small pools so that criteria match often enough to exercise every branch.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from consent_builders import (
    A07,
    ACT,
    BTG,
    CONF,
    ETREAT,
    HPAYMT,
    INFIRMIER,
    LOINC,
    MEDECIN,
    OSTEOPATHE,
    TREAT,
    document,
    patient_user,
    professional,
    system_client,
)
from hypothesis import strategies as st

from fhir_server.auth.principal import PURPOSE_OF_USE_SYSTEM
from fhir_server.consent import ConsentPolicy
from fhir_server.fhir.interaction import Interaction

INTERACTIONS = (
    Interaction.READ,
    Interaction.VREAD,
    Interaction.SEARCH_TYPE,
    Interaction.HISTORY_INSTANCE,
    Interaction.CREATE,
    Interaction.UPDATE,
    Interaction.PATCH,
    Interaction.DELETE,
)
PATIENTS = ("p1", "p2", "p3")
POLICIES = [ConsentPolicy(default, roles) for default in ("deny", "permit") for roles in ((), (MEDECIN,))]
TYPES_BY_ID = {
    "d1": "DocumentReference",
    "d2": "DocumentReference",
    "p1": "Patient",
    "p2": "Patient",
    "b1": "Binary",
    "c9": "Consent",
    "ae1": "AuditEvent",
}

TYPE_CODES = ((LOINC, "11488-4"), (LOINC, "34133-9"), (None, "11488-4"), ("urn:x", "11488-4"))
LABELS = tuple((CONF, code) for code in "ULMNRV") + (
    (A07, "MASQUE_PS"),
    (A07, "INVISIBLE_PATIENT"),
    ("urn:act", "HIV"),
    (None, "R"),
)
AUTHORS = (
    {"reference": "Practitioner/a"},
    {"reference": "Practitioner/b"},
    {"identifier": {"system": "urn:oid:1.2.250.1.71.4.2.1", "value": "npi-a"}},
    {"reference": "Organization/org-1"},
)
MEDECINS_GROUP = {
    "resourceType": "Group",
    "id": "medecins",
    "characteristic": [
        {"code": {"text": "profession"}, "valueCodeableConcept": {"coding": [MEDECIN.to_fhir()]}}
    ],
}
NOT_OSTEOPATHS_GROUP = {
    "resourceType": "Group",
    "id": "not-osteo",
    "characteristic": [{"code": {"coding": [OSTEOPATHE.to_fhir()]}, "valueBoolean": True, "exclude": True}],
}
GROUPS = {"Group/medecins": MEDECINS_GROUP, "Group/not-osteo": NOT_OSTEOPATHS_GROUP}
ACTOR_REFERENCES = (
    {"reference": "Practitioner/a"},
    {"reference": "Practitioner/b"},
    {"identifier": {"value": "npi-a"}},
    {"type": "Organization", "identifier": {"value": "org-1"}},
    {"reference": "Organization/org-1"},
    {"reference": "Group/medecins"},
    {"reference": "Group/not-osteo"},
    {"reference": "#team"},
    {"reference": "Device/platform"},
)
CONTAINED_TEAM = {
    "resourceType": "Group",
    "id": "team",
    "member": [{"entity": {"reference": "Practitioner/b"}}],
}
DAY = datetime(2024, 1, 1, tzinfo=UTC)
RANGES = tuple(
    (DAY + timedelta(days=start), DAY + timedelta(days=start + length))
    for start, length in ((0, 0), (40, 0), (100, 30), (400, 0), (-400, 10))
)
PERIODS = (
    {"start": "2024-01", "end": "2024-02"},
    {"start": "2024-04-01"},
    {"end": "2023-12-31"},
    {"start": "2025"},
    {"start": "2024-02-10T00:00:00Z", "end": "2024-02-10T00:00:00Z"},
)
NOW_PERIODS = (
    {"start": "2025-01-01", "end": "2025-12-31"},
    {"end": "2025-05-31"},
    {"start": "2025-06-02"},
    {"start": "2020"},
)
DATA = tuple(
    {"meaning": meaning, "reference": {"reference": reference}}
    for meaning in ("instance", "related", "dependents", "authoredby")
    for reference in ("DocumentReference/d1", "DocumentReference/d2", "Encounter/e1", "Practitioner/b")
)


def codings_from(pool: tuple[tuple[str | None, str], ...]) -> st.SearchStrategy[list[dict[str, str]]]:
    return st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True).map(
        lambda items: [{"system": s, "code": c} if s else {"code": c} for s, c in items]
    )


professionals = st.builds(
    lambda user, roles, purposes, npi, org: professional(
        user, roles=tuple(roles), purpose=tuple(purposes), npi=npi, organization_id=org
    ),
    st.sampled_from(("Practitioner/a", "Practitioner/b", "PractitionerRole/r")),
    st.lists(st.sampled_from((MEDECIN, INFIRMIER, OSTEOPATHE)), max_size=2, unique=True),
    st.lists(st.sampled_from((TREAT, ETREAT, BTG, HPAYMT)), max_size=2, unique=True),
    st.sampled_from(("npi-a", None)),
    st.sampled_from(("org-1", None)),
)
breaking_the_glass = st.builds(
    lambda user, roles: professional(user, roles=roles, purpose=(BTG,)),
    st.sampled_from(("Practitioner/a", "Practitioner/c")),
    st.sampled_from(((MEDECIN,), (MEDECIN, OSTEOPATHE), (INFIRMIER,))),
)
PRINCIPAL_KINDS: dict[str, st.SearchStrategy[Any]] = {
    "professional": professionals,
    "break-the-glass": breaking_the_glass,
    "system": st.builds(
        system_client, st.just("platform"), st.sampled_from(("system/*.cruds", "system/Patient.rs"))
    ),
    "patient": st.builds(patient_user, st.sampled_from(("p1", "p1", "p2"))),
}
principals = st.sampled_from(
    ("professional", "professional", "professional", "break-the-glass", "system", "patient")
).flatmap(lambda kind: PRINCIPAL_KINDS[kind])


CRITERIA: dict[str, st.SearchStrategy[Any]] = {
    "actor": st.lists(
        st.sampled_from(ACTOR_REFERENCES).map(lambda r: {"role": {"text": "IRCP"}, "reference": r}),
        min_size=1,
        max_size=3,
    ),
    "action": st.lists(
        st.sampled_from(("access", "collect", "correct")).map(
            lambda c: {"coding": [{"system": ACT, "code": c}]}
        ),
        min_size=1,
        max_size=2,
    ),
    "purpose": codings_from(tuple((PURPOSE_OF_USE_SYSTEM, c) for c in ("TREAT", "ETREAT", "BTG", "HPAYMT"))),
    "class": codings_from(
        (("http://hl7.org/fhir/resource-types", "DocumentReference"), (None, "Consent"), (None, "Patient"))
    ),
    "code": codings_from(TYPE_CODES).map(lambda codings: [{"coding": codings}]),
    "securityLabel": codings_from(LABELS),
    "period": st.sampled_from(NOW_PERIODS),
    "dataPeriod": st.sampled_from(PERIODS),
    "data": st.lists(st.sampled_from(DATA), min_size=1, max_size=2),
}
"""Each provision states a random subset (at most three) of these criteria."""
REQUEST_CRITERIA = ("actor", "action", "purpose", "period")
"""The criteria decided by the request alone: consents stating only these never read the data."""


def provisions(depth: int, names: tuple[str, ...] = tuple(CRITERIA)) -> st.SearchStrategy[dict[str, Any]]:
    criteria = st.sets(st.sampled_from(sorted(names)), max_size=3).flatmap(
        lambda keys: st.fixed_dictionaries({key: CRITERIA[key] for key in keys})
    )
    typed = st.builds(
        lambda kind, base: {**base, **({"type": kind} if kind else {})},
        st.sampled_from(("permit", "deny", "permit", "deny", None)),
        criteria,
    )
    if depth == 0:
        return typed
    return st.builds(
        lambda base, nested: {**base, **({"provision": nested} if nested else {})},
        typed,
        st.lists(provisions(depth - 1, names), max_size=2),
    )


def consent_lists(
    patients: tuple[str, ...] = ("p1", "p1", "p1", "p2"),
    statuses: tuple[str, ...] = ("active", "active", "active", "inactive", "draft"),
    scopes: tuple[str, ...] = ("patient-privacy", "patient-privacy", "research"),
    criteria: tuple[str, ...] = tuple(CRITERIA),
) -> st.SearchStrategy[list[dict[str, Any]]]:
    return st.lists(
        st.builds(
            lambda patient, status, scope, root: {
                "resourceType": "Consent",
                "status": status,
                "scope": {"coding": [{"code": scope}]},
                "patient": {"reference": f"Patient/{patient}"},
                "contained": [CONTAINED_TEAM],
                "provision": root,
            },
            st.sampled_from(patients),
            st.sampled_from(statuses),
            st.sampled_from(scopes),
            provisions(2, criteria),
        ),
        max_size=3,
    ).map(lambda items: [{**item, "id": f"c{i}"} for i, item in enumerate(items)])


consents = consent_lists()
applicable_consents = consent_lists(("p1",), ("active",), ("patient-privacy",))
"""Consents that all apply to the documents of `p1_documents`: the criteria decide."""
request_only_consents = consent_lists(
    ("p1", "p2", "p3"), ("active", "active", "draft"), criteria=REQUEST_CRITERIA
)
"""Consents of any patient whose decision does not depend on the data (the common consents)."""


def _date_index(
    date_range: tuple[datetime, datetime] | None, period: tuple[datetime, datetime] | None
) -> dict[str, Any]:
    index: dict[str, Any] = {}
    if date_range:
        index["date"] = [{"lo": date_range[0], "hi": date_range[1]}]
    if period:
        index["period"] = [{"lo": period[0], "hi": period[1]}]
    return index


document_references = st.builds(
    lambda id, patient, type_codes, authors, labels, encounter, replaces, date_range, period: (
        {
            "resourceType": "DocumentReference",
            "id": id,
            "status": "current",
            **({"subject": {"reference": f"Patient/{patient}"}} if patient else {}),
            **({"type": {"coding": type_codes}} if type_codes else {}),
            **({"author": authors} if authors else {}),
            **({"securityLabel": [{"coding": labels}]} if labels else {}),
            **({"context": {"encounter": [{"reference": "Encounter/e1"}]}} if encounter else {}),
            **({"relatesTo": [{"code": "replaces", "target": {"reference": replaces}}]} if replaces else {}),
        },
        _date_index(date_range, period),
    ),
    st.sampled_from(("d1", "d2")),
    st.sampled_from(("p1", "p1", "p2", None)),
    st.one_of(st.none(), codings_from(TYPE_CODES)),
    st.lists(st.sampled_from(AUTHORS), max_size=2, unique_by=repr),
    st.one_of(st.none(), codings_from(LABELS)),
    st.booleans(),
    st.sampled_from((None, "DocumentReference/d1", "DocumentReference/d2")),
    st.one_of(st.none(), st.sampled_from(RANGES)),
    st.one_of(st.none(), st.sampled_from(RANGES)),
)

other_resources = st.sampled_from(
    (
        ({"resourceType": "Patient", "id": "p1"}, {}),
        ({"resourceType": "Patient", "id": "p2", "meta": {"security": [{"system": CONF, "code": "R"}]}}, {}),
        ({"resourceType": "Binary", "id": "b1", "contentType": "text/plain"}, {}),
        (
            {
                "resourceType": "Consent",
                "id": "c9",
                "status": "active",
                "patient": {"reference": "Patient/p1"},
                "dateTime": "2024-02-10",
            },
            {"date": [{"lo": RANGES[1][0], "hi": RANGES[1][0] + timedelta(days=1)}]},
        ),
        (
            {
                "resourceType": "AuditEvent",
                "id": "ae1",
                "entity": [{"what": {"reference": "Patient/p1"}}, {"what": {"reference": "Patient/p2"}}],
            },
            {},
        ),
    )
)

p1_documents = st.builds(
    lambda pair, history, deleted: document(
        pair[0], index=pair[1], history=history, deleted=deleted, version=2
    ),
    document_references.filter(lambda pair: pair[0].get("subject") == {"reference": "Patient/p1"}),
    st.booleans(),
    st.sampled_from((False, False, False, True)),
)
clinicians = st.one_of(professionals, breaking_the_glass)
stored_documents = st.builds(
    lambda pair, history, deleted: document(
        pair[0], index=pair[1], history=history, deleted=deleted, version=2
    ),
    st.one_of(document_references, document_references, other_resources),
    st.booleans(),
    st.booleans(),
)
