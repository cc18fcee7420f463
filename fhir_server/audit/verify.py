"""`fhir-server audit verify`: walk every audit hash chain and report the first problem of each.

The chains are read in one streaming pass over the unique (chain.key, chain.seq) index, merged with
the stored chain heads read in key order, so memory stays flat whatever the size of the trail.
Besides the chain (chain.py), each record's server fields are checked against its resource: `_id`,
`pat` (who sees the event in "who looked at my record") and `sec` (the BTG flag) are derived from
`res`, so editing them, which the hash does not cover, is reported as a modification.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from pymongo import ASCENDING, AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from fhir_server.audit.chain import ChainLink, ChainRecord, ChainVerifier, Finding, Problem
from fhir_server.audit.sink import CHAIN_FIELD, HEADS_COLLECTION
from fhir_server.fhir.compartment import compartment
from fhir_server.fhir.resources import AUDIT_EVENT
from fhir_server.record.documents import COMPARTMENT, DELETED, ID, RESOURCE, SECURITY
from fhir_server.record.visibility import security_labels

UNCHAINED = "(no chain)"
"""Pseudo-chain of the records that carry no chain link at all: inserted behind the sink's back."""


@dataclass
class VerificationReport:
    chains: int = 0
    records: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    def render(self) -> str:
        lines = [f"audit verify: {self.chains} chains, {self.records} records checked"]
        for finding in self.findings:
            where = f"record {finding.seq}" if finding.seq is not None else "chain"
            record = f" (id {finding.record_id})" if finding.record_id else ""
            lines.append(f"  chain {finding.chain!r}: {finding.problem} {where}{record}: {finding.detail}")
        lines.append(
            "OK: every chain is intact" if self.ok else f"FAILED: {len(self.findings)} chain(s) broken"
        )
        return "\n".join(lines) + "\n"


async def verify_audit_chains(database: AsyncDatabase[dict[str, Any]]) -> VerificationReport:
    report = VerificationReport()
    heads = _Heads(database[HEADS_COLLECTION].find({}).sort(ID, ASCENDING).__aiter__())
    events = database[AUDIT_EVENT].find(
        {}, {ID: 1, RESOURCE: 1, CHAIN_FIELD: 1, COMPARTMENT: 1, SECURITY: 1, DELETED: 1}
    )
    events = events.sort([(f"{CHAIN_FIELD}.key", ASCENDING), (f"{CHAIN_FIELD}.seq", ASCENDING)])
    current: ChainVerifier | None = None
    unchained: Finding | None = None
    async for document in events:
        report.records += 1
        key = (document.get(CHAIN_FIELD) or {}).get("key")
        if not isinstance(key, str):
            if unchained is None:
                unchained = Finding(UNCHAINED, Problem.INSERTED, None, str(document.get(ID)), "no chain link")
                report.findings.append(unchained)
            continue
        if current is None or key != current.key:
            _close(current, report)
            async for verifier in heads.without_records_before(key):
                _close(verifier, report)
            current = ChainVerifier(key, head=await heads.take(key))
            report.chains += 1
        _check(current, document)
    _close(current, report)
    async for verifier in heads.without_records_before(None):
        _close(verifier, report)
    return report


def _check(verifier: ChainVerifier, document: Mapping[str, Any]) -> None:
    record_id = str(document.get(ID))
    resource = document.get(RESOURCE)
    try:
        chain_link = ChainLink.from_document(document[CHAIN_FIELD])
    except ValueError as error:
        seq = document[CHAIN_FIELD].get("seq")
        verifier.flag(Problem.MODIFIED, seq if type(seq) is int else None, record_id, str(error))
        return
    if not isinstance(resource, Mapping):
        verifier.flag(Problem.MODIFIED, chain_link.seq, record_id, "the resource is missing")
        return
    mismatch = _derived_mismatch(document, resource)
    if mismatch:
        verifier.flag(Problem.MODIFIED, chain_link.seq, record_id, mismatch)
        return
    verifier.feed(ChainRecord(record_id, chain_link, resource))


def _derived_mismatch(document: Mapping[str, Any], resource: Mapping[str, Any]) -> str | None:
    if document.get(ID) != resource.get("id"):
        return "_id differs from the resource id"
    if document.get(DELETED):
        return "the record is marked deleted"
    if list(document.get(COMPARTMENT) or []) != compartment(resource):
        return "the patient compartment (pat) differs from the resource"
    if list(document.get(SECURITY) or []) != security_labels(resource):
        return "the security labels (sec) differ from the resource"
    return None


def _close(verifier: ChainVerifier | None, report: VerificationReport) -> None:
    if verifier is None:
        return
    finding = verifier.finding or verifier.finish()
    if finding is not None:
        report.findings.append(finding)


class _Heads:
    """The stored chain heads, consumed in key order alongside the records."""

    def __init__(self, cursor: AsyncIterator[Mapping[str, Any]]) -> None:
        self._cursor = cursor
        self._next: Mapping[str, Any] | None = None
        self._started = False

    async def _peek(self) -> Mapping[str, Any] | None:
        if not self._started:
            self._started = True
            self._next = await anext(self._cursor, None)
        return self._next

    async def _advance(self) -> None:
        self._next = await anext(self._cursor, None)

    async def take(self, key: str) -> ChainLink | None:
        head = await self._peek()
        if head is None or head.get(ID) != key:
            return None
        await self._advance()
        return _head_link(head)

    async def without_records_before(self, key: str | None) -> AsyncIterator[ChainVerifier]:
        """Verifiers for the heads whose key sorts before `key` (all remaining when None)."""
        while (head := await self._peek()) is not None:
            head_key = head.get(ID)
            if key is not None and isinstance(head_key, str) and head_key >= key:
                return
            await self._advance()
            verifier = ChainVerifier(str(head_key), head=_head_link(head))
            if verifier.head is None:
                verifier.flag(Problem.MODIFIED, None, None, "the chain head is malformed")
            yield verifier


def _head_link(head: Mapping[str, Any]) -> ChainLink | None:
    try:
        return ChainLink.from_document({**head, "key": head.get(ID)})
    except ValueError:
        return None


def run_verify(uri: str, database: str, *, out: TextIO = sys.stdout) -> int:
    """Verify every chain of `database`; print the report. Exit code: 0 intact, 1 broken, 2 unreachable."""
    return asyncio.run(_run_verify(uri, database, out))


async def _run_verify(uri: str, database: str, out: TextIO) -> int:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        uri, tz_aware=True, serverSelectionTimeoutMS=10_000
    )
    try:
        report = await verify_audit_chains(client[database])
    except PyMongoError as error:
        out.write(f"audit verify: cannot read the audit trail: {error}\n")
        return 2
    finally:
        await client.close()
    out.write(report.render())
    return 0 if report.ok else 1


__all__ = ["UNCHAINED", "VerificationReport", "run_verify", "verify_audit_chains"]
