"""Runs one claimed `$export` job: one guarded scan per type, NDJSON parts in GridFS, then the audit.

For each type the runner streams one MongoDB cursor (no skip, no whole type in memory) through the
guarded repository: consent is decided for every resource with the exporting client as the actor
(`search-type` access, consents loaded per type and renewed during a long type, so a consent changed
during an export applies from the next renewal). Lines go to GridFS in NDJSON files of at most
`part_bytes` (one or more per type). A type the previous runner left unfinished is rewritten from
its start; finished types are kept.

`_since` selects resources whose current version was committed at or after the instant (the change
time of storage/changes.py). Deleted resources are not reported.

Audit: at completion the runner records one summary AuditEvent (no patient entity; `outcomeDesc`
gives the counts) and one per patient whose data went into the files, each naming the job's
requester (BALP split per patient), through the pipeline's `record_audit`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

import orjson
from bson import ObjectId
from pymongo.errors import PyMongoError

from fhir_server.auth.principal import Principal
from fhir_server.consent.model import Decision
from fhir_server.fhir.instants import now_utc
from fhir_server.fhir.interaction import Interaction
from fhir_server.interactions import views
from fhir_server.interactions.context import InteractionContext, RequestMeta
from fhir_server.interactions.export.request import GROUP, SYSTEM_LEVEL, parse_filter
from fhir_server.interactions.pipeline import record_audit
from fhir_server.interactions.resolver import compile_criteria
from fhir_server.interactions.services import Services
from fhir_server.record import documents as doc
from fhir_server.storage.exports import ExportJob, FileWriter, JobStatus, JobStore, OutputFile
from fhir_server.storage.guard import AccessGuard


class RunnerHost(Protocol):
    """What a run needs of the worker that leased its job (export/worker.py), without importing it."""

    services: Services
    store: JobStore
    owner: str
    lease: timedelta
    part_bytes: int

    def expiry(self) -> datetime: ...


log = logging.getLogger("fhir_server.export")


@dataclass
class _Part:
    """The NDJSON file being written for one type."""

    resource_type: str
    name: str
    file_id: ObjectId
    stream: FileWriter
    count: int = 0
    size: int = 0
    buffer: bytearray = field(default_factory=bytearray)
    patients: set[str] = field(default_factory=set)


class _RenewedGuard:
    """The guard of one type's scan: the database filter of the first guard (fixed when the cursor
    opens), the decisions of the latest, renewed every `GUARD_RENEWAL` resources. A consent revoked
    during a long export applies from the next renewal, and the evaluator's per-patient cache (and
    the decoded ids it keeps alive) is let go, so memory does not grow with the number of patients."""

    def __init__(self, guard: AccessGuard) -> None:
        self.first = guard
        self.current = guard
        self.decided = 0

    def query_filter(self, resource_type: str) -> Mapping[str, Any] | None:
        return self.first.query_filter(resource_type)

    def decide(self, stored: doc.StoredResource) -> Decision:
        return self.current.decide(stored)


GUARD_RENEWAL = 5_000
FLUSH_BYTES = 256 * 1024
RENEW_EVERY_SECONDS = 2.0


class Runner:
    """Runs one claimed job to completion, renewing its lease as it goes."""

    def __init__(self, worker: RunnerHost, job: ExportJob) -> None:
        self._worker = worker
        self._services = worker.services
        self._store = worker.store
        self._job = job
        self._owner = worker.owner
        self._exported = job.exported
        self._part: _Part | None = None
        self._renewed = time.monotonic()

    async def _update(self, changes_: Mapping[str, Any]) -> None:
        await self._store.update(self._job.id, self._owner, changes_)

    def _context(self, interaction: Interaction) -> InteractionContext:
        """The kick-off's requester, as an interaction context of the job (consent and audit)."""
        job = self._job
        principal = Principal.from_claims(job.claims, network_address=job.client_address)
        meta = RequestMeta(
            method="GET",
            target=job.request_url,
            base_url=self._services.base_url,
            request_id=job.request_id,
            client_address=job.client_address,
        )
        return InteractionContext(
            interaction=interaction, resource_type=None, request=meta, now=now_utc(), principal=principal
        )

    async def run(self) -> None:
        job = self._job
        await self._restart_unfinished()
        if not job.estimated:
            estimated = 0
            for resource_type in job.types:
                estimated += await self._services.repository.estimated_count(resource_type)
            await self._update({"$set": {"estimated": estimated}})
        for resource_type in job.types:
            if resource_type not in job.done_types:
                await self._export_type(resource_type)
        await self._complete()

    async def _restart_unfinished(self) -> None:
        """Delete what a previous owner left of an unfinished type: it is written again from its start."""
        job = self._job
        unfinished = [output for output in job.outputs if output.resource_type not in job.done_types]
        for file_id in [output.file_id for output in unfinished] + ([job.writing] if job.writing else []):
            await self._store.delete_file(file_id)
        kept = [output.to_document() for output in job.outputs if output.resource_type in job.done_types]
        self._exported = sum(output.count for output in job.outputs if output.resource_type in job.done_types)
        await self._update({"$set": {"outputs": kept, "writing": None, "exported": self._exported}})

    async def _export_type(self, resource_type: str) -> None:
        job = self._job
        await self._update({"$set": {"current_type": resource_type}})
        ctx = self._context(Interaction.SEARCH_TYPE)
        guard = _RenewedGuard(await self._guard(resource_type))
        query = await self._query(ctx, resource_type)
        number = 0
        async for stored in self._services.repository.scan(resource_type, query, guard=guard):
            if self._part is None:
                number += 1
                await self._open_part(resource_type, number)
            [shown] = await views.served(ctx, self._services, [stored])
            await self._write(shown)
            if self._part is not None and self._part.size >= self._worker.part_bytes:
                await self._close_part()
            guard.decided += 1
            if guard.decided % GUARD_RENEWAL == 0:
                guard.current = await self._guard(resource_type)
                if self._part is not None:
                    await self._store.add_patients(self._job.id, self._part.patients)
                    self._part.patients.clear()
        if self._part is not None:
            await self._close_part()
        await self._update({"$push": {"done_types": resource_type}, "$set": {"current_type": None}})
        self._job = _with_done(job, resource_type)

    async def _guard(self, resource_type: str) -> AccessGuard:
        """A guard with the consents as they are now (consent/: loaded afresh, never cached)."""
        ctx = self._context(Interaction.SEARCH_TYPE)
        provider = self._services.access.provider(ctx, interaction=Interaction.SEARCH_TYPE)
        return await provider.guard(resource_type, patients=None)

    async def _query(self, ctx: InteractionContext, resource_type: str) -> dict[str, Any]:
        job = self._job
        conditions: list[Mapping[str, Any]] = []
        if job.level != SYSTEM_LEVEL:
            if job.patients is None:
                conditions.append({doc.COMPARTMENT: {"$ne": []}})
            else:
                conditions.append({doc.COMPARTMENT: {"$in": list(job.patients)}})
        if job.since is not None:
            conditions.append({doc.CHANGE_TIME: {"$gte": job.since}})
        texts = job.type_filters.get(resource_type, ())
        if texts:
            alternatives = []
            for text in texts:
                request = parse_filter(self._services, ctx, resource_type, text)
                alternatives.append(await compile_criteria(ctx, self._services, request))
            conditions.append(alternatives[0] if len(alternatives) == 1 else {"$or": alternatives})
        if not conditions:
            return {}
        return dict(conditions[0]) if len(conditions) == 1 else {"$and": conditions}

    async def _open_part(self, resource_type: str, number: int) -> None:
        name = f"{resource_type}-{number}.ndjson"
        writer = self._store.open_file(self._job.id, name)
        await self._update({"$set": {"writing": writer.file_id}})
        self._part = _Part(resource_type, name, writer.file_id, writer)

    async def _write(self, stored: doc.StoredResource) -> None:
        part = self._part
        if part is None:
            raise RuntimeError("no open part")
        line = orjson.dumps(stored.resource) + b"\n"
        part.buffer += line
        part.count += 1
        part.size += len(line)
        part.patients.update(stored.compartment)
        self._exported += 1
        if len(part.buffer) >= FLUSH_BYTES:
            await part.stream.write(bytes(part.buffer))
            part.buffer.clear()
        await self._renew_when_due()

    async def _renew_when_due(self) -> None:
        if time.monotonic() - self._renewed >= RENEW_EVERY_SECONDS:
            await self._renew()

    async def _renew(self) -> None:
        self._renewed = time.monotonic()
        lease = now_utc() + self._worker.lease
        await self._update({"$set": {"lease": lease, "exported": self._exported}})

    async def _close_part(self) -> None:
        part = self._part
        if part is None:
            return
        if part.buffer:
            await part.stream.write(bytes(part.buffer))
        await part.stream.close(now=now_utc())
        await self._store.add_patients(self._job.id, part.patients)
        output = OutputFile(part.resource_type, part.name, part.file_id, part.count)
        await self._update(
            {
                "$push": {"outputs": output.to_document()},
                "$set": {"writing": None, "exported": self._exported},
            }
        )
        self._part = None
        await self._renew()

    async def discard_partial(self) -> None:
        part, self._part = self._part, None
        if part is None:
            return
        try:
            await part.stream.abort()
        except PyMongoError:
            log.warning("export file %s: chunks left for the next owner or the cleaner", part.file_id)

    async def _complete(self) -> None:
        job = self._job
        ctx = self._context(Interaction.OPERATION)
        ctx.audit.operation = "$export"
        if job.group:
            ctx.audit.touch(f"{GROUP}/{job.group}")
        stored = await self._store.get(job.id)
        outputs = stored.outputs if stored is not None else ()
        files = len(outputs)
        summary = f"export {job.id}: {self._exported} resources in {files} file(s), {len(job.types)} type(s)"
        await record_audit(self._services, ctx, 200, outcome_desc=summary)
        batch: list[str] = []
        async for patient in self._store.patients(job.id):
            batch.append(patient)
            if len(batch) == AUDIT_BATCH:
                await self._audit_patients(batch, summary)
                await self._renew_when_due()
                batch = []
        if batch:
            await self._audit_patients(batch, summary)
        await self._update(
            {
                "$set": {
                    "status": str(JobStatus.COMPLETED),
                    "expires": self._worker.expiry(),
                    "exported": self._exported,
                    "owner": None,
                    "lease": None,
                }
            }
        )

    async def _audit_patients(self, patients: list[str], summary: str) -> None:
        ctx = self._context(Interaction.OPERATION)
        ctx.audit.operation = "$export"
        ctx.audit.patients.update(patients)
        await record_audit(self._services, ctx, 200, outcome_desc=summary)


AUDIT_BATCH = 500
"""Per-patient AuditEvents are recorded this many at a time (one group-commit batch of the sink)."""


def _with_done(job: ExportJob, resource_type: str) -> ExportJob:
    return replace(job, done_types=(*job.done_types, resource_type))
