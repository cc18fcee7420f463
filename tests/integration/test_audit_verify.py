"""`fhir-server audit verify` on the real embedded database: records tampered directly in MongoDB.

Covers issue 5 "Tamper evidence" (the first modified, inserted or deleted record is reported) and
docs/audit.md (append-only audit trail; `pat` decides who sees an event).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from fhir_server.audit.balp import InteractionFacts, build_audit_events
from fhir_server.audit.chain import ChainLink, Finding, Problem, link
from fhir_server.audit.sink import HEADS_COLLECTION, MongoAuditSink
from fhir_server.audit.verify import UNCHAINED, run_verify, verify_audit_chains
from fhir_server.fhir.interaction import Interaction

Database = AsyncDatabase[dict[str, Any]]


def read_event(patient: str | None) -> dict[str, Any]:
    facts = InteractionFacts(
        interaction=Interaction.READ,
        status=200,
        recorded=datetime.now(UTC),
        server="http://localhost/fhir",
        resource_type="Patient",
        resource_id=patient,
        patient_ids=(patient,) if patient else (),
    )
    return build_audit_events(facts)[0]


async def populate(database: Database) -> dict[str, list[str]]:
    """Chains p1 (5 records), p2 (3 records) and _system (2 records); returns the ids per chain."""
    sink = MongoAuditSink(database, lambda resource: {})
    await sink.ensure_indexes()
    ids: dict[str, list[str]] = {"p1": [], "p2": [], "_system": []}
    for key, count in (("p1", 5), ("p2", 3), ("_system", 2)):
        for _ in range(count):
            ids[key] += await sink.record([read_event(None if key == "_system" else key)])
    return ids


async def test_untouched_trail_verifies(mongo_db: Database) -> None:
    await populate(mongo_db)

    report = await verify_audit_chains(mongo_db)

    assert (report.ok, report.chains, report.records, report.findings) == (True, 3, 10, [])


async def test_empty_trail_verifies(mongo_db: Database) -> None:
    report = await verify_audit_chains(mongo_db)

    assert (report.ok, report.chains, report.records) == (True, 0, 0)


Tamper = Callable[[Database, dict[str, list[str]]], Awaitable[Finding]]


async def modify_content(database: Database, ids: dict[str, list[str]]) -> Finding:
    await database["AuditEvent"].update_one({"_id": ids["p1"][2]}, {"$set": {"res.outcome": "4"}})
    return Finding("p1", Problem.MODIFIED, 3, ids["p1"][2], "the content does not match its hash")


async def modify_and_rehash(database: Database, ids: dict[str, list[str]]) -> Finding:
    document = await database["AuditEvent"].find_one({"_id": ids["p1"][1]})
    assert document is not None
    resource = {**document["res"], "action": "U"}
    previous = ChainLink.from_document({**document["chain"], "seq": 1, "hash": document["chain"]["prev"]})
    forged = link(previous, resource)
    await database["AuditEvent"].update_one(
        {"_id": ids["p1"][1]}, {"$set": {"res": resource, "chain.hash": forged.hash}}
    )
    detail = f"the next record ({ids['p1'][2]}) does not chain to it: altered or replaced"
    return Finding("p1", Problem.MODIFIED, 2, ids["p1"][1], detail)


async def hide_from_patient(database: Database, ids: dict[str, list[str]]) -> Finding:
    await database["AuditEvent"].update_one({"_id": ids["p2"][0]}, {"$set": {"pat": []}})
    return Finding(
        "p2", Problem.MODIFIED, 1, ids["p2"][0], "the patient compartment (pat) differs from the resource"
    )


async def delete_middle(database: Database, ids: dict[str, list[str]]) -> Finding:
    await database["AuditEvent"].delete_one({"_id": ids["p1"][1]})
    return Finding("p1", Problem.DELETED, 2, ids["p1"][2], f"records 2..2 before {ids['p1'][2]} are missing")


async def delete_newest(database: Database, ids: dict[str, list[str]]) -> Finding:
    await database["AuditEvent"].delete_one({"_id": ids["p2"][2]})
    return Finding("p2", Problem.DELETED, 3, None, f"records 3..3 after {ids['p2'][1]} are missing")


async def delete_whole_chain(database: Database, ids: dict[str, list[str]]) -> Finding:
    await database["AuditEvent"].delete_many({"chain.key": "p2"})
    return Finding("p2", Problem.DELETED, 1, None, "records 1..3 are missing")


async def delete_head(database: Database, ids: dict[str, list[str]]) -> Finding:
    await database[HEADS_COLLECTION].delete_one({"_id": "p1"})
    return Finding("p1", Problem.DELETED, None, None, "the chain head is missing")


async def insert_after_head(database: Database, ids: dict[str, list[str]]) -> Finding:
    last = await database["AuditEvent"].find_one({"_id": ids["p2"][2]})
    assert last is not None
    forged = {**last, "_id": "forged", "res": {**last["res"], "id": "forged"}}
    forged["chain"] = link(ChainLink.from_document(last["chain"]), forged["res"]).to_document()
    await database["AuditEvent"].insert_one(forged)
    return Finding("p2", Problem.INSERTED, 4, "forged", "the record is beyond the chain head (3)")


async def insert_unchained(database: Database, ids: dict[str, list[str]]) -> Finding:
    document = await database["AuditEvent"].find_one({"_id": ids["p1"][0]})
    assert document is not None
    forged = {key: value for key, value in document.items() if key != "chain"}
    await database["AuditEvent"].insert_one(
        {**forged, "_id": "forged", "res": {**forged["res"], "id": "forged"}}
    )
    return Finding(UNCHAINED, Problem.INSERTED, None, "forged", "no chain link")


async def break_chain_field(database: Database, ids: dict[str, list[str]]) -> Finding:
    await database["AuditEvent"].update_one({"_id": ids["p1"][3]}, {"$unset": {"chain.hash": ""}})
    return Finding(
        "p1", Problem.MODIFIED, 4, ids["p1"][3], "malformed chain link: prev and hash must be hex strings"
    )


TAMPERING: list[Tamper] = [
    modify_content,
    modify_and_rehash,
    hide_from_patient,
    delete_middle,
    delete_newest,
    delete_whole_chain,
    delete_head,
    insert_after_head,
    insert_unchained,
    break_chain_field,
]


@pytest.mark.parametrize("tamper", TAMPERING, ids=[tamper.__name__ for tamper in TAMPERING])
async def test_tampered_record_is_reported_and_other_chains_stay_intact(
    mongo_db: Database, tamper: Tamper
) -> None:
    ids = await populate(mongo_db)
    expected = await tamper(mongo_db, ids)

    report = await verify_audit_chains(mongo_db)

    assert report.findings == [expected]
    assert not report.ok


async def test_each_broken_chain_reports_its_first_problem(mongo_db: Database) -> None:
    ids = await populate(mongo_db)
    await mongo_db["AuditEvent"].delete_one({"_id": ids["p1"][3]})
    await mongo_db["AuditEvent"].update_one({"_id": ids["p1"][1]}, {"$set": {"res.action": "D"}})
    await mongo_db["AuditEvent"].update_one({"_id": ids["_system"][1]}, {"$set": {"res.action": "D"}})

    report = await verify_audit_chains(mongo_db)

    assert [(f.chain, f.problem, f.record_id) for f in report.findings] == [
        ("_system", Problem.MODIFIED, ids["_system"][1]),
        ("p1", Problem.MODIFIED, ids["p1"][1]),
    ]


async def test_run_verify_prints_a_report_and_exits_zero_when_intact(
    mongo_uri: str, mongo_db: Database
) -> None:
    await populate(mongo_db)
    out = io.StringIO()

    code = await _run_verify_in_thread(mongo_uri, mongo_db.name, out)

    assert code == 0
    assert out.getvalue() == "audit verify: 3 chains, 10 records checked\nOK: every chain is intact\n"


async def test_run_verify_exits_one_and_names_the_tampered_record(mongo_uri: str, mongo_db: Database) -> None:
    ids = await populate(mongo_db)
    await mongo_db["AuditEvent"].update_one({"_id": ids["p2"][1]}, {"$set": {"res.outcome": "8"}})
    out = io.StringIO()

    code = await _run_verify_in_thread(mongo_uri, mongo_db.name, out)

    assert code == 1
    assert out.getvalue().splitlines() == [
        "audit verify: 3 chains, 10 records checked",
        f"  chain 'p2': modified record 2 (id {ids['p2'][1]}): the content does not match its hash",
        "FAILED: 1 chain(s) broken",
    ]


async def test_run_verify_exits_two_when_the_database_is_unreachable() -> None:
    out = io.StringIO()

    code = await _run_verify_in_thread(
        "mongodb://127.0.0.1:1/?directConnection=true&serverSelectionTimeoutMS=300", "x", out
    )

    assert code == 2
    assert out.getvalue().startswith("audit verify: cannot read the audit trail:")


async def _run_verify_in_thread(uri: str, database: str, out: io.StringIO) -> int:
    """run_verify owns its event loop (it is the CLI entry point): run it off the test's loop."""
    return await asyncio.to_thread(run_verify, uri, database, out=out)
