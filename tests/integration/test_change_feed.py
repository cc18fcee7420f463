"""Type and system history as a change feed (storage/changes.py), on the embedded database.

Covers https://hl7.org/fhir/R4/http.html#history (type and system level, `_since`, `_count`,
deletes as DELETE entries, newest first), the R5 history `_sort=_lastUpdated` (oldest first), keyset
paging on the change marker under concurrent writes (no version lost or duplicated, a transaction
that commits late is not passed), the resume instant (`Bundle.meta.lastUpdated` as the next
`_since`), consent applied to every version (docs/architecture.md I4) and scopes per type.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fhir_server.fhir.instants import now_utc
from fhir_server.record import documents as doc
from fhir_server.storage import changes
from tests.integration.conftest import Server, document_resource, patient_resource, unique

pytestmark = pytest.mark.asyncio

PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
Version = tuple[str, str, int]
AUDIT_RETRIES = 20
"""A page spanning patients appends to their audit chains while writers do: under this churn the
sink may answer 503 (nothing served); the reader asks again, as a client would."""


def version_of(entry: dict[str, Any]) -> Version:
    """(type, id, version) of a history entry, deletes included (their ETag carries the version)."""
    resource = entry.get("resource")
    if resource is not None:
        return resource["resourceType"], resource["id"], int(resource["meta"]["versionId"])
    resource_type, resource_id = entry["request"]["url"].split("/")
    return resource_type, resource_id, int(entry["response"]["etag"].split('"')[1])


async def walk(server: Server, url: str, headers: dict[str, str]) -> tuple[list[Version], str]:
    """Follow `next` links from `url`; the versions in order and the last page's meta.lastUpdated."""
    seen: list[Version] = []
    while True:
        response = await server.http.get(url, headers=headers)
        for _ in range(AUDIT_RETRIES):
            if response.status_code != 503:
                break
            response = await server.http.get(url, headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        assert page["type"] == "history"
        seen.extend(version_of(entry) for entry in page.get("entry") or [])
        links = {link["relation"]: link["url"] for link in page.get("link") or []}
        if "next" not in links:
            return seen, page["meta"]["lastUpdated"]
        url = links["next"]


async def stored_versions(server: Server, *types: str, before: datetime | None = None) -> set[Version]:
    found: set[Version] = set()
    for resource_type in types:
        query = {} if before is None else {doc.CHANGE_TIME: {"$lt": before}}
        async for item in server.database[doc.history_collection(resource_type)].find(query):
            found.add((resource_type, item[doc.RESOURCE_ID], item[doc.VERSION]))
    return found


async def create(server: Server, path: str, body: dict[str, Any]) -> dict[str, Any]:
    headers = server.as_consent_service() if path == "Consent" else server.as_system()
    response = await server.http.post(f"/fhir/{path}", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def update(server: Server, resource: dict[str, Any]) -> dict[str, Any]:
    url = f"/fhir/{resource['resourceType']}/{resource['id']}"
    response = await server.http.put(url, json=resource, headers=server.as_system())
    assert response.status_code == 200, response.text
    return dict(response.json())


async def delete(server: Server, resource_type: str, resource_id: str) -> None:
    response = await server.http.delete(f"/fhir/{resource_type}/{resource_id}", headers=server.as_system())
    assert response.status_code in (200, 204), response.text


def instant(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# -- order, levels, deletes ---------------------------------------------------------------------------


async def test_type_history_lists_every_change_in_commit_order_deletes_included(fresh_server: Server) -> None:
    server = fresh_server
    first = await create(server, "Patient", patient_resource())
    first = await update(server, first | {"gender": "male"})
    second = await create(server, "Patient", patient_resource())
    await delete(server, "Patient", first["id"])
    expected = [
        ("Patient", first["id"], 1),
        ("Patient", first["id"], 2),
        ("Patient", second["id"], 1),
        ("Patient", first["id"], 3),
    ]
    oldest_first, _ = await walk(
        server, "/fhir/Patient/_history?_sort=_lastUpdated&_count=3", server.as_system()
    )
    assert oldest_first == expected
    newest_first, _ = await walk(server, "/fhir/Patient/_history?_count=3", server.as_system())
    assert newest_first == expected[::-1]
    page = (await server.http.get("/fhir/Patient/_history?_count=1", headers=server.as_system())).json()
    assert page["entry"][0]["request"] == {"method": "DELETE", "url": f"Patient/{first['id']}"}


async def test_system_history_merges_every_type_in_change_order(fresh_server: Server) -> None:
    server = fresh_server
    patient = await create(server, "Patient", patient_resource())
    document = await create(server, "DocumentReference", document_resource(patient["id"]))
    await update(server, patient | {"gender": "male"})
    await delete(server, "DocumentReference", document["id"])
    everything, _ = await walk(server, "/fhir/_history?_sort=_lastUpdated&_count=2", server.as_system())
    assert everything == [
        ("Patient", patient["id"], 1),
        ("DocumentReference", document["id"], 1),
        ("Patient", patient["id"], 2),
        ("DocumentReference", document["id"], 2),
    ]
    documents, _ = await walk(server, "/fhir/_history?_type=DocumentReference", server.as_system())
    assert documents == [("DocumentReference", document["id"], 2), ("DocumentReference", document["id"], 1)]
    assert all(version[0] != "AuditEvent" for version in everything)


async def test_resuming_with_the_last_pages_instant_gets_exactly_the_later_changes(
    fresh_server: Server,
) -> None:
    server = fresh_server
    patient = await create(server, "Patient", patient_resource())
    before, resume = await walk(server, "/fhir/_history?_sort=_lastUpdated", server.as_system())
    assert before == [("Patient", patient["id"], 1)]
    await update(server, patient | {"gender": "male"})
    other = await create(server, "Patient", patient_resource())
    later, _ = await walk(server, f"/fhir/_history?_sort=_lastUpdated&_since={resume}", server.as_system())
    assert later == [("Patient", patient["id"], 2), ("Patient", other["id"], 1)]


# -- concurrent writes ----------------------------------------------------------------------------------


async def churn(server: Server, writers: int, operations: int) -> None:
    """Writers creating, updating and deleting Patients and documents at the same time."""

    async def writer(seed: int) -> None:
        chance = random.Random(seed)
        patient = await create(server, "Patient", patient_resource())
        documents: list[dict[str, Any]] = []
        for _ in range(operations):
            roll = chance.random()
            if roll < 0.4 or not documents:
                documents.append(await create(server, "DocumentReference", document_resource(patient["id"])))
            elif roll < 0.7:
                documents[-1] = await update(server, documents[-1] | {"description": unique()})
            elif roll < 0.85:
                patient = await update(server, patient | {"gender": chance.choice(["male", "female"])})
            else:
                gone = documents.pop(chance.randrange(len(documents)))
                await delete(server, "DocumentReference", gone["id"])

    await asyncio.gather(*(writer(seed) for seed in range(writers)))


async def test_oldest_first_paging_during_concurrent_writes_loses_and_duplicates_nothing(
    fresh_server: Server,
) -> None:
    server = fresh_server
    writing = asyncio.create_task(churn(server, writers=4, operations=12))
    seen: list[Version] = []
    url = "/fhir/_history?_sort=_lastUpdated&_count=4"
    try:
        while not writing.done():
            versions, resume = await walk(server, url, server.as_system())
            seen.extend(versions)
            url = f"/fhir/_history?_sort=_lastUpdated&_count=4&_since={resume}"
            await asyncio.sleep(0.01)
    finally:
        await writing
    seen.extend((await walk(server, url, server.as_system()))[0])
    assert len(seen) == len(set(seen)), "a version was delivered twice"
    assert set(seen) == await stored_versions(server, "Patient", "DocumentReference")
    for earlier, later in zip(seen, seen[1:], strict=False):
        if earlier[:2] == later[:2]:
            assert earlier[2] < later[2]


async def test_newest_first_walk_is_the_snapshot_below_its_horizon_during_concurrent_writes(
    fresh_server: Server,
) -> None:
    server = fresh_server
    await churn(server, writers=2, operations=4)
    writing = asyncio.create_task(churn(server, writers=4, operations=10))
    try:
        await asyncio.sleep(0.05)
        seen, resume = await walk(server, "/fhir/_history?_count=3", server.as_system())
    finally:
        await writing
    assert len(seen) == len(set(seen))
    assert set(seen) == await stored_versions(server, "Patient", "DocumentReference", before=instant(resume))


async def test_a_transaction_that_commits_late_holds_the_feed_back_instead_of_being_skipped(
    fresh_server: Server,
) -> None:
    server = fresh_server
    repository = server.app.state.services.repository
    patient = await create(server, "Patient", patient_resource())
    _, start = await walk(server, "/fhir/_history?_sort=_lastUpdated", server.as_system())
    written = asyncio.Event()
    proceed = asyncio.Event()
    slow_id = f"slow-{unique()}"

    async def slow(session: Any) -> None:
        resource = document_resource(patient["id"]) | {"id": slow_id}
        await repository.save("DocumentReference", resource, previous=None, now=now_utc(), session=session)
        written.set()
        await proceed.wait()

    late = asyncio.create_task(repository.in_transaction(slow))
    try:
        await written.wait()
        quick = await create(server, "Patient", patient_resource())
        feed = f"/fhir/_history?_sort=_lastUpdated&_since={start}"
        held, resume = await walk(server, feed, server.as_system())
    finally:
        proceed.set()
        await late
    assert held == [], "the feed passed a transaction still in flight"
    after, _ = await walk(server, f"/fhir/_history?_sort=_lastUpdated&_since={resume}", server.as_system())
    assert after == [("Patient", quick["id"], 1), ("DocumentReference", slow_id, 1)]
    slow_version = await server.database[doc.history_collection("DocumentReference")].find_one(
        {doc.ID: f"{slow_id}/1"}
    )
    assert slow_version is not None
    assert slow_version[doc.LAST_UPDATED] < instant(quick["meta"]["lastUpdated"])


async def test_a_dead_writers_lease_holds_the_feed_back_until_it_lapses(fresh_server: Server) -> None:
    server = fresh_server
    database = server.database
    patient = await create(server, "Patient", patient_resource())
    now = now_utc()
    pending = database[changes.PENDING_COLLECTION]
    await pending.insert_one(
        {"_id": "dead-writer", "floor": 1, "at": now, "until": now + timedelta(minutes=1)}
    )
    held, _ = await walk(server, "/fhir/Patient/_history", server.as_system())
    assert held == []
    await pending.update_one({"_id": "dead-writer"}, {"$set": {"until": now - timedelta(seconds=1)}})
    released, _ = await walk(server, "/fhir/Patient/_history", server.as_system())
    assert released == [("Patient", patient["id"], 1)]
    assert await pending.count_documents({}) == 0


async def test_a_transaction_whose_lease_was_reaped_is_rerun_under_a_new_one(fresh_server: Server) -> None:
    server = fresh_server
    repository = server.app.state.services.repository
    database = server.database
    attempts = 0
    resource_id = f"reaped-{unique()}"

    async def work(session: Any) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            await database[changes.PENDING_COLLECTION].delete_many({})
        resource = patient_resource() | {"id": resource_id}
        await repository.save("Patient", resource, previous=None, now=now_utc(), session=session)

    await repository.in_transaction(work)
    assert attempts == 2
    stored = await database[doc.history_collection("Patient")].find_one({doc.ID: f"{resource_id}/1"})
    assert stored is not None and isinstance(stored[doc.CHANGE], int)


# -- consent, scopes, parameters ---------------------------------------------------------------------


def denying_consent(patient: str, practitioner: str) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": CONSENT_SCOPE, "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient}"},
        "policyRule": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT"}]
        },
        "provision": {
            "type": "deny",
            "actor": [
                {
                    "role": {"coding": [{"system": PARTICIPATION, "code": "IRCP"}]},
                    "reference": {"reference": f"Practitioner/{practitioner}"},
                }
            ],
        },
    }


async def test_consent_decides_every_version_of_the_system_feed(fresh_server: Server) -> None:
    server = fresh_server
    refusing = await create(server, "Patient", patient_resource())
    other = await create(server, "Patient", patient_resource())
    hidden = await create(server, "DocumentReference", document_resource(refusing["id"]))
    await update(server, hidden | {"description": "v2"})
    shown = await create(server, "DocumentReference", document_resource(other["id"]))
    await create(server, "Consent", denying_consent(refusing["id"], "dr-core"))
    seen, _ = await walk(server, "/fhir/_history?_type=DocumentReference,Patient", server.as_doctor())
    assert ("DocumentReference", shown["id"], 1) in seen
    assert ("Patient", other["id"], 1) in seen
    assert not [version for version in seen if version[1] in (hidden["id"], refusing["id"])]
    everything, _ = await walk(server, "/fhir/_history?_type=DocumentReference", server.as_system())
    assert ("DocumentReference", hidden["id"], 2) in everything


async def test_system_history_keeps_to_the_types_the_scopes_cover(fresh_server: Server) -> None:
    server = fresh_server
    patient = await create(server, "Patient", patient_resource())
    await create(server, "DocumentReference", document_resource(patient["id"]))
    token = server.token(scopes=["system/Patient.rs"], sub="narrow", client_id="narrow")
    seen, _ = await walk(server, "/fhir/_history", server.headers(token))
    assert seen == [("Patient", patient["id"], 1)]
    refused = await server.http.get("/fhir/_history?_type=DocumentReference", headers=server.headers(token))
    assert refused.status_code == 403
    nothing = server.token(scopes=["system/Binary.c"], sub="none", client_id="none")
    assert (await server.http.get("/fhir/_history", headers=server.headers(nothing))).status_code == 403


@pytest.mark.parametrize(
    "path",
    [
        "/fhir/_history?_type=AuditEvent",
        "/fhir/_history?_type=Observation",
        "/fhir/_history?_sort=_id",
        "/fhir/_history?_cursor=not-a-cursor",
        "/fhir/_history?_since=yesterday",
        "/fhir/Patient/_history?_type=Patient",
        "/fhir/Patient/_history?_count=x",
    ],
)
async def test_bad_history_parameters_are_400(server: Server, path: str) -> None:
    response = await server.http.get(path, headers=server.as_system())
    assert response.status_code == 400, response.text
    assert response.json()["resourceType"] == "OperationOutcome"


async def test_a_cursor_is_only_valid_in_the_order_it_was_made_for(fresh_server: Server) -> None:
    server = fresh_server
    for _ in range(3):
        await create(server, "Patient", patient_resource())
    page = (await server.http.get("/fhir/_history?_count=1", headers=server.as_system())).json()
    next_url = next(link["url"] for link in page["link"] if link["relation"] == "next")
    switched = next_url.replace("_count=1", "_count=1&_sort=_lastUpdated")
    assert (await server.http.get(switched, headers=server.as_system())).status_code == 400


async def test_history_since_selects_by_change_time(fresh_server: Server) -> None:
    server = fresh_server
    await create(server, "Patient", patient_resource())
    cut = datetime.now(UTC) + timedelta(milliseconds=5)
    await asyncio.sleep(0.02)
    later = await create(server, "Patient", patient_resource())
    since = cut.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    seen, _ = await walk(server, f"/fhir/Patient/_history?_since={since}", server.as_system())
    assert seen == [("Patient", later["id"], 1)]
