"""Tamper evidence for the audit trail: AuditEvents hash-chained per patient (pure, no I/O).

Each stored AuditEvent carries a `ChainLink`: its chain key, its sequence number in that chain, the
hash of the previous link and its own hash,

    hash = SHA-256( prev_hash_hex + canonical({"key": key, "seq": seq, "event": event}) )

where `event` is the stored resource (with its `id` and `meta`; the chain fields live outside it, in
the stored document) and `canonical` is JSON with sorted keys and no whitespace, UTF-8. The first
link of a chain has `prev` = 64 zeros. Key and seq are hashed so a record cannot be moved to another
chain or another position without breaking its own hash.

Why one chain per patient (key = the id of the event's patient entity, `_system` when it has none)
rather than one per shard or one global chain:
- appends serialise per chain (each link needs the previous hash); per patient, writers for
  different patients never wait on each other, and the hot spot is one patient, not the server;
- docs/architecture.md shards on the patient compartment: a patient's chain lives on the shard that holds the
  patient's data, so appending never crosses shards and a resharding moves whole chains;
- a patient's trail ("who looked at my record") verifies on its own, in a short walk;
- BALP already writes one AuditEvent per patient, so every event has at most one chain key.

The head of each chain (its last link) is also stored, apart from the records (sink.py): without it
the deletion of the newest records of a chain, the most tempting tampering, would leave no gap.
What the chain cannot show: an attacker with write access who rewrites a record and every later
link and the head. Exporting the heads elsewhere (anchoring) closes that; it is outside this module.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fhir_server.fhir.references import reference_id

GENESIS = "0" * 64
SYSTEM_CHAIN = "_system"
"""Key of the chain of events that concern no patient (refused before authentication, empty searches)."""

_PATIENT_ENTITY_TYPE = ("http://terminology.hl7.org/CodeSystem/audit-entity-type", "1")
_PATIENT_ROLE = ("http://terminology.hl7.org/CodeSystem/object-role", "1")


@dataclass(frozen=True)
class ChainLink:
    key: str
    seq: int
    prev: str
    hash: str

    def to_document(self) -> dict[str, Any]:
        return {"key": self.key, "seq": self.seq, "prev": self.prev, "hash": self.hash}

    @classmethod
    def from_document(cls, value: Mapping[str, Any]) -> ChainLink:
        """Raises ValueError when a field is missing or of the wrong type (a tampered record)."""
        key, seq, prev, hash_ = value.get("key"), value.get("seq"), value.get("prev"), value.get("hash")
        if not isinstance(key, str) or isinstance(seq, bool) or not isinstance(seq, int):
            raise ValueError(f"malformed chain link: key={key!r} seq={seq!r}")
        if not isinstance(prev, str) or not isinstance(hash_, str):
            raise ValueError("malformed chain link: prev and hash must be hex strings")
        return cls(key, seq, prev, hash_)


@dataclass(frozen=True)
class ChainRecord:
    """One stored AuditEvent as the verifier sees it."""

    id: str
    link: ChainLink
    event: Mapping[str, Any]


class Problem(StrEnum):
    MODIFIED = "modified"
    INSERTED = "inserted"
    DELETED = "deleted"


@dataclass(frozen=True)
class Finding:
    """The first problem found in one chain."""

    chain: str
    problem: Problem
    seq: int | None
    """Position in the chain where the problem shows (for a deletion, the first missing seq)."""
    record_id: str | None
    """The record at fault: modified or inserted; for a deletion, the record after the gap, if any."""
    detail: str


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def digest(key: str, seq: int, prev: str, event: Mapping[str, Any]) -> str:
    payload = canonical({"key": key, "seq": seq, "event": event})
    return hashlib.sha256(prev.encode("ascii") + payload).hexdigest()


def chain_key(event: Mapping[str, Any]) -> str:
    """The id of the event's patient entity (BALP role Patient), else `_system`."""
    for entity in event.get("entity") or ():
        entity_type = entity.get("type") or {}
        role = entity.get("role") or {}
        if (entity_type.get("system"), entity_type.get("code")) != _PATIENT_ENTITY_TYPE:
            continue
        if (role.get("system"), role.get("code")) != _PATIENT_ROLE:
            continue
        patient = reference_id(entity.get("what"), "Patient")
        if patient:
            return patient
    return SYSTEM_CHAIN


def link(previous: ChainLink | None, event: Mapping[str, Any]) -> ChainLink:
    """The link of `event` appended after `previous` (None: the first of its chain)."""
    key = chain_key(event)
    if previous is not None and previous.key != key:
        raise ValueError(f"event of chain {key!r} cannot follow a link of chain {previous.key!r}")
    seq = 1 if previous is None else previous.seq + 1
    prev = GENESIS if previous is None else previous.hash
    return ChainLink(key, seq, prev, digest(key, seq, prev, event))


class ChainVerifier:
    """Checks one chain record by record, in seq order, against its stored head.

    Incremental so that a caller can stream records from a database cursor; `verify_chain` is the
    one-shot form. After the first finding it reports nothing more.
    """

    def __init__(self, key: str, *, head: ChainLink | None) -> None:
        self.key = key
        self.head = head
        self.records = 0
        self.finding: Finding | None = None
        self._previous: ChainRecord | None = None

    def feed(self, record: ChainRecord) -> Finding | None:
        if self.finding is not None:
            return None
        self.records += 1
        self.finding = self._check(record)
        self._previous = record
        return self.finding

    def flag(self, problem: Problem, seq: int | None, record_id: str | None, detail: str) -> Finding | None:
        """Report a problem the caller found outside the chain fields (e.g. a malformed record)."""
        if self.finding is not None:
            return None
        self.finding = self._found(problem, seq, record_id, detail)
        return self.finding

    def finish(self) -> Finding | None:
        """The problem at the end of the chain, if none was found before: a head that disagrees."""
        if self.finding is not None:
            return None
        last = self._previous
        head = self.head
        if head is None:
            if last is None:
                return None
            self.finding = self._found(Problem.DELETED, None, None, "the chain head is missing")
        elif last is None:
            self.finding = self._found(Problem.DELETED, 1, None, f"records 1..{head.seq} are missing")
        elif last.link.seq < head.seq:
            self.finding = self._found(
                Problem.DELETED,
                last.link.seq + 1,
                None,
                f"records {last.link.seq + 1}..{head.seq} after {last.id} are missing",
            )
        elif last.link.hash != head.hash:
            self.finding = self._found(
                Problem.MODIFIED, last.link.seq, last.id, "the last record differs from the chain head"
            )
        return self.finding

    def _check(self, record: ChainRecord) -> Finding | None:
        found = record.link
        expected_seq = 1 if self._previous is None else self._previous.link.seq + 1
        expected_prev = GENESIS if self._previous is None else self._previous.link.hash
        if found.key != self.key or chain_key(record.event) != self.key:
            return self._found(Problem.MODIFIED, found.seq, record.id, "the record belongs to another chain")
        if digest(found.key, found.seq, found.prev, record.event) != found.hash:
            return self._found(Problem.MODIFIED, found.seq, record.id, "the content does not match its hash")
        if found.seq < expected_seq:
            return self._found(Problem.INSERTED, found.seq, record.id, f"sequence {found.seq} appears twice")
        if self.head is not None and found.seq > self.head.seq:
            detail = f"the record is beyond the chain head ({self.head.seq})"
            return self._found(Problem.INSERTED, found.seq, record.id, detail)
        if found.seq > expected_seq:
            return self._found(
                Problem.DELETED,
                expected_seq,
                record.id,
                f"records {expected_seq}..{found.seq - 1} before {record.id} are missing",
            )
        if found.prev != expected_prev:
            previous = self._previous
            if previous is None:
                detail = "the first record of the chain names a previous record"
                return self._found(Problem.MODIFIED, found.seq, record.id, detail)
            return self._found(
                Problem.MODIFIED,
                previous.link.seq,
                previous.id,
                f"the next record ({record.id}) does not chain to it: altered or replaced",
            )
        return None

    def _found(self, problem: Problem, seq: int | None, record_id: str | None, detail: str) -> Finding:
        return Finding(self.key, problem, seq, record_id, detail)


def verify_chain(records: Iterable[ChainRecord], *, head: ChainLink | None) -> Finding | None:
    """The first modified, inserted or deleted record of one chain (records in seq order), or None."""
    records = iter(records)
    first = next(records, None)
    if head is not None:
        key = head.key
    else:
        key = first.link.key if first is not None else SYSTEM_CHAIN
    verifier = ChainVerifier(key, head=head)
    if first is not None:
        verifier.feed(first)
    for record in records:
        if verifier.feed(record) is not None:
            break
    return verifier.finding or verifier.finish()


__all__ = [
    "GENESIS",
    "SYSTEM_CHAIN",
    "ChainLink",
    "ChainRecord",
    "ChainVerifier",
    "Finding",
    "Problem",
    "canonical",
    "chain_key",
    "digest",
    "link",
    "verify_chain",
]
