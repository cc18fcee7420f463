"""FHIR Bulk Data Access v2 `$export` (system, Patient and Group level) with the async request pattern.

https://hl7.org/fhir/uv/bulkdata/export.html

Kick-off (`GET|POST [base]/$export`, `[base]/Patient/$export`, `[base]/Group/[id]/$export`) needs a
`system/` token and `Prefer: respond-async`; it checks the parameters, stores a job
(storage/exports.py) and answers 202 with `Content-Location: [base]/$export-status/[job]`.
Polling that URL answers 202 with `Retry-After` and `X-Progress` while the job runs, then 200 with
the completion manifest; `DELETE` on it cancels the job and deletes its files. Files are served at
`[base]/$export-file/[job]/[name]`. Status, cancel and files answer only the kick-off's client
(`client_id`), with a valid token; any other caller gets 404, as for an unknown job.

Jobs run in `ExportWorker`, an asyncio task per server process: it claims pending jobs with a
lease held in MongoDB, so a job survives a restart (another process claims it once the lease
lapses, or at once after a graceful stop) and runs on one instance at a time. For each type the
runner streams one MongoDB cursor (no skip, no whole type in memory) through the search engine's
guard: consent is decided for every resource with the exporting client as the actor (`search-type`
access, consents loaded per type, so a consent changed during an export applies to the next type).
Lines go to GridFS in NDJSON files of at most `part_bytes` (one or more per type). A type the
previous runner left unfinished is rewritten from its start; finished types are kept.

`_since` selects resources whose current version was committed at or after the instant (the change
time of storage/changes.py); `transactionTime` is the change horizon at kick-off, so the next export
with `_since=transactionTime` misses no change. Deleted resources are not reported.

Audit: the kick-off, each poll, cancel and download are audited by the pipeline (operation
`$export`, `$export-poll-status`, `$export-file`). At completion the worker records one summary
AuditEvent (no patient entity; `outcomeDesc` gives the counts) and one per patient whose data went
into the files, each naming the job's requester (BALP split per patient).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson
from bson import ObjectId
from pymongo.errors import PyMongoError

from fhir_server.auth.principal import Principal
from fhir_server.auth.scopes import granting_scopes
from fhir_server.auth.tokens import bearer_token
from fhir_server.consent.model import Decision
from fhir_server.fhir.errors import FhirError, bad_request, forbidden
from fhir_server.fhir.instants import instant, now_utc
from fhir_server.fhir.interaction import Interaction
from fhir_server.fhir.references import reference_id
from fhir_server.fhir.resources import PATIENT, REACHED_THROUGH_DOCUMENTS, SUPPORTED_TYPES
from fhir_server.interactions import views
from fhir_server.interactions.context import InteractionContext, RequestMeta
from fhir_server.interactions.pipeline import record_audit
from fhir_server.interactions.response import FhirResponse
from fhir_server.interactions.search import compile_criteria
from fhir_server.interactions.services import Services
from fhir_server.record import documents as doc
from fhir_server.search.parse import parse_search
from fhir_server.storage.exports import ExportJob, FileWriter, JobStatus, JobStore, LeaseLost, OutputFile
from fhir_server.storage.guard import AccessGuard
from fhir_server.validation import parse_resource_json

log = logging.getLogger("fhir_server.export")

NDJSON = "application/fhir+ndjson"
OUTPUT_FORMATS = frozenset({NDJSON, "application/ndjson", "ndjson"})
EXPORT_TYPES: tuple[str, ...] = tuple(
    t for t in SUPPORTED_TYPES if t not in doc.UNVERSIONED_TYPES and t not in REACHED_THROUGH_DOCUMENTS
)
"""AuditEvents are the server's own trail, not record data a platform copies: not exported."""
GROUP = "Group"
SYSTEM_LEVEL, PATIENT_LEVEL, GROUP_LEVEL = "system", "patient", "group"
PARAMETERS = frozenset({"_outputFormat", "_type", "_since", "_typeFilter", "patient"})
FILTER_RESULT_PARAMETERS = frozenset(
    {"_count", "_sort", "_include", "_revinclude", "_summary", "_elements", "_total", "_cursor", "_contained"}
)
_FILTER_SPLIT = re.compile(r",(?=[A-Z][A-Za-z]*\?)")
RETRY_AFTER_SECONDS = 2
STATUS_PATH = "$export-status"
FILE_PATH = "$export-file"


# -- kick-off -------------------------------------------------------------------------------------


async def kick_off(
    ctx: InteractionContext,
    services: Services,
    *,
    worker: ExportWorker,
    level: str,
    group_id: str | None = None,
    body: bytes = b"",
) -> FhirResponse:
    """`[base]/$export`, `[base]/Patient/$export`, `[base]/Group/[id]/$export` (GET or POST)."""
    ctx.audit.operation = "$export"
    principal = _system_principal(ctx)
    if "respond-async" not in (ctx.request.header("prefer") or "").replace(" ", "").lower().split(","):
        raise bad_request("$export runs asynchronously: send Prefer: respond-async")
    params = _parameters(ctx, body)
    lenient = "handling=lenient" in (ctx.request.header("prefer") or "").replace(" ", "").lower()
    for name, _ in params:
        if name not in PARAMETERS and not lenient:
            raise bad_request(f"$export does not support the parameter {name}", expression=(name,))
    output_format = _one(params, "_outputFormat") or NDJSON
    if output_format not in OUTPUT_FORMATS:
        raise bad_request(f"_outputFormat {output_format} is not supported: use {NDJSON}")
    types = _types(principal, params)
    filters = _type_filters(services, ctx, params, types)
    since = _since(_one(params, "_since"))
    patients = _patient_parameter(params, level=level)
    if level == GROUP_LEVEL:
        if group_id is None:
            raise RuntimeError("Group-level export needs the group id from the route")
        patients = await _group_members(ctx, services, group_id, restrict=patients)
        ctx.audit.touch(f"{GROUP}/{group_id}")
    horizon = await services.repository.change_horizon(now=ctx.now)
    claims = services.verifier.verify(bearer_token(ctx.request.header("authorization")))
    job = ExportJob(
        id=uuid.uuid4().hex,
        status=JobStatus.ACCEPTED,
        client_id=principal.client_id,
        claims=claims,
        client_address=ctx.request.client_address,
        request_url=ctx.request.base_url + ctx.request.target.removeprefix("/fhir"),
        request_id=ctx.request.request_id,
        level=level,
        types=types,
        since=since,
        type_filters=filters,
        patients=patients,
        group=group_id,
        transaction_time=horizon.resume,
        created=ctx.now,
    )
    await worker.ready()
    await worker.store.create(job)
    worker.wake()
    ctx.audit.touch(f"{STATUS_PATH}/{job.id}")
    return FhirResponse(202, None, {"Content-Location": _status_url(services, job.id)})


def _system_principal(ctx: InteractionContext) -> Principal:
    principal = ctx.require_principal()
    if not principal.is_system:
        raise forbidden("Bulk export needs a system/ token (a backend client)")
    return principal


def _covered(principal: Principal, resource_type: str) -> bool:
    return any(
        scope.context == "system"
        for scope in granting_scopes(principal.scopes, Interaction.SEARCH_TYPE, resource_type)
    )


def _parameters(ctx: InteractionContext, body: bytes) -> list[tuple[str, str]]:
    """Query parameters, plus those of a POSTed Parameters resource (valueString / valueInstant /
    valueReference)."""
    params = parse_qsl(ctx.request.target.partition("?")[2], keep_blank_values=True)
    if ctx.request.method != "POST" or not body.strip():
        return params
    payload = parse_resource_json(body)
    if payload.get("resourceType") != "Parameters":
        raise bad_request("POST $export takes a Parameters resource")
    for parameter in payload.get("parameter") or []:
        name = parameter.get("name")
        value = parameter.get("valueString") or parameter.get("valueInstant") or parameter.get("valueCode")
        chosen = value or (parameter.get("valueReference") or {}).get("reference")
        if not isinstance(name, str) or not isinstance(chosen, str):
            raise bad_request("Each $export parameter needs a name and a string, instant or reference value")
        params.append((name, chosen))
    return params


def _one(params: Sequence[tuple[str, str]], name: str) -> str | None:
    values = [value for key, value in params if key == name]
    if len(values) > 1:
        raise bad_request(f"{name} may be given once", expression=(name,))
    return values[0] if values else None


def _types(principal: Principal, params: Sequence[tuple[str, str]]) -> tuple[str, ...]:
    named = [item.strip() for key, value in params if key == "_type" for item in value.split(",")]
    named = list(dict.fromkeys(item for item in named if item))
    for name in named:
        if name not in EXPORT_TYPES:
            raise bad_request(f"{name} cannot be exported here", expression=("_type",))
        if not _covered(principal, name):
            raise forbidden(f"No granted system/ scope permits exporting {name}")
    types = tuple(named) or tuple(t for t in EXPORT_TYPES if _covered(principal, t))
    if not types:
        raise forbidden("No granted system/ scope permits exporting any type")
    return types


def _type_filters(
    services: Services, ctx: InteractionContext, params: Sequence[tuple[str, str]], types: tuple[str, ...]
) -> dict[str, tuple[str, ...]]:
    """`_typeFilter` queries by type, checked now (400 on bad input); compiled when the job runs."""
    filters: dict[str, list[str]] = {}
    for key, value in params:
        if key != "_typeFilter":
            continue
        for query in _FILTER_SPLIT.split(value):
            resource_type, separator, text = query.strip().partition("?")
            if not separator or resource_type not in types:
                raise bad_request(
                    f"_typeFilter {query!r} must be [type]?[query] for an exported type",
                    expression=("_typeFilter",),
                )
            _parse_filter(services, ctx, resource_type, text)
            filters.setdefault(resource_type, []).append(text)
    return {key: tuple(value) for key, value in filters.items()}


def _parse_filter(services: Services, ctx: InteractionContext, resource_type: str, text: str) -> Any:
    params = parse_qsl(text, keep_blank_values=True)
    refused = sorted({name.split(":")[0] for name, _ in params} & FILTER_RESULT_PARAMETERS)
    if refused:
        raise bad_request(
            f"_typeFilter takes search criteria only, not {', '.join(refused)}", expression=("_typeFilter",)
        )
    return parse_search(
        resource_type,
        params,
        registry=services.registry,
        strict=True,
        base_url=services.base_url,
        now=ctx.now,
    )


def _since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as error:
        raise bad_request(f"_since must be a FHIR instant, not {text!r}", expression=("_since",)) from error
    if value.tzinfo is None:
        raise bad_request("_since must carry a time zone", expression=("_since",))
    return value


def _patient_parameter(params: Sequence[tuple[str, str]], *, level: str) -> tuple[str, ...] | None:
    references = [value for key, value in params if key == "patient"]
    if not references:
        return None
    if level == SYSTEM_LEVEL:
        raise bad_request("patient applies to Patient- and Group-level export", expression=("patient",))
    ids = [reference_id({"reference": reference}, PATIENT) for reference in references]
    if any(item is None for item in ids):
        raise bad_request("patient takes references Patient/[id]", expression=("patient",))
    return tuple(sorted({item for item in ids if item is not None}))


async def _group_members(
    ctx: InteractionContext, services: Services, group_id: str, *, restrict: tuple[str, ...] | None
) -> tuple[str, ...]:
    """The active Patient members of a stored Group, read through the caller's guard (404 unknown)."""
    if not _covered(ctx.require_principal(), GROUP):
        raise forbidden("No granted system/ scope permits reading Group")
    provider = services.access.provider(ctx, interaction=Interaction.READ)
    stored = await services.repository.read(GROUP, group_id, access=provider)
    members: set[str] = set()
    for member in (stored.resource or {}).get("member") or []:
        patient = reference_id(member.get("entity"), PATIENT)
        if patient is not None and not member.get("inactive"):
            members.add(patient)
    if restrict is not None:
        members &= set(restrict)
    return tuple(sorted(members))


def _status_url(services: Services, job_id: str) -> str:
    return f"{services.base_url}/{STATUS_PATH}/{job_id}"


# -- status, cancel, files ------------------------------------------------------------------------


async def _own_job(ctx: InteractionContext, services: Services, job_id: str) -> ExportJob:
    """The caller's job, 404 for anyone else (and for unknown, cancelled or expired jobs)."""
    principal = _system_principal(ctx)
    job = await services.repository.exports.get(job_id)
    if (
        job is None
        or job.client_id != principal.client_id
        or job.status is JobStatus.CANCELLED
        or (job.expires is not None and job.expires <= ctx.now)
    ):
        raise FhirError.of(404, "not-found", f"No export job {job_id}")
    return job


async def status(ctx: InteractionContext, services: Services, *, job_id: str) -> FhirResponse:
    """Poll: 202 + `X-Progress` while running, 200 + manifest when complete, 500 + outcome if failed."""
    ctx.audit.operation = "$export-poll-status"
    ctx.audit.touch(f"{STATUS_PATH}/{job_id}")
    job = await _own_job(ctx, services, job_id)
    if job.status is JobStatus.FAILED:
        raise FhirError.of(500, "exception", f"The export failed: {job.error}")
    if job.status is not JobStatus.COMPLETED:
        return FhirResponse(
            202, None, {"Retry-After": str(RETRY_AFTER_SECONDS), "X-Progress": progress_text(job)}
        )
    manifest = {
        "transactionTime": instant(job.transaction_time),
        "request": job.request_url,
        "requiresAccessToken": True,
        "output": [
            {
                "type": output.resource_type,
                "url": _file_url(services, job.id, output.name),
                "count": output.count,
            }
            for output in job.outputs
        ],
        "error": [],
    }
    headers = {}
    if job.expires is not None:
        headers["Expires"] = format_datetime(job.expires.astimezone(UTC), usegmt=True)
    return FhirResponse(200, None, headers, raw=orjson.dumps(manifest), content_type="application/json")


def progress_text(job: ExportJob) -> str:
    """`X-Progress`: a percentage of the estimated resource count, then what is being written."""
    done = len(job.done_types)
    if job.status is JobStatus.ACCEPTED:
        return "0% queued"
    percent = min(99, 100 * job.exported // job.estimated) if job.estimated else 0
    doing = f", writing {job.current_type}" if job.current_type else ""
    return f"{percent}% ({job.exported} resources, {done}/{len(job.types)} types done{doing})"


async def cancel(
    ctx: InteractionContext, services: Services, *, worker: ExportWorker, job_id: str
) -> FhirResponse:
    """`DELETE` on the status URL: 202; the runner stops at its next lease renewal, files are deleted."""
    ctx.audit.operation = "$export-poll-status"
    ctx.audit.touch(f"{STATUS_PATH}/{job_id}")
    await _own_job(ctx, services, job_id)
    await worker.store.cancel(job_id, now=ctx.now)
    worker.wake()
    return FhirResponse(202, None)


@dataclass
class Download:
    """Filled by `download` when the caller may have the file; the route streams it after the audit."""

    file_id: ObjectId | None = None
    store: JobStore | None = None

    def chunks(self) -> AsyncIterator[bytes]:
        if self.file_id is None or self.store is None:
            raise RuntimeError("no file to stream")
        return self.store.read_file(self.file_id)


async def download(
    ctx: InteractionContext, services: Services, *, job_id: str, name: str, into: Download
) -> FhirResponse:
    ctx.audit.operation = "$export-file"
    ctx.audit.touch(f"{FILE_PATH}/{job_id}/{name}")
    job = await _own_job(ctx, services, job_id)
    found = [output for output in job.outputs if output.name == name]
    if job.status is not JobStatus.COMPLETED or not found:
        raise FhirError.of(404, "not-found", f"No file {name} in export {job_id}")
    into.file_id = found[0].file_id
    into.store = services.repository.exports
    return FhirResponse(200, None, content_type=NDJSON)


def _file_url(services: Services, job_id: str, name: str) -> str:
    return f"{services.base_url}/{FILE_PATH}/{job_id}/{name}"


# -- the worker -----------------------------------------------------------------------------------


class ExportWorker:
    """Claims and runs export jobs in this process; deletes expired and cancelled ones."""

    def __init__(
        self,
        services: Services,
        *,
        lease: timedelta = timedelta(seconds=30),
        poll_seconds: float = 1.0,
        retention: timedelta = timedelta(hours=1),
        part_bytes: int = 64 * 1024 * 1024,
        concurrency: int = 2,
    ) -> None:
        self.services = services
        self.store = services.repository.exports
        self.owner = uuid.uuid4().hex
        self.lease = lease
        self.retention = retention
        self.part_bytes = part_bytes
        self._poll_seconds = poll_seconds
        self._concurrency = concurrency
        self._wake = asyncio.Event()
        self._indexed = False
        self._indexing = asyncio.Lock()
        self._loop_task: asyncio.Task[None] | None = None
        self._running: dict[str, asyncio.Task[None]] = {}

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._loop(), name="export-worker")

    async def stop(self) -> None:
        """Stop claiming, stop the running jobs and give their leases back for another instance."""
        tasks = [task for task in [self._loop_task, *self._running.values()] if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for job_id in list(self._running):
            try:
                await self.store.release(job_id, self.owner)
            except PyMongoError:
                log.warning("export job %s: lease not released, it lapses on its own", job_id)
        self._running.clear()
        self._loop_task = None

    def wake(self) -> None:
        self._wake.set()

    async def ready(self) -> None:
        """Create the job collections and indexes once, before any job is stored: the embedded
        database may deadlock when one request creates a collection by inserting into it while
        another creates it with its indexes."""
        async with self._indexing:
            if not self._indexed:
                await self.store.ensure_indexes()
                self._indexed = True

    async def _loop(self) -> None:
        await self.ready()
        while True:
            try:
                await self._tick()
            except PyMongoError:
                log.exception("export worker: database unavailable, retrying")
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 a cancellation that races wait_for's
                # timeout comes out as TimeoutError, and the worker would never stop.
                async with asyncio.timeout(self._poll_seconds):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    async def _tick(self) -> None:
        now = now_utc()
        for job_id in await self.store.lapsed(now):
            if job_id not in self._running:
                await self.store.delete(job_id)
        while len(self._running) < self._concurrency:
            job = await self.store.claim(self.owner, now=now, lease=self.lease, running=list(self._running))
            if job is None:
                return
            task = asyncio.create_task(self._run(job), name=f"export-{job.id}")
            self._running[job.id] = task
            task.add_done_callback(functools.partial(self._finished, job.id))

    def _finished(self, job_id: str, _task: asyncio.Task[None]) -> None:
        self._running.pop(job_id, None)
        self._wake.set()

    async def _run(self, job: ExportJob) -> None:
        runner = _Runner(self, job)
        try:
            await runner.run()
        except LeaseLost:
            log.info("export job %s: stopped (cancelled, expired or taken over)", job.id)
            await runner.discard_partial()
        except Exception as error:  # the task boundary: record the failure for the client's next poll
            log.exception("export job %s failed", job.id)
            await runner.discard_partial()
            message = error.message if isinstance(error, FhirError) else f"{type(error).__name__}"
            try:
                await self.store.update(
                    job.id,
                    self.owner,
                    {"$set": {"status": str(JobStatus.FAILED), "error": message, "expires": self._expiry()}},
                )
            except (LeaseLost, PyMongoError):
                log.warning("export job %s: failure not recorded", job.id)

    def _expiry(self) -> datetime:
        return now_utc() + self.retention


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


class _Runner:
    """Runs one claimed job to completion, renewing its lease as it goes."""

    def __init__(self, worker: ExportWorker, job: ExportJob) -> None:
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
                request = _parse_filter(self._services, ctx, resource_type, text)
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
                    "expires": self._worker._expiry(),
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


__all__ = [
    "EXPORT_TYPES",
    "GROUP_LEVEL",
    "NDJSON",
    "PATIENT_LEVEL",
    "SYSTEM_LEVEL",
    "Download",
    "ExportWorker",
    "cancel",
    "download",
    "kick_off",
    "progress_text",
    "status",
]
