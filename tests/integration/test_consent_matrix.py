"""Consent leak matrix on the embedded database: every consent situation x every access path.

Covers docs/tokens.md (token claims an actor is matched by), docs/consent.md (consent semantics, fixed
rules, masking,
break-the-glass, read-only professions), I1, I3 and I4, and issue 4 "Tests that must exist": for each
situation a professional (or the patient) reads, vreads, reads history, searches (type and system
level, `patient=`, chained `patient.identifier=`, `_has`, `_include`, `_revinclude`, `_total`,
`_summary=count`), runs batch and transaction Bundles, and writes (plain and conditional create,
update, patch, delete); what is hidden must be absent from every answer, and a 404 on a hidden
resource must be byte-identical (but for the id) to the 404 on an unknown one.

History semantics asserted (docs/consent.md "hidden documents do not appear in ... history",
docs/architecture.md I3 "evaluated
on the current state"): a version is shown only when that version *and* the current version are
permitted, so a document masked today hides its earlier versions too, and once unmasked its
masked version stays hidden from professionals (the patient sees every version).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Server, nir_test_value, patient_resource

pytestmark = pytest.mark.asyncio

INS = "urn:oid:1.2.250.1.213.1.4.10"
IDNPS = "urn:oid:1.2.250.1.71.4.2.1"
G15 = "https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante"
R95 = "https://mos.esante.gouv.fr/NOS/TRE_R95-UsagerTitre/FHIR/TRE-R95-UsagerTitre"
VISIBILITY = (
    "https://mos.esante.gouv.fr/NOS/TRE_A07-StatutVisibiliteDocument/FHIR/TRE-A07-StatutVisibiliteDocument"
)
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
LOINC = "http://loinc.org"
MASTER_ID = "urn:ietf:rfc:3986"
JSON_PATCH = "application/json-patch+json"
IRCP = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]}

NOTE, DISCHARGE, LAB = "11488-4", "18842-5", "11502-2"
"""LOINC consultation note, discharge summary, laboratory report."""

MASKED = [{"coding": [{"system": VISIBILITY, "code": "MASQUE_PS"}]}]
UNMASKED = [{"coding": [{"system": CONFIDENTIALITY, "code": "N"}]}]
RESTRICTED = [{"coding": [{"system": CONFIDENTIALITY, "code": "R"}]}]
INVISIBLE = [{"coding": [{"system": VISIBILITY, "code": "INVISIBLE_PATIENT"}]}]


# The server: `deny_server` (tests/integration/conftest.py), FHIR_CONSENT_DEFAULT=deny as deployed.


# -- who asks ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Professional:
    key: str
    npi: str
    role: tuple[str, str] = (G15, "10")
    purpose: str = "TREAT"
    name: str = "Dr"

    @property
    def fhir_user(self) -> str:
        return f"Practitioner/{self.key}"

    def headers(self, server: Server) -> dict[str, str]:
        iua = {
            "subject_name": self.name,
            "subject_role": [{"system": self.role[0], "code": self.role[1]}],
            "purpose_of_use": [{"system": ACT_REASON, "code": self.purpose}],
            "national_provider_identifier": self.npi,
        }
        token = server.token(scopes=["user/*.cruds"], sub=self.key, fhir_user=self.fhir_user, iua=iua)
        return server.headers(token)


PROFESSIONALS = {
    pro.key: pro
    for pro in (
        Professional("dr-martin", "810003456789", name="Dr Paul Martin"),
        Professional("dr-durand", "810002345678", name="Dr Jeanne Durand"),
        Professional("dr-bernard", "810004567890", name="Dr Luc Bernard"),
        Professional("dr-petit", "810005678901", purpose="BTG", name="Dr Anne Petit (urgences)"),
        Professional(
            "inf-roux", "810006789012", role=(G15, "60"), purpose="BTG", name="Marc Roux, infirmier"
        ),
        Professional("osteo-leroy", "810007890123", role=(R95, "71"), name="Julie Leroy, ostéopathe"),
        Professional("dr-author", "810008901234", name="Dr Claire Fabre"),
    )
}
PATIENT_VIEWER = "patient"
OTHER_PATIENT_VIEWER = "other-patient"


def patient_headers(server: Server, patient_id: str, nir: str) -> dict[str, str]:
    token = server.token(
        scopes=["patient/*.cruds"],
        sub=f"usager-{patient_id}",
        fhir_user=f"Patient/{patient_id}",
        patient=patient_id,
        iua={"subject_name": "Claire Martin", "person_id": f"{nir}^^^&{INS}&ISO"},
    )
    return server.headers(token)


# -- consents, built as a patient writes them (profiles/fhir-server-consent.schema.json) -------------


def actor_reference(reference: str) -> dict[str, Any]:
    return {"role": IRCP, "reference": {"reference": reference}}


def actor_idnps(npi: str) -> dict[str, Any]:
    return {
        "role": IRCP,
        "reference": {"type": "Practitioner", "identifier": {"system": IDNPS, "value": npi}},
    }


def consent(patient_id: str, provision: dict[str, Any], *, status: str = "active") -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "status": status,
        "scope": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
            ]
        },
        "category": [{"coding": [{"system": LOINC, "code": "59284-0", "display": "Patient Consent"}]}],
        "patient": {"reference": f"Patient/{patient_id}"},
        "dateTime": "2026-09-01T10:00:00+02:00",
        "policyRule": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]
        },
        "provision": provision,
    }


def permit_only(*actors: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Opt-in: deny everyone, except the named actors (nested permit)."""
    return {"type": "deny", "provision": [{"type": "permit", "actor": list(actors), **extra}]}


ConsentFactory = Callable[[str], dict[str, Any]]

CONSENTS: dict[str, tuple[ConsentFactory, ...]] = {
    "no-consent": (),
    "permit-reference": (
        lambda p: consent(
            p,
            permit_only(
                actor_reference("Practitioner/dr-martin"),
                provision=[{"type": "deny", "code": [{"coding": [{"system": LOINC, "code": LAB}]}]}],
            ),
        ),
    ),
    "permit-idnps": (lambda p: consent(p, permit_only(actor_idnps("810002345678"))),),
    "deny-one": (
        lambda p: consent(
            p,
            {
                "type": "permit",
                "provision": [{"type": "deny", "actor": [actor_reference("Practitioner/dr-bernard")]}],
            },
        ),
    ),
    "masked": (lambda p: consent(p, permit_only(actor_reference("Practitioner/dr-martin"))),),
    "restricted": (
        lambda p: consent(
            p,
            permit_only(
                actor_reference("Practitioner/dr-martin"),
                securityLabel=[{"system": CONFIDENTIALITY, "code": "N"}],
            ),
        ),
    ),
    "expired": (
        lambda p: consent(
            p,
            {
                "type": "permit",
                "period": {"start": "2020-01-01", "end": "2021-01-01"},
                "actor": [actor_reference("Practitioner/dr-martin")],
            },
        ),
    ),
    "btg": (),
    "btg-refused": (
        lambda p: consent(p, {"type": "deny", "purpose": [{"system": ACT_REASON, "code": "BTG"}]}),
    ),
    "read-only": (
        lambda p: consent(
            p,
            permit_only(
                actor_reference("Practitioner/osteo-leroy"),
                action=[
                    {
                        "coding": [
                            {"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": code}
                        ]
                    }
                    for code in ("access", "collect", "correct")
                ],
            ),
        ),
    ),
    "patient-self": (lambda p: consent(p, permit_only(actor_reference("Practitioner/dr-martin"))),),
    "author": (),
}
"""Per situation, the consents its patient records through the API."""

SPECIAL: dict[str, str] = {
    "masked": "masked",
    "btg": "masked",
    "restricted": "restricted",
    "patient-self": "invisible",
    "author": "authored",
}
"""The situation's extra document, if any; the `addendum` document relates to it (else to `lab`)."""


# -- the data of one situation -----------------------------------------------------------------------


@dataclass
class Built:
    situation: str
    patient_id: str
    nir: str
    patient_headers: dict[str, str]
    docs: dict[str, str] = field(default_factory=dict)
    """document key -> id"""
    master: dict[str, str] = field(default_factory=dict)
    """document key -> masterIdentifier value"""
    codes: dict[str, str] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    masked_versions: dict[str, set[int]] = field(default_factory=dict)
    """document key -> versions that carry MASQUE_PS"""
    consents: list[str] = field(default_factory=list)

    def key_of(self, doc_id: str) -> str | None:
        return next((key for key, value in self.docs.items() if value == doc_id), None)


def document(
    patient_id: str,
    code: str,
    *,
    author: str | None = None,
    labels: list[Any] | None = None,
    relates_to: str | None = None,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "masterIdentifier": {
            "system": MASTER_ID,
            "value": f"urn:oid:1.2.250.1.999.1.{uuid.uuid4().int % 10**12}",
        },
        "status": "current",
        "type": {"coding": [{"system": LOINC, "code": code}]},
        "category": [{"coding": [{"system": LOINC, "code": "11369-6"}]}],
        "subject": {"reference": f"Patient/{patient_id}"},
        "date": "2026-10-01T09:30:00+02:00",
        "author": [{"reference": author or "Practitioner/dr-author-other"}],
        "content": [
            {
                "attachment": {
                    "contentType": "application/pdf",
                    "url": f"https://documents.example.org/{uuid.uuid4()}.pdf",
                }
            }
        ],
    }
    if labels:
        resource["securityLabel"] = labels
    if relates_to:
        resource["relatesTo"] = [
            {"code": "appends", "target": {"reference": f"DocumentReference/{relates_to}"}}
        ]
    return resource


async def created(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    return dict(response.json())


async def add_document(
    server: Server, built: Built, key: str, code: str, headers: dict[str, str], **kw: Any
) -> None:
    body = await created(
        await server.http.post(
            "/fhir/DocumentReference", json=document(built.patient_id, code, **kw), headers=headers
        )
    )
    built.docs[key] = body["id"]
    built.master[key] = body["masterIdentifier"]["value"]
    built.codes[key] = code
    built.versions[key] = 1


async def json_patch(
    server: Server, path: str, operations: list[dict[str, Any]], headers: dict[str, str]
) -> httpx.Response:
    return await server.http.patch(
        f"/fhir/{path}", content=json.dumps(operations), headers={**headers, "Content-Type": JSON_PATCH}
    )


async def mask(server: Server, built: Built, key: str, labels: list[Any]) -> None:
    """The patient sets a document's securityLabel with a JSON Patch (DMP masking, docs/consent.md)."""
    response = await json_patch(
        server,
        f"DocumentReference/{built.docs[key]}",
        [{"op": "add", "path": "/securityLabel", "value": labels}],
        built.patient_headers,
    )
    assert response.status_code == 200, response.text
    built.versions[key] = int(response.json()["meta"]["versionId"])
    if labels == MASKED:
        built.masked_versions.setdefault(key, set()).add(built.versions[key])


async def build(server: Server, situation: str) -> Built:
    nir = nir_test_value()
    patient = await created(
        await server.http.post("/fhir/Patient", json=patient_resource(nir=nir), headers=server.as_system())
    )
    built = Built(situation, patient["id"], nir, patient_headers(server, patient["id"], nir))
    own = built.patient_headers
    for factory in CONSENTS[situation]:
        body = await created(
            await server.http.post("/fhir/Consent", json=factory(built.patient_id), headers=own)
        )
        built.consents.append(body["id"])
    for key, code in (("note", NOTE), ("discharge", DISCHARGE), ("lab", LAB)):
        await add_document(server, built, key, code, own)
    special = SPECIAL.get(situation)
    if special == "masked":
        await add_document(server, built, "masked", NOTE, own)
        await mask(server, built, "masked", MASKED)
    elif special == "restricted":
        await add_document(server, built, "restricted", DISCHARGE, own, labels=RESTRICTED)
    elif special == "invisible":
        martin = PROFESSIONALS["dr-martin"].headers(server)
        await add_document(
            server, built, "invisible", LAB, martin, labels=INVISIBLE, author="Practitioner/dr-martin"
        )
    elif special == "authored":
        await add_document(server, built, "authored", DISCHARGE, own, author="Practitioner/dr-author")
        await mask(server, built, "authored", MASKED)
    await add_document(server, built, "addendum", NOTE, own, relates_to=built.docs[special or "lab"])
    return built


# -- the cases: a situation, a viewer, and what the viewer must see ---------------------------------


@dataclass(frozen=True)
class Case:
    situation: str
    viewer: str
    visible: frozenset[str]
    """Document keys the viewer sees; every other document of the situation is hidden."""
    patient_visible: bool
    may_collect: bool = False
    may_correct: bool = False

    @property
    def id(self) -> str:
        return f"{self.situation}:{self.viewer}"

    @property
    def sees_masked_versions(self) -> bool:
        """The patient and the author see a document's masked versions; other professionals do not."""
        return self.viewer in (PATIENT_VIEWER, "dr-author")


def expected_versions(built: Built, case: Case, key: str) -> list[int]:
    """Newest first: every version of a visible document but, for professionals, its masked ones."""
    masked = set() if case.sees_masked_versions else built.masked_versions.get(key, set())
    return [version for version in range(built.versions[key], 0, -1) if version not in masked]


BASIC = frozenset({"note", "discharge", "lab", "addendum"})
NOTHING: frozenset[str] = frozenset()

CASES = [
    Case("no-consent", "dr-martin", NOTHING, False),
    Case("no-consent", OTHER_PATIENT_VIEWER, NOTHING, False),
    Case("permit-reference", "dr-martin", BASIC - {"lab"}, True, True, True),
    Case("permit-reference", "dr-bernard", NOTHING, False),
    Case("permit-idnps", "dr-durand", BASIC, True, True, True),
    Case("permit-idnps", "dr-martin", NOTHING, False),
    Case("deny-one", "dr-martin", BASIC, True, True, True),
    Case("deny-one", "dr-bernard", NOTHING, False),
    Case("masked", "dr-martin", BASIC, True, True, True),
    Case("masked", PATIENT_VIEWER, BASIC | {"masked"}, True, True, True),
    Case("restricted", "dr-martin", BASIC, True, True, True),
    Case("expired", "dr-martin", NOTHING, False),
    Case("btg", "dr-petit", BASIC, True),
    Case("btg", "inf-roux", NOTHING, False),
    Case("btg", "dr-martin", NOTHING, False),
    Case("btg-refused", "dr-petit", NOTHING, False),
    Case("read-only", "osteo-leroy", BASIC, True),
    Case("patient-self", PATIENT_VIEWER, BASIC, True, True, True),
    Case("patient-self", "dr-martin", BASIC | {"invisible"}, True, True, True),
    Case("author", "dr-author", frozenset({"authored"}), False),
    Case("author", "dr-martin", NOTHING, False),
]


@dataclass
class World:
    server: Server
    built: dict[str, Built]
    other_patient: Built
    since: str

    def headers(self, case: Case) -> dict[str, str]:
        if case.viewer == PATIENT_VIEWER:
            return self.built[case.situation].patient_headers
        if case.viewer == OTHER_PATIENT_VIEWER:
            return self.other_patient.patient_headers
        return PROFESSIONALS[case.viewer].headers(self.server)


def instant_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.fixture(scope="module")
async def world(deny_server: Server) -> World:
    since = instant_now()
    built = {situation: await build(deny_server, situation) for situation in CONSENTS}
    other = await build(deny_server, "no-consent")
    return World(deny_server, built, other, since)


# -- helpers on answers ------------------------------------------------------------------------------


def ids_in(
    bundle: dict[str, Any], mode: str = "match", resource_type: str = "DocumentReference"
) -> list[str]:
    return [
        entry["resource"]["id"]
        for entry in bundle.get("entry") or []
        if entry.get("search", {}).get("mode", "match") == mode
        and entry["resource"]["resourceType"] == resource_type
    ]


def keys(built: Built, ids: list[str]) -> set[str]:
    return {key for key in (built.key_of(item) for item in ids) if key is not None}


def without_id(body: dict[str, Any], *ids: str) -> str:
    text = json.dumps(body, sort_keys=True)
    for item in ids:
        text = text.replace(item, "<id>")
    return text


async def unknown_read_body(server: Server, headers: dict[str, str], path: str) -> tuple[str, dict[str, Any]]:
    unknown = str(uuid.uuid4())
    response = await server.http.get(f"/fhir/{path.format(id=unknown)}", headers=headers)
    assert response.status_code == 404, response.text
    return unknown, dict(response.json())


async def get_json(server: Server, url: str, headers: dict[str, str], status: int = 200) -> dict[str, Any]:
    response = await server.http.get(url, headers=headers)
    assert response.status_code == status, f"GET {url}: {response.status_code} {response.text}"
    return dict(response.json())


# -- read paths --------------------------------------------------------------------------------------

Check = Callable[[World, Case], Awaitable[None]]


async def check_read(world: World, case: Case) -> None:
    server, built, headers = world.server, world.built[case.situation], world.headers(case)
    unknown, unknown_body = await unknown_read_body(server, headers, "DocumentReference/{id}")
    for key, doc_id in built.docs.items():
        response = await server.http.get(f"/fhir/DocumentReference/{doc_id}", headers=headers)
        if key in case.visible:
            assert response.status_code == 200, f"{key} must be readable: {response.text}"
            assert response.json()["id"] == doc_id
        else:
            assert response.status_code == 404, f"LEAK: hidden {key} answered {response.status_code}"
            assert without_id(response.json(), doc_id) == without_id(unknown_body, unknown), (
                f"LEAK: the 404 on hidden {key} differs from the 404 on an unknown id"
            )


async def check_read_patient(world: World, case: Case) -> None:
    server, built, headers = world.server, world.built[case.situation], world.headers(case)
    unknown, unknown_body = await unknown_read_body(server, headers, "Patient/{id}")
    response = await server.http.get(f"/fhir/Patient/{built.patient_id}", headers=headers)
    if case.patient_visible:
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 404, f"LEAK: hidden Patient answered {response.status_code}"
        assert without_id(response.json(), built.patient_id) == without_id(unknown_body, unknown)


async def check_vread(world: World, case: Case) -> None:
    server, built, headers = world.server, world.built[case.situation], world.headers(case)
    unknown, unknown_body = await unknown_read_body(server, headers, "DocumentReference/{id}/_history/1")
    for key, doc_id in built.docs.items():
        shown = expected_versions(built, case, key) if key in case.visible else []
        for version in range(1, built.versions[key] + 1):
            response = await server.http.get(
                f"/fhir/DocumentReference/{doc_id}/_history/{version}", headers=headers
            )
            if version in shown:
                assert response.status_code == 200, f"{key} v{version} must be readable: {response.text}"
            else:
                assert response.status_code == 404, (
                    f"LEAK: vread of hidden {key} version {version} (current version "
                    f"{built.versions[key]}) answered {response.status_code}"
                )
                assert without_id(response.json(), doc_id) == without_id(unknown_body, unknown)


async def check_instance_history(world: World, case: Case) -> None:
    server, built, headers = world.server, world.built[case.situation], world.headers(case)
    for query in ("", "?_since=2000-01-01T00:00:00Z"):
        unknown, unknown_body = await unknown_read_body(
            server, headers, "DocumentReference/{id}/_history" + query
        )
        for key, doc_id in built.docs.items():
            response = await server.http.get(
                f"/fhir/DocumentReference/{doc_id}/_history{query}", headers=headers
            )
            if key in case.visible:
                assert response.status_code == 200, response.text
                versions = [
                    int(e["resource"]["meta"]["versionId"]) for e in response.json().get("entry") or []
                ]
                assert versions == expected_versions(built, case, key), f"{key}: versions {versions}"
            else:
                shown = response.json().get("entry") if response.status_code == 200 else None
                assert response.status_code == 404, (
                    f"LEAK: history{query} of hidden {key} (current v{built.versions[key]}) answered "
                    f"{response.status_code} with {len(shown or [])} version(s)"
                )
                assert without_id(response.json(), doc_id) == without_id(unknown_body, unknown)


async def check_type_history(world: World, case: Case) -> None:
    server, built, headers = world.server, world.built[case.situation], world.headers(case)
    body = await get_json(
        server, f"/fhir/DocumentReference/_history?_since={world.since}&_count=1000", headers
    )
    seen: dict[str, list[int]] = {}
    for entry in body.get("entry") or []:
        resource = entry.get("resource")
        if resource is None:
            continue
        if case.viewer in (PATIENT_VIEWER, OTHER_PATIENT_VIEWER):
            own = built if case.viewer == PATIENT_VIEWER else world.other_patient
            assert resource["subject"]["reference"] == f"Patient/{own.patient_id}", (
                "LEAK: a patient token's type history shows another patient's document"
            )
        key = built.key_of(resource["id"])
        if key is not None:
            seen.setdefault(key, []).append(int(resource["meta"]["versionId"]))
    expected = {key: expected_versions(built, case, key) for key in case.visible}
    leaked = {key: versions for key, versions in seen.items() if key not in case.visible}
    assert not leaked, f"LEAK: type history shows versions of hidden documents {leaked}"
    assert seen == expected


async def check_search_id(world: World, case: Case) -> None:
    server, built, headers = world.server, world.built[case.situation], world.headers(case)
    ids = ",".join(built.docs.values())
    body = await get_json(server, f"/fhir/DocumentReference?_id={ids}&_total=accurate&_count=50", headers)
    assert keys(built, ids_in(body)) == case.visible
    assert body["total"] == len(case.visible), "LEAK: _total=accurate counts hidden documents"


async def check_search_patient(world: World, case: Case) -> None:
    server, built, headers = world.server, world.built[case.situation], world.headers(case)
    for params in (f"patient={built.patient_id}", f"subject=Patient/{built.patient_id}&status=current"):
        body = await get_json(server, f"/fhir/DocumentReference?{params}&_total=accurate", headers)
        assert keys(built, ids_in(body)) == case.visible
        assert len(ids_in(body)) == len(case.visible)
        assert body["total"] == len(case.visible)


async def check_search_post(world: World, case: Case) -> None:
    server, built, headers = world.server, world.built[case.situation], world.headers(case)
    response = await server.http.post(
        "/fhir/DocumentReference/_search",
        content=f"patient={built.patient_id}&_total=accurate",
        headers={**headers, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text
    assert keys(built, ids_in(response.json())) == case.visible
    assert response.json()["total"] == len(case.visible)


async def check_search_system(world: World, case: Case) -> None:
    server, built, headers = world.server, world.built[case.situation], world.headers(case)
    ids = ",".join([*built.docs.values(), built.patient_id])
    body = await get_json(server, f"/fhir?_type=DocumentReference,Patient&_id={ids}&_total=accurate", headers)
    assert keys(built, ids_in(body)) == case.visible
    assert (built.patient_id in ids_in(body, resource_type="Patient")) == case.patient_visible
    assert body["total"] == len(case.visible) + int(case.patient_visible), "LEAK: system search total"


async def check_summary_count(world: World, case: Case) -> None:
    server, built, headers = world.server, world.built[case.situation], world.headers(case)
    for params in (f"patient={built.patient_id}", f"_id={','.join(built.docs.values())}"):
        body = await get_json(server, f"/fhir/DocumentReference?{params}&_summary=count", headers)
        assert body["total"] == len(case.visible), "LEAK: _summary=count counts hidden documents"
        assert not body.get("entry")


async def check_chain(world: World, case: Case) -> None:
    server, built, headers = world.server, world.built[case.situation], world.headers(case)
    body = await get_json(
        server, f"/fhir/DocumentReference?patient.identifier={INS}|{built.nir}&_total=accurate", headers
    )
    expected = case.visible if case.patient_visible else NOTHING
    assert keys(built, ids_in(body)) == expected
    assert body["total"] == len(expected)


async def check_has(world: World, case: Case) -> None:
    server, built, headers = world.server, world.built[case.situation], world.headers(case)
    for code in (NOTE, DISCHARGE, LAB):
        body = await get_json(
            server,
            f"/fhir/Patient?_id={built.patient_id}&_has:DocumentReference:patient:type={LOINC}|{code}&_total=accurate",
            headers,
        )
        found = built.patient_id in ids_in(body, resource_type="Patient")
        expected = case.patient_visible and any(built.codes[key] == code for key in case.visible)
        assert found == expected, (
            f"LEAK: _has type={code} answers {found}, visible documents {sorted(case.visible)}"
        )
        assert body["total"] == int(expected)


async def check_include(world: World, case: Case) -> None:
    server, built, headers = world.server, world.built[case.situation], world.headers(case)
    ids = ",".join(built.docs.values())
    body = await get_json(
        server,
        f"/fhir/DocumentReference?_id={ids}&_include=DocumentReference:relatesto"
        "&_include=DocumentReference:patient&_count=50",
        headers,
    )
    assert keys(built, ids_in(body)) == case.visible
    included = keys(built, ids_in(body, "include"))
    assert included <= case.visible, f"LEAK: _include brought hidden documents {included - case.visible}"
    target = SPECIAL.get(case.situation, "lab")
    if "addendum" in case.visible and target in case.visible:
        assert target in keys(built, ids_in(body)) | included
    patients = ids_in(body, "include", "Patient")
    assert patients == ([built.patient_id] if case.patient_visible and case.visible else []), (
        "LEAK: _include brought a hidden Patient"
        if not case.patient_visible
        else "the Patient must be included"
    )


async def check_revinclude(world: World, case: Case) -> None:
    server, built, headers = world.server, world.built[case.situation], world.headers(case)
    body = await get_json(
        server,
        f"/fhir/Patient?_id={built.patient_id}&_revinclude=DocumentReference:patient&_total=accurate",
        headers,
    )
    assert (ids_in(body, resource_type="Patient") == [built.patient_id]) == case.patient_visible
    assert body["total"] == int(case.patient_visible)
    expected = case.visible if case.patient_visible else NOTHING
    assert keys(built, ids_in(body, "include")) == expected, "LEAK: _revinclude brought hidden documents"
    ids = ",".join(built.docs.values())
    body = await get_json(
        server,
        f"/fhir/DocumentReference?_id={ids}&_revinclude=DocumentReference:relatesto&_count=50",
        headers,
    )
    included = keys(built, ids_in(body, "include"))
    assert included <= case.visible, f"LEAK: _revinclude brought hidden documents {included - case.visible}"


def bundle(kind: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def get_entry(url: str) -> dict[str, Any]:
    return {"request": {"method": "GET", "url": url}}


async def check_bundles(world: World, case: Case) -> None:
    server, built, headers = world.server, world.built[case.situation], world.headers(case)
    order = list(built.docs)
    entries = [get_entry(f"DocumentReference/{built.docs[key]}") for key in order]
    entries.append(get_entry(f"DocumentReference?patient={built.patient_id}&_total=accurate"))
    entries.append(get_entry(f"DocumentReference/{built.docs['note']}/_history/1"))
    for kind in ("batch", "transaction"):
        response = await server.http.post("/fhir", json=bundle(kind, entries), headers=headers)
        assert response.status_code == 200, response.text
        answers = response.json()["entry"]
        statuses = {key: answers[i]["response"]["status"].split()[0] for i, key in enumerate(order)}
        expected = {key: "200" if key in case.visible else "404" for key in order}
        assert statuses == expected, f"LEAK in {kind}: {statuses}"
        for i, key in enumerate(order):
            if key not in case.visible:
                assert "resource" not in answers[i], f"LEAK: {kind} entry carries hidden {key}"
        searchset = answers[len(order)]["resource"]
        assert keys(built, ids_in(searchset)) == case.visible
        assert searchset["total"] == len(case.visible)
        assert answers[-1]["response"]["status"].startswith("200" if "note" in case.visible else "404"), (
            f"LEAK: {kind} vread of note version 1 answered {answers[-1]['response']['status']}"
        )


PATHS: dict[str, Check] = {
    "read": check_read,
    "read-patient": check_read_patient,
    "vread": check_vread,
    "history-instance": check_instance_history,
    "history-type": check_type_history,
    "search-id": check_search_id,
    "search-patient": check_search_patient,
    "search-post": check_search_post,
    "search-system": check_search_system,
    "summary-count": check_summary_count,
    "chain": check_chain,
    "has": check_has,
    "include": check_include,
    "revinclude": check_revinclude,
    "batch-transaction": check_bundles,
}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_access_path_shows_exactly_what_consent_permits(world: World, case: Case, path: str) -> None:
    await PATHS[path](world, case)


# -- writes: a hidden match is neither revealed nor modified; permitted writes pass ------------------


async def stored_version(server: Server, doc_id: str) -> int:
    found = await server.database.DocumentReference.find_one({"_id": doc_id})
    assert found is not None
    return int(found["vid"])


async def check_hidden_untouched(server: Server, built: Built, before: dict[str, int]) -> None:
    after = {key: await stored_version(server, doc_id) for key, doc_id in built.docs.items() if key in before}
    assert after == before, f"LEAK: a write modified a hidden document: before {before}, after {after}"


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_writes_never_reveal_nor_touch_hidden_documents(deny_server: Server, case: Case) -> None:
    server = deny_server
    built = await build(server, case.situation)
    other = await build(server, "no-consent") if case.viewer == OTHER_PATIENT_VIEWER else None
    if case.viewer == PATIENT_VIEWER:
        headers = built.patient_headers
    elif other is not None:
        headers = other.patient_headers
    else:
        headers = PROFESSIONALS[case.viewer].headers(server)
    hidden = [key for key in built.docs if key not in case.visible]
    before = {key: await stored_version(server, built.docs[key]) for key in hidden}
    patch_ops = [{"op": "replace", "path": "/status", "value": "entered-in-error"}]
    unknown = str(uuid.uuid4())

    async def same_as_unknown(
        response: httpx.Response, unknown_response: httpx.Response, what: str, *ids: str
    ) -> None:
        assert response.status_code == unknown_response.status_code, (
            f"LEAK: {what} on a hidden document answered {response.status_code}, "
            f"on an unknown one {unknown_response.status_code}: {response.text}"
        )
        if unknown_response.content:
            assert without_id(response.json(), *ids) == without_id(
                unknown_response.json(), unknown, "nomatch"
            )

    for key in hidden:
        doc_id = built.docs[key]
        body = document(built.patient_id, NOTE) | {"id": doc_id}
        response = await server.http.put(f"/fhir/DocumentReference/{doc_id}", json=body, headers=headers)
        assert response.status_code == 404, (
            f"LEAK: PUT on hidden {key}: {response.status_code} {response.text}"
        )
        for path in (f"DocumentReference/{doc_id}", f"DocumentReference/{unknown}"):
            response = await json_patch(server, path, patch_ops, headers)
            assert response.status_code == 404, f"LEAK: PATCH on hidden {key}: {response.status_code}"
        hidden_delete = await server.http.delete(f"/fhir/DocumentReference/{doc_id}", headers=headers)
        unknown_delete = await server.http.delete(f"/fhir/DocumentReference/{unknown}", headers=headers)
        await same_as_unknown(hidden_delete, unknown_delete, "DELETE", doc_id)

        condition = f"identifier={MASTER_ID}|{built.master[key]}"
        no_match = f"identifier={MASTER_ID}|nomatch"
        await same_as_unknown(
            await json_patch(server, f"DocumentReference?{condition}", patch_ops, headers),
            await json_patch(server, f"DocumentReference?{no_match}", patch_ops, headers),
            "conditional PATCH",
            built.master[key],
        )
        await same_as_unknown(
            await server.http.delete(f"/fhir/DocumentReference?{condition}", headers=headers),
            await server.http.delete(f"/fhir/DocumentReference?{no_match}", headers=headers),
            "conditional DELETE",
            built.master[key],
        )
        fresh = document(built.patient_id, NOTE)
        response = await server.http.put(f"/fhir/DocumentReference?{condition}", json=fresh, headers=headers)
        assert response.status_code == (201 if case.may_collect else 403), (
            f"LEAK: conditional update matching hidden {key} answered {response.status_code}: {response.text}"
        )
        if response.status_code == 201:
            assert response.json()["id"] != doc_id
        response = await server.http.post(
            "/fhir/DocumentReference",
            json=document(built.patient_id, NOTE),
            headers={**headers, "If-None-Exist": condition},
        )
        assert response.status_code == (201 if case.may_collect else 403), (
            f"LEAK: If-None-Exist matching hidden {key} answered {response.status_code}: {response.text}"
        )
        if response.status_code == 201:
            assert response.json()["id"] != doc_id
        put_entry = {
            "resource": document(built.patient_id, NOTE) | {"id": doc_id},
            "request": {"method": "PUT", "url": f"DocumentReference/{doc_id}"},
        }
        response = await server.http.post("/fhir", json=bundle("transaction", [put_entry]), headers=headers)
        assert response.status_code == 404, f"LEAK: transaction PUT on hidden {key}: {response.status_code}"
        patch_entry = {
            "resource": {
                "resourceType": "Binary",
                "contentType": JSON_PATCH,
                "data": base64.b64encode(json.dumps(patch_ops).encode()).decode(),
            },
            "request": {"method": "PATCH", "url": f"DocumentReference/{doc_id}"},
        }
        response = await server.http.post("/fhir", json=bundle("batch", [patch_entry]), headers=headers)
        assert response.json()["entry"][0]["response"]["status"].startswith("404")
    await check_hidden_untouched(server, built, before)

    create = await server.http.post(
        "/fhir/DocumentReference", json=document(built.patient_id, DISCHARGE), headers=headers
    )
    assert create.status_code == (201 if case.may_collect else 403), create.text
    post_entry = {
        "resource": document(built.patient_id, DISCHARGE),
        "request": {"method": "POST", "url": "DocumentReference"},
    }
    response = await server.http.post("/fhir", json=bundle("transaction", [post_entry]), headers=headers)
    assert response.status_code == (200 if case.may_collect else 403), response.text
    if "note" in case.visible:
        doc_id = built.docs["note"]
        current = await get_json(server, f"/fhir/DocumentReference/{doc_id}", headers)
        current["description"] = "Compte rendu de consultation, relu"
        response = await server.http.put(f"/fhir/DocumentReference/{doc_id}", json=current, headers=headers)
        assert response.status_code == (200 if case.may_correct else 403), response.text
        ops = [{"op": "add", "path": "/description", "value": "relu"}]
        response = await json_patch(server, f"DocumentReference/{doc_id}", ops, headers)
        assert response.status_code == (200 if case.may_correct else 403), response.text


# -- changes over time: masking, revocation, new and changed consents (docs/architecture.md I3)
# ---------------------


async def failures_on_every_path(server: Server, built: Built, case: Case, since: str) -> list[str]:
    """Every read path checked for `case`; the failures, named by path (empty when none leaks)."""
    world = World(server, {built.situation: built}, built, since)
    failures = []
    for name, check in PATHS.items():
        try:
            await check(world, case)
        except AssertionError as error:
            failures.append(f"{name}: {str(error).splitlines()[0]}")
    return failures


async def assert_every_path(server: Server, built: Built, case: Case, since: str, why: str = "") -> None:
    failures = await failures_on_every_path(server, built, case, since)
    assert not failures, "\n".join([f"{case.id} {why}".strip(), *failures])


async def test_masking_and_unmasking_by_the_patient_apply_to_every_path(deny_server: Server) -> None:
    server, since = deny_server, instant_now()
    built = await build(server, "permit-idnps")
    seen_by_durand = Case("permit-idnps", "dr-durand", BASIC, True)
    await assert_every_path(server, built, seen_by_durand, since)

    await mask(server, built, "note", MASKED)
    masked = Case("permit-idnps", "dr-durand", BASIC - {"note"}, True)
    await assert_every_path(
        server,
        built,
        masked,
        since,
        "a document masked by the patient (MASQUE_PS) must vanish from every path, earlier versions included",
    )

    await mask(server, built, "note", UNMASKED)
    assert built.versions["note"] == 3
    await assert_every_path(server, built, seen_by_durand, since)
    doc_id = built.docs["note"]
    history = await get_json(server, f"/fhir/DocumentReference/{doc_id}/_history", built.patient_headers)
    labels = {
        entry["resource"]["meta"]["versionId"]: [
            c["code"] for s in entry["resource"].get("securityLabel", []) for c in s["coding"]
        ]
        for entry in history["entry"]
    }
    assert labels == {"3": ["N"], "2": ["MASQUE_PS"], "1": []}, "the patient sees who masked what and when"


async def test_revoked_changed_and_new_consents_apply_on_the_very_next_request(deny_server: Server) -> None:
    server, since = deny_server, instant_now()
    built = await build(server, "permit-idnps")
    durand_sees = Case("permit-idnps", "dr-durand", BASIC, True, True, True)
    durand_blind = Case("permit-idnps", "dr-durand", NOTHING, False)
    bernard_sees = Case("permit-idnps", "dr-bernard", BASIC, True)
    bernard_blind = Case("permit-idnps", "dr-bernard", NOTHING, False)
    await assert_every_path(server, built, durand_sees, since)
    consent_id = built.consents[0]
    own = built.patient_headers

    current = await get_json(server, f"/fhir/Consent/{consent_id}", own)
    response = await server.http.put(
        f"/fhir/Consent/{consent_id}", json=current | {"status": "inactive"}, headers=own
    )
    assert response.status_code == 200, response.text
    await assert_every_path(server, built, durand_blind, since, "revocation must apply at once")

    current = await get_json(server, f"/fhir/Consent/{consent_id}", own)
    changed = current | {
        "status": "active",
        "provision": permit_only(actor_reference("Practitioner/dr-bernard")),
    }
    response = await server.http.put(f"/fhir/Consent/{consent_id}", json=changed, headers=own)
    assert response.status_code == 200, response.text
    await assert_every_path(server, built, durand_blind, since)
    await assert_every_path(server, built, bernard_sees, since)

    response = await server.http.delete(f"/fhir/Consent/{consent_id}", headers=own)
    assert response.status_code == 204, response.text
    await assert_every_path(server, built, bernard_blind, since, "a deleted consent no longer applies")

    fresh = consent(built.patient_id, permit_only(actor_idnps("810002345678")))
    await created(await server.http.post("/fhir/Consent", json=fresh, headers=own))
    await assert_every_path(server, built, durand_sees, since, "a new consent applies at once")


async def test_professional_cannot_record_consent_for_a_patient_it_may_not_serve(deny_server: Server) -> None:
    server = deny_server
    built = await build(server, "no-consent")
    bernard = PROFESSIONALS["dr-bernard"].headers(server)
    grant = consent(built.patient_id, permit_only(actor_reference("Practitioner/dr-bernard")))
    response = await server.http.post("/fhir/Consent", json=grant, headers=bernard)
    assert response.status_code == 403, f"a professional granted itself access: {response.text}"
    body = await get_json(
        server, f"/fhir/DocumentReference?patient={built.patient_id}&_total=accurate", bernard
    )
    assert body["total"] == 0


async def test_professional_finds_a_patient_only_by_exact_identifier(deny_server: Server) -> None:
    """docs/consent.md: without consent, `Patient?identifier=system|value` (the DMP existence check) finds the
    Patient, and nothing else of the compartment is revealed."""
    server = deny_server
    built = await build(server, "no-consent")
    bernard = PROFESSIONALS["dr-bernard"].headers(server)
    lookup = await get_json(server, f"/fhir/Patient?identifier={INS}|{built.nir}&_total=accurate", bernard)
    assert ids_in(lookup, resource_type="Patient") == [built.patient_id]
    assert lookup["total"] == 1
    for query in (
        f"identifier={INS}|{built.nir}&_revinclude=DocumentReference:patient",
        f"identifier={INS}|{built.nir}&_revinclude=Consent:patient",
        f"_id={built.patient_id}",
        f"family=Martin&birthdate=1984-03-12&_id={built.patient_id}",
        f"identifier={built.nir}",
    ):
        body = await get_json(server, f"/fhir/Patient?{query}", bernard)
        assert ids_in(body, "include") == [], f"LEAK: Patient?{query} brought the patient's records"
        assert ids_in(body, "include", "Consent") == [], (
            f"LEAK: Patient?{query} brought the patient's consents"
        )
        if "_revinclude" not in query:
            assert ids_in(body, resource_type="Patient") == [], f"LEAK: Patient?{query} found the patient"


async def learn_masked_id(server: Server, built: Built, headers: dict[str, str]) -> str:
    """A professional learns a masked document's id from a visible addendum's relatesTo."""
    addendum = await get_json(server, f"/fhir/DocumentReference/{built.docs['addendum']}", headers)
    target = str(addendum["relatesTo"][0]["target"]["reference"]).split("/")[1]
    assert target == built.docs["masked"]
    return target


async def test_conditional_update_with_a_hidden_id_answers_like_a_plain_update(deny_server: Server) -> None:
    server = deny_server
    built = await build(server, "masked")
    martin = PROFESSIONALS["dr-martin"].headers(server)
    target = await learn_masked_id(server, built, martin)
    body = document(built.patient_id, NOTE) | {"id": target}
    plain = await server.http.put(f"/fhir/DocumentReference/{target}", json=body, headers=martin)
    conditional = await server.http.put(
        f"/fhir/DocumentReference?identifier={MASTER_ID}|nomatch", json=body, headers=martin
    )
    assert plain.status_code == 404
    assert await stored_version(server, target) == built.versions["masked"]
    assert conditional.status_code == 404, (
        f"LEAK: a conditional update carrying the id of a hidden document answers {conditional.status_code} "
        "where a plain PUT answers 404 (write.py _plan_new never checks that the caller may see `previous`)"
    )


async def test_conditional_update_cannot_write_over_a_hidden_deleted_document(deny_server: Server) -> None:
    """The patient deletes a masked document; a conditional update that matches nothing but carries its
    id must not write a new version over it (which would make its unmasked version 1 visible)."""
    server = deny_server
    built = await build(server, "masked")
    martin = PROFESSIONALS["dr-martin"].headers(server)
    target = await learn_masked_id(server, built, martin)
    response = await server.http.delete(f"/fhir/DocumentReference/{target}", headers=built.patient_headers)
    assert response.status_code == 204, response.text
    before = await stored_version(server, target)
    body = document(built.patient_id, NOTE) | {"id": target}
    response = await server.http.put(
        f"/fhir/DocumentReference?identifier={MASTER_ID}|nomatch", json=body, headers=martin
    )
    after = await stored_version(server, target)
    history = await server.http.get(f"/fhir/DocumentReference/{target}/_history", headers=martin)
    shown = [e["resource"]["meta"]["versionId"] for e in history.json().get("entry") or [] if "resource" in e]
    assert (response.status_code, after) == (404, before), (
        f"LEAK: a conditional update answered {response.status_code} and wrote version {after} over the "
        f"hidden deleted document (was {before}); its history now shows versions {shown} to the professional"
    )
