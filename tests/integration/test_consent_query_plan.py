"""Consent-filtered searches are served by an index on the embedded database, and stay exact there.

Covers: docs/architecture.md (the embedded database uses an index only for a filter without top-level
operators),
I4 (the search filter is in the query, exactly what the post-check permits), §8 (consent by actor
reference, national provider identifier, Group of a profession; default policy; patient tokens;
`system/` clients; MASQUE_PS and its author). The query is the one the repository sends:
`guarded_filter(guard, type, conjunction([{del: false}, criteria]))`, with the indexes created by
`Repository.ensure_indexes` from the real registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from fhir_server.auth.principal import Coding, Principal
from fhir_server.auth.scopes import parse_scopes
from fhir_server.consent import AccessRequest, ConsentGuard, ConsentPolicy
from fhir_server.fhir.instants import instant
from fhir_server.fhir.interaction import Interaction
from fhir_server.record.documents import StoredResource, to_document
from fhir_server.record.filters import conjunction
from fhir_server.search.compile import compile_filter
from fhir_server.search.parse import parse_search
from fhir_server.search.registry import SearchRegistry
from fhir_server.storage.guard import guarded_filter
from fhir_server.storage.repository import Repository
from tests.integration.conftest import BASE_URL

pytestmark = pytest.mark.asyncio

REGISTRY = SearchRegistry.load()
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
DOCUMENT_REFERENCE = "DocumentReference"
G15 = "https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante"
A07 = "https://mos.esante.gouv.fr/NOS/TRE_A07-StatutVisibiliteDocument/FHIR/TRE-A07-StatutVisibiliteDocument"
MEDECIN = Coding(G15, "10")
DOCTOR = "Practitioner/dr1"
NPI = "810002345678"
MEDECINS = {
    "resourceType": "Group",
    "id": "medecins",
    "active": True,
    "characteristic": [
        {"code": {"text": "profession"}, "valueCodeableConcept": {"coding": [MEDECIN.to_fhir()]}}
    ],
}


def doctor(*, fhir_user: str | None = DOCTOR) -> Principal:
    return Principal(
        subject="dr1",
        client_id="ehr",
        scopes=parse_scopes("user/*.cruds"),
        fhir_user=fhir_user,
        roles=(MEDECIN,),
        national_provider_identifier=NPI,
    )


PATIENT_P1 = Principal(
    subject="p1", client_id="app", scopes=parse_scopes("patient/*.rs"), fhir_user="Patient/p1", patient="p1"
)
PLATFORM = Principal(subject="platform", client_id="platform", scopes=parse_scopes("system/*.rs"))


def consent(actor: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "id": "c1",
        "status": "active",
        "scope": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
            ]
        },
        "patient": {"reference": "Patient/p1"},
        "provision": {"type": "deny", "provision": [{"type": "permit", "actor": [{"reference": actor}]}]},
    }


def document(
    id: str, patient: str, *, status: str = "current", author: Mapping[str, Any], masked: bool = False
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": DOCUMENT_REFERENCE,
        "id": id,
        "meta": {"versionId": "1", "lastUpdated": instant(NOW)},
        "status": status,
        "subject": {"reference": f"Patient/{patient}"},
        "author": [author],
        "content": [{"attachment": {"contentType": "text/plain", "url": f"Binary/{id}"}}],
    }
    if masked:
        resource["securityLabel"] = [{"coding": [{"system": A07, "code": "MASQUE_PS"}]}]
    return resource


OTHER = {"reference": "Practitioner/other"}
DOCUMENTS = [
    document("open", "p1", author=OTHER),
    document("old", "p1", status="superseded", author=OTHER),
    document("masked", "p1", author=OTHER, masked=True),
    document("masked-mine", "p1", author={"reference": DOCTOR}, masked=True),
    document("masked-mine-by-npi", "p1", author={"identifier": {"value": NPI}}, masked=True),
    document("other-patient", "p2", author=OTHER),
    document("other-patient-mine", "p2", author={"reference": DOCTOR}),
]

DENY = ConsentPolicy("deny")
PERMIT = ConsentPolicy("permit")
CASES: dict[str, tuple[Principal, Mapping[str, list[dict[str, Any]]], ConsentPolicy, set[str]]] = {
    "consent permits the actor by reference": (
        doctor(),
        {"p1": [consent({"reference": DOCTOR})]},
        DENY,
        {"open", "masked-mine", "masked-mine-by-npi"},
    ),
    "consent permits the actor by national identifier": (
        doctor(fhir_user=None),
        {"p1": [consent({"identifier": {"value": NPI}})]},
        DENY,
        {"open", "masked-mine-by-npi"},
    ),
    "consent permits a Group of the actor's profession": (
        doctor(),
        {"p1": [consent({"reference": "Group/medecins"})]},
        DENY,
        {"open", "masked-mine", "masked-mine-by-npi"},
    ),
    "no consent, default permit": (
        doctor(),
        {"p1": []},
        PERMIT,
        {"open", "masked-mine", "masked-mine-by-npi"},
    ),
    "no consent, default deny: the author's own documents only": (
        doctor(),
        {"p1": []},
        DENY,
        {"masked-mine", "masked-mine-by-npi"},
    ),
    "patient token": (PATIENT_P1, {"p1": []}, DENY, {"open", "masked", "masked-mine", "masked-mine-by-npi"}),
    "system client, default permit": (PLATFORM, {"p1": []}, PERMIT, {"open"}),
}


async def _no_chain(resource_type: str, query: Mapping[str, Any], *, field: str = "_id") -> list[str]:
    raise AssertionError("these searches have no chain")


@pytest.mark.parametrize(("principal", "consents", "policy", "expected"), CASES.values(), ids=CASES.keys())
async def test_patient_anchored_search_uses_the_patient_status_index_and_finds_what_decide_permits(
    mongo_db: AsyncDatabase[dict[str, Any]],
    principal: Principal,
    consents: Mapping[str, list[dict[str, Any]]],
    policy: ConsentPolicy,
    expected: set[str],
) -> None:
    repository = Repository(mongo_db.client, mongo_db, extract=REGISTRY.extract)
    await repository.ensure_indexes([DOCUMENT_REFERENCE], REGISTRY.index_keys)
    await mongo_db[DOCUMENT_REFERENCE].insert_many(
        [to_document(r, version=1, last_updated=NOW, index=REGISTRY.extract(r)) for r in DOCUMENTS]
    )
    guard = ConsentGuard(
        AccessRequest(principal, Interaction.SEARCH_TYPE, DOCUMENT_REFERENCE, NOW),
        consents,
        policy=policy,
        all_patients=False,
        groups={"Group/medecins": MEDECINS},
    )
    search = parse_search(
        DOCUMENT_REFERENCE,
        [("patient", "p1"), ("status", "current")],
        registry=REGISTRY,
        strict=True,
        base_url=BASE_URL,
    )
    criteria = await compile_filter(search, resolve=_no_chain)
    query = guarded_filter(guard, DOCUMENT_REFERENCE, conjunction([{"del": False}, criteria]))

    assert not [key for key in query if key.startswith("$")], query
    explained = await mongo_db[DOCUMENT_REFERENCE].find(query).explain()
    plan = str(explained["queryPlanner"]["winningPlan"])
    assert "IXSCAN" in plan and "COLLSCAN" not in plan, plan
    assert "'keyPattern': {'idx.patient': 1, 'idx.status': 1" in plan, plan
    found = [
        StoredResource.from_document(DOCUMENT_REFERENCE, item)
        async for item in mongo_db[DOCUMENT_REFERENCE].find(query)
    ]
    assert all(guard.decide(stored).permit for stored in found)
    assert {stored.id for stored in found} == expected
