"""Bulk Data `$export` end to end on the embedded database.

Covers FHIR Bulk Data Access v2 (https://hl7.org/fhir/uv/bulkdata/export.html): kick-off at system,
Patient and Group level, `_type`, `_since`, `_typeFilter`, `_outputFormat`, `patient`, the async
pattern (202 + Content-Location, Retry-After / X-Progress, manifest, DELETE), file download by the
kick-off's client only, splitting past the size limit, consent filtering with the exporting client
as the actor (docs/consent.md), BALP audit (summary + one event per patient), restart recovery (job state
and lease in MongoDB) and expiry.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from pymongo import AsyncMongoClient

from fhir_server.app import create_app
from fhir_server.fhir.instants import now_utc
from fhir_server.interactions.export import ExportWorker
from fhir_server.settings import Settings
from fhir_server.storage.exports import BUCKET, JOBS_COLLECTION
from tests.integration.conftest import BASE_URL, Server, document_resource, patient_resource, unique

pytestmark = pytest.mark.asyncio

PLATFORM = "platform-export"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


@asynccontextmanager
async def running(
    mongo_uri: str,
    data_dir: Path,
    database: str,
    *,
    part_bytes: int = 64 * 1024 * 1024,
    retention: timedelta = timedelta(hours=1),
    start_worker: bool = True,
    drop: bool = True,
) -> AsyncIterator[Server]:
    """An app whose export worker is started and stopped with it (as the lifespan does)."""
    settings = Settings(
        mongodb_uri=mongo_uri,
        database=database,
        data_dir=data_dir,
        base_url=BASE_URL,
        consent_default="permit",
    )
    app = create_app(settings)
    client: AsyncMongoClient = AsyncMongoClient(mongo_uri, tz_aware=True)
    try:
        async with app.router.lifespan_context(app):
            worker = ExportWorker(
                app.state.services,
                lease=timedelta(seconds=2),
                poll_seconds=0.05,
                part_bytes=part_bytes,
                retention=retention,
            )
            app.state.export_worker = worker
            if start_worker:
                worker.start()
            transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 50000))
            try:
                async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
                    yield Server(app, http, client[database], data_dir)
            finally:
                await worker.stop()
    finally:
        if drop:
            await client.drop_database(database)
        await client.close()


@pytest.fixture
async def fresh(mongo_uri: str, tmp_path: Path) -> AsyncIterator[Server]:
    async with running(mongo_uri, tmp_path, f"exp_{unique()}") as server:
        yield server


def platform(server: Server, *, client_id: str = PLATFORM, scopes: tuple[str, ...] = ("system/*.rs",)) -> str:
    return server.token(scopes=list(scopes), sub=client_id, client_id=client_id)


def auth(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


async def seed(server: Server, patients: int = 3, documents: int = 2) -> dict[str, list[str]]:
    """Patients, each with documents; returns {patient id: [document ids]}."""
    headers = server.as_system()
    made: dict[str, list[str]] = {}
    for _ in range(patients):
        response = await server.http.post("/fhir/Patient", json=patient_resource(), headers=headers)
        assert response.status_code == 201, response.text
        patient = response.json()["id"]
        made[patient] = []
        for index in range(documents):
            loinc = "11488-4" if index % 2 == 0 else "34133-9"
            created = await server.http.post(
                "/fhir/DocumentReference", json=document_resource(patient, loinc=loinc), headers=headers
            )
            assert created.status_code == 201, created.text
            made[patient].append(created.json()["id"])
    return made


async def kick_off(server: Server, token: str, path: str = "/fhir/$export", **params: str) -> str:
    response = await server.http.get(path, params=params, headers=auth(token, **ASYNC))
    assert response.status_code == 202, response.text
    return response.headers["content-location"]


async def wait_done(server: Server, token: str, status_url: str, *, timeout: float = 30) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        response = await server.http.get(status_url, headers=auth(token))
        if response.status_code == 200:
            assert response.headers["content-type"].startswith("application/json")
            return dict(response.json())
        assert response.status_code == 202, response.text
        assert response.headers["retry-after"].isdigit()
        assert "%" in response.headers["x-progress"]
        assert asyncio.get_running_loop().time() < deadline, "the export did not finish"
        await asyncio.sleep(0.05)


async def files(server: Server, token: str, manifest: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Every exported resource by type, downloaded from the manifest's URLs."""
    found: dict[str, list[dict[str, Any]]] = {}
    for output in manifest["output"]:
        response = await server.http.get(output["url"], headers=auth(token))
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/fhir+ndjson")
        lines = [orjson.loads(line) for line in response.content.splitlines()]
        assert len(lines) == output["count"]
        assert {line["resourceType"] for line in lines} <= {output["type"]}
        found.setdefault(output["type"], []).extend(lines)
    return found


def ids(resources: list[dict[str, Any]]) -> set[str]:
    return {resource["id"] for resource in resources}


async def export_all(
    server: Server, token: str, path: str = "/fhir/$export", **params: str
) -> dict[str, Any]:
    return await wait_done(server, token, await kick_off(server, token, path, **params))


# -- levels and parameters --------------------------------------------------------------------------


async def test_system_export_writes_one_file_per_type_and_a_manifest(fresh: Server) -> None:
    made = await seed(fresh)
    token = platform(fresh)
    status_url = await kick_off(fresh, token, _outputFormat="application/fhir+ndjson")
    assert status_url.startswith(f"{BASE_URL}/$export-status/")
    manifest = await wait_done(fresh, token, status_url)
    assert manifest["requiresAccessToken"] is True
    assert manifest["request"] == f"{BASE_URL}/$export?_outputFormat=application%2Ffhir%2Bndjson"
    assert manifest["error"] == []
    datetime.fromisoformat(manifest["transactionTime"].replace("Z", "+00:00"))
    assert sorted(output["type"] for output in manifest["output"]) == ["DocumentReference", "Patient"]
    exported = await files(fresh, token, manifest)
    assert ids(exported["Patient"]) == set(made)
    assert ids(exported["DocumentReference"]) == {d for documents in made.values() for d in documents}


@pytest.mark.parametrize(
    ("params", "expected_types"),
    [
        ({"_type": "Patient"}, {"Patient"}),
        ({"_type": "DocumentReference,Patient"}, {"Patient", "DocumentReference"}),
        ({"_outputFormat": "ndjson", "_type": "DocumentReference"}, {"DocumentReference"}),
    ],
)
async def test_type_selects_the_exported_types(
    fresh: Server, params: dict[str, str], expected_types: set[str]
) -> None:
    await seed(fresh, patients=2, documents=1)
    token = platform(fresh)
    manifest = await export_all(fresh, token, **params)
    assert {output["type"] for output in manifest["output"]} == expected_types


async def test_since_exports_only_what_changed_at_or_after_the_instant(fresh: Server) -> None:
    before = await seed(fresh, patients=2, documents=1)
    token = platform(fresh)
    first = await export_all(fresh, token, _type="DocumentReference")
    after = await seed(fresh, patients=1, documents=2)
    changed_id = next(iter(before.values()))[0]
    headers = fresh.as_system()
    current = (await fresh.http.get(f"/fhir/DocumentReference/{changed_id}", headers=headers)).json()
    current["description"] = "amended"
    updated = await fresh.http.put(f"/fhir/DocumentReference/{changed_id}", json=current, headers=headers)
    assert updated.status_code == 200
    second = await export_all(fresh, token, _type="DocumentReference", _since=first["transactionTime"])
    exported = await files(fresh, token, second)
    assert ids(exported["DocumentReference"]) == {*next(iter(after.values())), changed_id}


async def test_type_filter_is_a_search_through_the_search_engine(fresh: Server) -> None:
    made = await seed(fresh, patients=2, documents=2)
    token = platform(fresh)
    manifest = await export_all(
        fresh, token, _type="DocumentReference", _typeFilter="DocumentReference?type=http://loinc.org|34133-9"
    )
    exported = await files(fresh, token, manifest)
    expected = {documents[1] for documents in made.values()}
    assert ids(exported["DocumentReference"]) == expected
    assert {line["type"]["coding"][0]["code"] for line in exported["DocumentReference"]} == {"34133-9"}


async def test_several_type_filters_of_one_type_are_alternatives(fresh: Server) -> None:
    made = await seed(fresh, patients=2, documents=2)
    first, second = list(made)
    token = platform(fresh)
    manifest = await export_all(
        fresh,
        token,
        _type="DocumentReference",
        _typeFilter=f"DocumentReference?patient={first},DocumentReference?patient={second}&type=34133-9",
    )
    exported = await files(fresh, token, manifest)
    assert ids(exported["DocumentReference"]) == {*made[first], made[second][1]}


async def test_patient_level_exports_compartment_data_and_post_restricts_patients(fresh: Server) -> None:
    made = await seed(fresh, patients=3, documents=1)
    chosen = list(made)[:2]
    token = platform(fresh)
    manifest = await export_all(fresh, token, "/fhir/Patient/$export")
    assert ids((await files(fresh, token, manifest))["Patient"]) == set(made)
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "_type", "valueString": "Patient,DocumentReference"},
            *({"name": "patient", "valueReference": {"reference": f"Patient/{p}"}} for p in chosen),
        ],
    }
    response = await fresh.http.post(
        "/fhir/Patient/$export",
        json=body,
        headers=auth(token, **ASYNC, **{"Content-Type": "application/fhir+json"}),
    )
    assert response.status_code == 202, response.text
    manifest = await wait_done(fresh, token, response.headers["content-location"])
    exported = await files(fresh, token, manifest)
    assert ids(exported["Patient"]) == set(chosen)
    assert ids(exported["DocumentReference"]) == {made[p][0] for p in chosen}


async def store_group(server: Server, members: list[str], *, inactive: tuple[str, ...] = ()) -> str:
    """A Group of patients, stored as a resource (Group has no API routes: written by the platform)."""
    services = server.app.state.services
    group_id = f"group-{unique()}"
    resource = {
        "resourceType": "Group",
        "id": group_id,
        "type": "person",
        "actual": True,
        "member": [
            {"entity": {"reference": f"Patient/{member}"}, "inactive": member in inactive}
            for member in members
        ],
    }

    async def work(session: Any) -> None:
        await services.repository.save("Group", resource, previous=None, now=now_utc(), session=session)

    await services.repository.in_transaction(work)
    return group_id


async def test_group_level_exports_its_active_members_only(fresh: Server) -> None:
    made = await seed(fresh, patients=3, documents=1)
    first, second, third = list(made)
    group = await store_group(fresh, [first, second], inactive=(second,))
    token = platform(fresh)
    manifest = await export_all(fresh, token, f"/fhir/Group/{group}/$export")
    exported = await files(fresh, token, manifest)
    assert ids(exported["Patient"]) == {first}
    assert ids(exported["DocumentReference"]) == set(made[first])
    assert third not in {line["subject"]["reference"].split("/")[1] for line in exported["DocumentReference"]}


async def test_group_level_export_of_an_unknown_group_is_404(fresh: Server) -> None:
    response = await fresh.http.get(
        f"/fhir/Group/nope-{unique()}/$export", headers=auth(platform(fresh), **ASYNC)
    )
    assert response.status_code == 404


async def test_a_type_is_split_into_several_files_past_the_size_limit(mongo_uri: str, tmp_path: Path) -> None:
    async with running(mongo_uri, tmp_path, f"exp_{unique()}", part_bytes=2000) as server:
        made = await seed(server, patients=2, documents=6)
        token = platform(server)
        manifest = await export_all(server, token, _type="DocumentReference")
        parts = [output for output in manifest["output"] if output["type"] == "DocumentReference"]
        assert len(parts) > 1
        assert len({output["url"] for output in parts}) == len(parts)
        exported = (await files(server, token, manifest))["DocumentReference"]
        assert len(exported) == len(ids(exported)) == 12
        assert ids(exported) == {d for documents in made.values() for d in documents}


@pytest.mark.parametrize(
    ("params", "headers", "status"),
    [
        ({}, {"Accept": "application/fhir+json"}, 400),
        ({"_outputFormat": "text/csv"}, ASYNC, 400),
        ({"_type": "AuditEvent"}, ASYNC, 400),
        ({"_type": "Observation"}, ASYNC, 400),
        ({"_since": "yesterday"}, ASYNC, 400),
        ({"_since": "2026-01-01T00:00:00"}, ASYNC, 400),
        ({"_typeFilter": "DocumentReference?unknown=1"}, ASYNC, 400),
        ({"_typeFilter": "DocumentReference?_count=5"}, ASYNC, 400),
        ({"_type": "Patient", "_typeFilter": "DocumentReference?status=current"}, ASYNC, 400),
        ({"includeAssociatedData": "LatestProvenanceResources"}, ASYNC, 400),
        ({"patient": "Patient/x"}, ASYNC, 400),
    ],
)
async def test_kick_off_refuses_bad_requests(
    fresh: Server, params: dict[str, str], headers: dict[str, str], status: int
) -> None:
    response = await fresh.http.get("/fhir/$export", params=params, headers=auth(platform(fresh), **headers))
    assert response.status_code == status, response.text
    assert response.json()["resourceType"] == "OperationOutcome"
    assert await fresh.database[JOBS_COLLECTION].count_documents({}) == 0


@pytest.mark.parametrize(
    ("scopes", "params", "status"),
    [
        (("user/*.rs",), {}, 403),
        (("system/Patient.rs",), {"_type": "DocumentReference"}, 403),
        (("system/Patient.c",), {}, 403),
    ],
)
async def test_kick_off_needs_system_scopes_covering_the_types(
    fresh: Server, scopes: tuple[str, ...], params: dict[str, str], status: int
) -> None:
    token = fresh.token(scopes=list(scopes), sub="someone", client_id="someone")
    response = await fresh.http.get("/fhir/$export", params=params, headers=auth(token, **ASYNC))
    assert response.status_code == status, response.text


async def test_default_types_are_those_the_scopes_cover(fresh: Server) -> None:
    await seed(fresh, patients=1, documents=1)
    token = platform(fresh, scopes=("system/Patient.rs",))
    manifest = await export_all(fresh, token)
    assert {output["type"] for output in manifest["output"]} == {"Patient"}


# -- access to status and files ---------------------------------------------------------------------


async def test_status_and_files_answer_only_the_kick_off_client(fresh: Server) -> None:
    await seed(fresh, patients=1, documents=1)
    token = platform(fresh)
    status_url = await kick_off(fresh, token)
    manifest = await wait_done(fresh, token, status_url)
    url = manifest["output"][0]["url"]
    other = platform(fresh, client_id="another-platform")
    assert (await fresh.http.get(status_url, headers=auth(other))).status_code == 404
    assert (await fresh.http.get(url, headers=auth(other))).status_code == 404
    assert (await fresh.http.delete(status_url, headers=auth(other))).status_code == 404
    assert (await fresh.http.get(url)).status_code == 401
    assert (await fresh.http.get(status_url)).status_code == 401
    assert (await fresh.http.get(f"{url}x", headers=auth(token))).status_code == 404
    assert (await fresh.http.get(url, headers=auth(token))).status_code == 200


# -- consent and audit ------------------------------------------------------------------------------


def denying_consent(patient: str, *, actor: str) -> dict[str, Any]:
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
                    "reference": {"reference": actor},
                }
            ],
        },
    }


async def test_a_patient_who_denied_the_platform_has_no_data_in_its_export(fresh: Server) -> None:
    made = await seed(fresh, patients=2, documents=2)
    refusing, other = list(made)
    created = await fresh.http.post(
        "/fhir/Consent",
        json=denying_consent(refusing, actor=f"Device/{PLATFORM}"),
        headers=fresh.as_consent_service(),
    )
    assert created.status_code == 201, created.text
    token = platform(fresh)
    manifest = await export_all(fresh, token, _type="DocumentReference,Consent")
    exported = await files(fresh, token, manifest)
    assert ids(exported["DocumentReference"]) == set(made[other])
    assert all(line["patient"]["reference"] != f"Patient/{refusing}" for line in exported.get("Consent", []))
    another = platform(fresh, client_id="another-platform")
    theirs = await files(fresh, another, await export_all(fresh, another, _type="DocumentReference"))
    assert ids(theirs["DocumentReference"]) == set(made[refusing]) | set(made[other])


async def export_events(server: Server) -> list[dict[str, Any]]:
    cursor = server.database["AuditEvent"].find({"res.subtype.code": "$export"})
    return [item["res"] async for item in cursor]


def patients_of(event: dict[str, Any]) -> list[str]:
    return [
        entity["what"]["reference"]
        for entity in event.get("entity") or []
        if (entity.get("role") or {}).get("code") == "1"
    ]


async def test_an_export_is_audited_with_a_summary_and_one_event_per_patient(fresh: Server) -> None:
    made = await seed(fresh, patients=3, documents=1)
    refusing = list(made)[0]
    await fresh.http.post(
        "/fhir/Consent",
        json=denying_consent(refusing, actor=f"Device/{PLATFORM}"),
        headers=fresh.as_consent_service(),
    )
    token = platform(fresh)
    await export_all(fresh, token, _type="DocumentReference")
    events = await export_events(fresh)
    kick_off_events = [e for e in events if "202" in str(e.get("outcomeDesc", "")) or e.get("outcome") == "0"]
    assert kick_off_events
    completion = [e for e in events if str(e.get("outcomeDesc", "")).startswith("export ")]
    summaries = [e for e in completion if not patients_of(e)]
    assert len(summaries) == 1
    assert "2 resources in 1 file(s)" in summaries[0]["outcomeDesc"]
    per_patient = sorted(p for e in completion for p in patients_of(e))
    assert per_patient == sorted(f"Patient/{p}" for p in made if p != refusing)
    for event in completion:
        requestor = next(agent for agent in event["agent"] if agent.get("requestor"))
        assert requestor["who"]["identifier"]["value"] == PLATFORM


# -- cancel, restart, expiry ------------------------------------------------------------------------


async def job_files(server: Server) -> int:
    return int(await server.database[f"{BUCKET}.files"].count_documents({}))


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout: float = 15) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def test_delete_cancels_the_job_and_its_files(fresh: Server) -> None:
    await seed(fresh, patients=2, documents=1)
    token = platform(fresh)
    status_url = await kick_off(fresh, token)
    await wait_done(fresh, token, status_url)
    assert await job_files(fresh) > 0
    response = await fresh.http.delete(status_url, headers=auth(token))
    assert response.status_code == 202
    assert (await fresh.http.get(status_url, headers=auth(token))).status_code == 404

    async def cleaned() -> bool:
        return await job_files(fresh) == 0 and await fresh.database[JOBS_COLLECTION].count_documents({}) == 0

    await eventually(cleaned)


async def test_delete_stops_a_running_job(mongo_uri: str, tmp_path: Path) -> None:
    async with running(mongo_uri, tmp_path, f"exp_{unique()}", start_worker=False) as server:
        await seed(server, patients=2, documents=1)
        token = platform(server)
        status_url = await kick_off(server, token)
        assert (await server.http.delete(status_url, headers=auth(token))).status_code == 202
        server.app.state.export_worker.start()
        assert (await server.http.get(status_url, headers=auth(token))).status_code == 404

        async def cleaned() -> bool:
            return await server.database[JOBS_COLLECTION].count_documents({}) == 0

        await eventually(cleaned)
        assert await job_files(server) == 0


async def test_a_job_accepted_by_a_stopped_server_completes_on_the_next_one(
    mongo_uri: str, tmp_path: Path
) -> None:
    database = f"exp_{unique()}"
    async with running(mongo_uri, tmp_path, database, start_worker=False, drop=False) as first:
        made = await seed(first, patients=2, documents=2)
        token = platform(first)
        status_url = await kick_off(first, token)
    async with running(mongo_uri, tmp_path, database) as second:
        manifest = await wait_done(second, token, status_url)
        exported = await files(second, token, manifest)
        assert ids(exported["Patient"]) == set(made)
        assert ids(exported["DocumentReference"]) == {d for documents in made.values() for d in documents}


async def test_a_job_left_half_done_by_a_dead_server_is_resumed_without_duplicates(
    mongo_uri: str, tmp_path: Path
) -> None:
    database = f"exp_{unique()}"
    async with running(mongo_uri, tmp_path, database, part_bytes=1500, drop=False) as first:
        made = await seed(first, patients=2, documents=4)
        token = platform(first)
        status_url = await kick_off(first, token, _type="Patient,DocumentReference")
        await wait_done(first, token, status_url)
        job = await first.database[JOBS_COLLECTION].find_one({})
        assert job is not None
        patient_parts = [o for o in job["outputs"] if o["type"] == "Patient"]
        document_parts = [o for o in job["outputs"] if o["type"] == "DocumentReference"]
        assert len(document_parts) > 1
        # What a server that died while writing DocumentReference leaves behind: Patient done, one
        # DocumentReference file recorded, one being written, and a lease that has lapsed.
        dangling = document_parts[1]["file"]
        await first.database[JOBS_COLLECTION].update_one(
            {"_id": job["_id"]},
            {
                "$set": {
                    "status": "in-progress",
                    "done_types": ["Patient"],
                    "outputs": patient_parts + document_parts[:1],
                    "writing": dangling,
                    "owner": "dead-server",
                    "lease": datetime.now(UTC) - timedelta(seconds=1),
                    "expires": None,
                },
                "$unset": {"current_type": ""},
            },
        )
        for part in document_parts[2:]:
            await first.app.state.export_worker.store.delete_file(part["file"])
        assert (await first.http.get(status_url, headers=auth(token))).status_code in (200, 202)
    async with running(mongo_uri, tmp_path, database, part_bytes=1500) as second:
        manifest = await wait_done(second, token, status_url)
        exported = await files(second, token, manifest)
        documents = exported["DocumentReference"]
        assert len(documents) == len(ids(documents)) == 8
        assert ids(documents) == {d for docs in made.values() for d in docs}
        assert ids(exported["Patient"]) == set(made)
        stored = await second.database[f"{BUCKET}.files"].count_documents({})
        assert stored == len(manifest["output"])
        assert await second.database[f"{BUCKET}.files"].count_documents({"_id": dangling}) == 0


async def test_files_expire_and_the_worker_deletes_them(mongo_uri: str, tmp_path: Path) -> None:
    async with running(mongo_uri, tmp_path, f"exp_{unique()}", retention=timedelta(seconds=1)) as server:
        await seed(server, patients=1, documents=1)
        token = platform(server)
        status_url = await kick_off(server, token)
        manifest = await wait_done(server, token, status_url)
        assert manifest["output"]

        async def expired() -> bool:
            return (
                await job_files(server) == 0
                and await server.database[JOBS_COLLECTION].count_documents({}) == 0
            )

        await eventually(expired)
        assert (await server.http.get(status_url, headers=auth(token))).status_code == 404
        assert (await server.http.get(manifest["output"][0]["url"], headers=auth(token))).status_code == 404
