"""Audit hash chain: linking and verification.

Covers issue 5 "Tamper evidence" (per-patient chain, first modified / inserted / deleted record
reported) and docs/audit.md (append-only audit trail).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from typing import Any

import pytest

from fhir_server.audit.chain import (
    GENESIS,
    SYSTEM_CHAIN,
    ChainLink,
    ChainRecord,
    ChainVerifier,
    Finding,
    Problem,
    canonical,
    chain_key,
    digest,
    link,
    verify_chain,
)

PATIENT_ENTITY = {
    "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"},
    "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"},
}


def event(n: int, patient: str | None = "p1") -> dict[str, Any]:
    entities: list[dict[str, Any]] = [
        {
            "what": {"reference": f"DocumentReference/d{n}"},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
        }
    ]
    if patient is not None:
        entities.insert(0, {**PATIENT_ENTITY, "what": {"reference": f"Patient/{patient}"}})
    return {"resourceType": "AuditEvent", "id": f"e{n}", "action": "R", "entity": entities}


def chain(length: int, patient: str | None = "p1") -> list[ChainRecord]:
    records: list[ChainRecord] = []
    previous: ChainLink | None = None
    for n in range(1, length + 1):
        body = event(n, patient)
        previous = link(previous, body)
        records.append(ChainRecord(body["id"], previous, body))
    return records


def head_of(records: list[ChainRecord]) -> ChainLink:
    return records[-1].link


# -- linking -----------------------------------------------------------------------------------------


def test_first_link_starts_at_one_after_the_genesis_hash() -> None:
    first = link(None, event(1))

    assert (first.key, first.seq, first.prev) == ("p1", 1, GENESIS)
    expected = hashlib.sha256(
        GENESIS.encode() + canonical({"key": "p1", "seq": 1, "event": event(1)})
    ).hexdigest()
    assert first.hash == expected


def test_next_link_follows_the_previous_hash() -> None:
    first = link(None, event(1))
    second = link(first, event(2))

    assert (second.seq, second.prev) == (2, first.hash)
    assert second.hash == digest("p1", 2, first.hash, event(2))


def test_an_event_cannot_be_linked_into_another_patients_chain() -> None:
    with pytest.raises(ValueError, match="chain"):
        link(link(None, event(1, "p1")), event(2, "p2"))


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (event(1, "abc"), "abc"),
        (event(1, None), SYSTEM_CHAIN),
        ({"resourceType": "AuditEvent"}, SYSTEM_CHAIN),
        ({"entity": [{**PATIENT_ENTITY, "what": {"reference": "https://x.org/fhir/Patient/q9"}}]}, "q9"),
        # a Patient resource read is a data entity (type 2), not the patient entity
        ({"entity": [{"what": {"reference": "Patient/p7"}, "type": {"code": "2"}}]}, SYSTEM_CHAIN),
    ],
)
def test_chain_key_is_the_patient_entity_else_system(body: dict[str, Any], key: str) -> None:
    assert chain_key(body) == key


def test_canonical_json_is_key_order_independent_and_compact() -> None:
    assert canonical({"b": 1, "a": {"y": "é", "x": [1, 2]}}) == canonical(
        {"a": {"x": [1, 2], "y": "é"}, "b": 1}
    )
    assert canonical({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()


@pytest.mark.parametrize(
    "change",
    [
        lambda key, seq, prev, body: ("p2", seq, prev, body),
        lambda key, seq, prev, body: (key, seq + 1, prev, body),
        lambda key, seq, prev, body: (key, seq, "1" * 64, body),
        lambda key, seq, prev, body: (key, seq, prev, {**body, "action": "U"}),
    ],
    ids=["key", "seq", "prev", "event"],
)
def test_hash_covers_key_seq_previous_hash_and_event(change: Callable[..., tuple[Any, ...]]) -> None:
    original = ("p1", 3, "a" * 64, event(3))

    assert digest(*change(*original)) != digest(*original)


@pytest.mark.parametrize(
    "value",
    [
        {"key": "p1", "seq": "1", "prev": GENESIS, "hash": GENESIS},
        {"key": "p1", "seq": 1.5, "prev": GENESIS, "hash": GENESIS},
        {"key": "p1", "seq": True, "prev": GENESIS, "hash": GENESIS},
        {"key": None, "seq": 1, "prev": GENESIS, "hash": GENESIS},
        {"key": "p1", "seq": 1, "hash": GENESIS},
    ],
)
def test_malformed_stored_links_are_rejected(value: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="malformed"):
        ChainLink.from_document(value)


def test_stored_link_round_trips() -> None:
    first = link(None, event(1))

    assert ChainLink.from_document(first.to_document()) == first


# -- verification ------------------------------------------------------------------------------------


def test_intact_chain_verifies() -> None:
    records = chain(5)

    assert verify_chain(records, head=head_of(records)) is None


def test_empty_chain_without_head_verifies() -> None:
    assert verify_chain([], head=None) is None


def modify(records: list[ChainRecord], index: int, *, rehash: bool) -> list[ChainRecord]:
    record = records[index]
    body = {**record.event, "action": "U"}
    new_link = record.link
    if rehash:
        new_link = dataclasses.replace(new_link, hash=digest(new_link.key, new_link.seq, new_link.prev, body))
    return [*records[:index], ChainRecord(record.id, new_link, body), *records[index + 1 :]]


def duplicate(records: list[ChainRecord], index: int) -> list[ChainRecord]:
    forged = ChainRecord("forged", records[index].link, records[index].event)
    return [*records[: index + 1], forged, *records[index + 1 :]]


def append_forged(records: list[ChainRecord]) -> list[ChainRecord]:
    body = event(99)
    return [*records, ChainRecord("forged", link(records[-1].link, body), body)]


TAMPERING: list[tuple[str, Callable[[list[ChainRecord]], list[ChainRecord]], Finding]] = [
    (
        "modified, hash left",
        lambda r: modify(r, 2, rehash=False),
        Finding("p1", Problem.MODIFIED, 3, "e3", "the content does not match its hash"),
    ),
    (
        "modified, hash recomputed",
        lambda r: modify(r, 2, rehash=True),
        Finding(
            "p1", Problem.MODIFIED, 3, "e3", "the next record (e4) does not chain to it: altered or replaced"
        ),
    ),
    (
        "modified last, hash recomputed",
        lambda r: modify(r, 4, rehash=True),
        Finding("p1", Problem.MODIFIED, 5, "e5", "the last record differs from the chain head"),
    ),
    (
        "deleted in the middle",
        lambda r: r[:2] + r[3:],
        Finding("p1", Problem.DELETED, 3, "e4", "records 3..3 before e4 are missing"),
    ),
    (
        "deleted first",
        lambda r: r[1:],
        Finding("p1", Problem.DELETED, 1, "e2", "records 1..1 before e2 are missing"),
    ),
    (
        "deleted last two",
        lambda r: r[:3],
        Finding("p1", Problem.DELETED, 4, None, "records 4..5 after e3 are missing"),
    ),
    (
        "deleted all",
        lambda r: [],
        Finding("p1", Problem.DELETED, 1, None, "records 1..5 are missing"),
    ),
    (
        "inserted with a duplicate seq",
        lambda r: duplicate(r, 1),
        Finding("p1", Problem.INSERTED, 2, "forged", "sequence 2 appears twice"),
    ),
    (
        "inserted after the head",
        append_forged,
        Finding("p1", Problem.INSERTED, 6, "forged", "the record is beyond the chain head (5)"),
    ),
    (
        "moved from another chain",
        lambda r: [*r[:2], chain(3, "p2")[2], *r[3:]],
        Finding("p1", Problem.MODIFIED, 3, "e3", "the record belongs to another chain"),
    ),
]


@pytest.mark.parametrize(
    ("tamper", "expected"), [(t, f) for _, t, f in TAMPERING], ids=[n for n, _, _ in TAMPERING]
)
def test_tampering_reports_the_first_affected_record(
    tamper: Callable[[list[ChainRecord]], list[ChainRecord]], expected: Finding
) -> None:
    records = chain(5)

    assert verify_chain(tamper(records), head=head_of(records)) == expected


def test_missing_head_is_reported_as_a_deletion() -> None:
    finding = verify_chain(chain(2), head=None)

    assert finding == Finding("p1", Problem.DELETED, None, None, "the chain head is missing")


def test_verifier_reports_only_the_first_problem() -> None:
    records = chain(6)
    tampered = modify(modify(records, 4, rehash=False), 1, rehash=False)
    verifier = ChainVerifier("p1", head=head_of(records))

    findings = [verifier.feed(record) for record in tampered]

    assert [f.record_id for f in findings if f is not None] == ["e2"]
    assert verifier.finish() is None
    assert verifier.records == 2


def test_flag_records_a_problem_found_by_the_caller() -> None:
    verifier = ChainVerifier("p1", head=None)

    assert verifier.flag(Problem.MODIFIED, 4, "e4", "malformed chain link") == Finding(
        "p1", Problem.MODIFIED, 4, "e4", "malformed chain link"
    )
    assert verifier.flag(Problem.DELETED, 5, "e5", "second") is None
