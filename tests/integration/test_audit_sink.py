"""MongoDB audit sink on the real embedded database.

Covers docs/architecture.md I2 (persisted before the response; in the write's transaction; failure ->
AuditUnavailable), §4 (stored-document layout), §9, and issue 5 (group commit, tamper-evident
chain under concurrency).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from fhir_server.audit.balp import InteractionFacts, build_audit_events
from fhir_server.audit.chain import GENESIS, ChainLink, digest
from fhir_server.audit.sink import HEADS_COLLECTION, AuditChainConflict, AuditUnavailable, MongoAuditSink
from fhir_server.audit.verify import verify_audit_chains
from fhir_server.auth.principal import Coding, Principal
from fhir_server.auth.scopes import parse_scopes
from fhir_server.fhir.interaction import Interaction

DOCTOR = Principal(
    subject="dr", client_id="ehr", scopes=parse_scopes("user/*.rs"), fhir_user="Practitioner/dr"
)
BTG_DOCTOR = Principal(
    subject="dr",
    client_id="ehr",
    scopes=parse_scopes("user/*.rs"),
    purpose_of_use=(Coding("http://terminology.hl7.org/CodeSystem/v3-ActReason", "BTG"),),
)


def extract(resource: Mapping[str, Any]) -> dict[str, list[Any]]:
    return {"action": [resource["action"]], "outcome": [resource["outcome"]]}


def read_event(patient: str | None, *, principal: Principal | None = DOCTOR) -> dict[str, Any]:
    facts = InteractionFacts(
        interaction=Interaction.READ,
        status=200,
        recorded=datetime.now(UTC),
        server="http://localhost/fhir",
        principal=principal,
        resource_type="Patient",
        resource_id=patient,
        patient_ids=(patient,) if patient else (),
    )
    return build_audit_events(facts)[0]


async def sink_for(database: AsyncDatabase[dict[str, Any]]) -> MongoAuditSink:
    sink = MongoAuditSink(database, extract)
    await sink.ensure_indexes()
    return sink


async def chain_of(database: AsyncDatabase[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    cursor = database["AuditEvent"].find({"chain.key": key}).sort("chain.seq", 1)
    return [document async for document in cursor]


def assert_linked(documents: list[dict[str, Any]]) -> None:
    previous = GENESIS
    for seq, document in enumerate(documents, start=1):
        stored = ChainLink.from_document(document["chain"])
        assert (stored.seq, stored.prev) == (seq, previous)
        assert stored.hash == digest(stored.key, stored.seq, stored.prev, document["res"])
        previous = stored.hash


async def test_recorded_event_is_stored_in_the_resource_document_layout_with_its_chain(
    mongo_db: AsyncDatabase[dict[str, Any]],
) -> None:
    sink = await sink_for(mongo_db)
    event = read_event("p1")

    [record_id] = await sink.record([event])

    document = await mongo_db["AuditEvent"].find_one({"_id": record_id})
    assert document is not None
    assert set(document) == {"_id", "vid", "lu", "del", "res", "idx", "pat", "sec", "vis", "chain"}
    assert (document["vid"], document["del"], document["pat"], document["sec"]) == (1, False, ["p1"], [])
    assert document["idx"] == {"action": ["R"], "outcome": ["0"]}
    resource = document["res"]
    assert resource["id"] == record_id
    assert resource["meta"]["versionId"] == "1"
    assert resource["meta"]["lastUpdated"].endswith("Z")
    assert {key: value for key, value in resource.items() if key not in ("id", "meta")} == event
    assert "chain" not in resource
    assert document["chain"]["key"] == "p1"
    assert document["chain"]["seq"] == 1
    head = await mongo_db[HEADS_COLLECTION].find_one({"_id": "p1"})
    assert head is not None and head["hash"] == document["chain"]["hash"]


async def test_break_the_glass_label_is_kept_in_meta_and_indexed_as_a_security_label(
    mongo_db: AsyncDatabase[dict[str, Any]],
) -> None:
    sink = await sink_for(mongo_db)

    [record_id] = await sink.record([read_event("p1", principal=BTG_DOCTOR)])

    document = await mongo_db["AuditEvent"].find_one(
        {"sec": "http://terminology.hl7.org/CodeSystem/v3-ActReason|BTG"}
    )
    assert document is not None and document["_id"] == record_id
    assert document["res"]["meta"]["security"][0]["code"] == "BTG"


async def test_events_without_patient_go_to_the_system_chain(mongo_db: AsyncDatabase[dict[str, Any]]) -> None:
    sink = await sink_for(mongo_db)

    await sink.record([read_event(None, principal=None), read_event(None)])

    documents = await chain_of(mongo_db, "_system")
    assert [document["chain"]["seq"] for document in documents] == [1, 2]
    assert_linked(documents)


async def test_record_of_nothing_stores_nothing(mongo_db: AsyncDatabase[dict[str, Any]]) -> None:
    sink = await sink_for(mongo_db)

    assert await sink.record([]) == []
    assert await mongo_db["AuditEvent"].count_documents({}) == 0


async def test_fifty_concurrent_records_on_one_chain_keep_a_valid_chain(
    mongo_db: AsyncDatabase[dict[str, Any]],
) -> None:
    sink = await sink_for(mongo_db)

    ids = await asyncio.gather(*(sink.record([read_event("p1")]) for _ in range(50)))

    assert len({record_id for group in ids for record_id in group}) == 50
    documents = await chain_of(mongo_db, "p1")
    assert len(documents) == 50
    assert_linked(documents)
    assert (await verify_audit_chains(mongo_db)).ok


async def test_concurrent_sinks_sharing_chains_retry_until_every_record_is_linked(
    mongo_db: AsyncDatabase[dict[str, Any]],
) -> None:
    """Two sinks stand for two server processes: they only meet in the database."""
    first, second = await sink_for(mongo_db), await sink_for(mongo_db)

    await asyncio.gather(
        *((first if n % 2 else second).record([read_event(f"p{n % 3}")]) for n in range(90)),
    )

    for key in ("p0", "p1", "p2"):
        documents = await chain_of(mongo_db, key)
        assert len(documents) == 30
        assert_linked(documents)
    report = await verify_audit_chains(mongo_db)
    assert (report.ok, report.chains, report.records) == (True, 3, 90)


async def test_record_in_a_committed_transaction_is_stored_with_the_data(
    mongo_db: AsyncDatabase[dict[str, Any]],
) -> None:
    sink = await sink_for(mongo_db)
    await sink.record([read_event("p1")])

    async with mongo_db.client.start_session() as session:
        await session.start_transaction()
        await mongo_db["Patient"].insert_one({"_id": "p1"}, session=session)
        [record_id] = await sink.record([read_event("p1")], session=session)
        await session.commit_transaction()

    assert await mongo_db["Patient"].count_documents({}) == 1
    document = await mongo_db["AuditEvent"].find_one({"_id": record_id})
    assert document is not None and document["chain"]["seq"] == 2


async def test_aborted_transaction_drops_the_audit_record_and_the_chain_continues(
    mongo_db: AsyncDatabase[dict[str, Any]],
) -> None:
    sink = await sink_for(mongo_db)
    await sink.record([read_event("p1")])

    async with mongo_db.client.start_session() as session:
        await session.start_transaction()
        await mongo_db["Patient"].insert_one({"_id": "p1"}, session=session)
        [dropped] = await sink.record([read_event("p1")], session=session)
        await session.abort_transaction()
    await sink.record([read_event("p1")])

    assert await mongo_db["Patient"].count_documents({}) == 0
    assert await mongo_db["AuditEvent"].find_one({"_id": dropped}) is None
    documents = await chain_of(mongo_db, "p1")
    assert [document["chain"]["seq"] for document in documents] == [1, 2]
    assert_linked(documents)
    assert (await verify_audit_chains(mongo_db)).ok


async def test_several_records_in_one_transaction_chain_one_after_the_other(
    mongo_db: AsyncDatabase[dict[str, Any]],
) -> None:
    sink = await sink_for(mongo_db)

    async with mongo_db.client.start_session() as session:
        await session.start_transaction()
        await sink.record([read_event("p1"), read_event("p2")], session=session)
        await sink.record([read_event("p1")], session=session)
        await session.commit_transaction()

    assert [d["chain"]["seq"] for d in await chain_of(mongo_db, "p1")] == [1, 2]
    assert_linked(await chain_of(mongo_db, "p1"))
    assert_linked(await chain_of(mongo_db, "p2"))
    assert (await verify_audit_chains(mongo_db)).ok


async def test_two_open_transactions_on_one_chain_conflict_and_the_loser_can_rerun(
    mongo_db: AsyncDatabase[dict[str, Any]],
) -> None:
    sink = await sink_for(mongo_db)
    await sink.record([read_event("p1")])
    client = mongo_db.client
    first, second = client.start_session(), client.start_session()
    try:
        await first.start_transaction()
        await second.start_transaction()
        await sink.record([read_event("p1")], session=first)
        with pytest.raises(AuditChainConflict) as conflict:
            await sink.record([read_event("p1")], session=second)
        assert conflict.value.has_error_label("TransientTransactionError")
        assert isinstance(conflict.value, AuditUnavailable)
        await first.commit_transaction()
        if second.in_transaction:
            await second.abort_transaction()
    finally:
        await first.end_session()
        await second.end_session()

    async def rerun(session: AsyncClientSession) -> None:
        await sink.record([read_event("p1")], session=session)

    async with client.start_session() as session:
        await session.with_transaction(rerun)

    documents = await chain_of(mongo_db, "p1")
    assert [document["chain"]["seq"] for document in documents] == [1, 2, 3]
    assert_linked(documents)


async def test_concurrent_transactions_rerun_by_with_transaction_all_land_in_the_chain(
    mongo_db: AsyncDatabase[dict[str, Any]],
) -> None:
    sink = await sink_for(mongo_db)

    async def write(n: int) -> None:
        async def body(session: AsyncClientSession) -> None:
            await mongo_db["Patient"].insert_one({"_id": f"x{n}"}, session=session)
            await sink.record([read_event("p1")], session=session)

        async with mongo_db.client.start_session() as session:
            await session.with_transaction(body)

    await asyncio.gather(
        *(write(n) for n in range(10)), *(sink.record([read_event("p1")]) for _ in range(10))
    )

    documents = await chain_of(mongo_db, "p1")
    assert len(documents) == 20
    assert_linked(documents)
    assert await mongo_db["Patient"].count_documents({}) == 10


async def test_failing_index_extraction_raises_audit_unavailable_and_stores_nothing(
    mongo_db: AsyncDatabase[dict[str, Any]],
) -> None:
    def broken(resource: Mapping[str, Any]) -> dict[str, list[Any]]:
        raise KeyError("no such parameter")

    sink = MongoAuditSink(mongo_db, broken)

    with pytest.raises(AuditUnavailable, match="index"):
        await sink.record([read_event("p1")])
    assert await mongo_db["AuditEvent"].count_documents({}) == 0


async def test_unreachable_database_raises_audit_unavailable() -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        "mongodb://127.0.0.1:1/?directConnection=true", serverSelectionTimeoutMS=300
    )
    try:
        sink = MongoAuditSink(client["nowhere"], extract)
        with pytest.raises(AuditUnavailable):
            await asyncio.wait_for(sink.record([read_event("p1")]), timeout=10)
        with pytest.raises(AuditUnavailable):
            await sink.ensure_indexes()
    finally:
        await client.close()


async def test_stale_cached_head_is_reread_when_another_process_appended(
    mongo_db: AsyncDatabase[dict[str, Any]],
) -> None:
    sink = await sink_for(mongo_db)
    await sink.record([read_event("p1")])
    # Another process moved the head on: the cached head is stale, the sink must re-read it.
    other = await sink_for(mongo_db)
    await other.record([read_event("p1")])

    await sink.record([read_event("p1")])

    documents = await chain_of(mongo_db, "p1")
    assert [document["chain"]["seq"] for document in documents] == [1, 2, 3]
    assert_linked(documents)
