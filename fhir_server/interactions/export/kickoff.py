"""Kick-off, status and cancel of a `$export` job (the asynchronous request pattern).

https://hl7.org/fhir/uv/bulkdata/export.html

Kick-off (`GET|POST [base]/$export`, `[base]/Patient/$export`, `[base]/Group/[id]/$export`) needs a
`system/` token and `Prefer: respond-async`; it checks the parameters (export/request.py), stores a
job (storage/exports.py) and answers 202 with `Content-Location: [base]/$export-status/[job]`.
Polling that URL answers 202 with `Retry-After` and `X-Progress` while the job runs, then 200 with
the completion manifest (export/files.py); `DELETE` on it cancels the job and deletes its files.

`transactionTime` is the change horizon at kick-off (storage/changes.py), so the next export with
`_since=transactionTime` misses no change.
"""

from __future__ import annotations

import uuid

from fhir_server.auth.tokens import bearer_token
from fhir_server.fhir.errors import FhirError, forbidden
from fhir_server.fhir.interaction import Interaction
from fhir_server.fhir.references import reference_id
from fhir_server.fhir.resources import PATIENT
from fhir_server.interactions.context import InteractionContext
from fhir_server.interactions.export.files import manifest
from fhir_server.interactions.export.jobs import STATUS_PATH, own_job, status_url
from fhir_server.interactions.export.request import (
    GROUP,
    GROUP_LEVEL,
    covered,
    export_parameters,
    system_principal,
)
from fhir_server.interactions.export.worker import ExportWorker
from fhir_server.interactions.response import FhirResponse
from fhir_server.interactions.services import Services
from fhir_server.storage.exports import ExportJob, JobStatus

RETRY_AFTER_SECONDS = 2


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
    principal = system_principal(ctx)
    asked = export_parameters(ctx, services, principal, level=level, body=body)
    patients = asked.patients
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
        types=asked.types,
        since=asked.since,
        type_filters=asked.type_filters,
        patients=patients,
        group=group_id,
        transaction_time=horizon.resume,
        created=ctx.now,
    )
    await worker.ready()
    await worker.store.create(job)
    worker.wake()
    ctx.audit.touch(f"{STATUS_PATH}/{job.id}")
    return FhirResponse(202, None, {"Content-Location": status_url(services, job.id)})


async def _group_members(
    ctx: InteractionContext, services: Services, group_id: str, *, restrict: tuple[str, ...] | None
) -> tuple[str, ...]:
    """The active Patient members of a stored Group, read through the caller's guard (404 unknown)."""
    if not covered(ctx.require_principal(), GROUP):
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


async def status(ctx: InteractionContext, services: Services, *, job_id: str) -> FhirResponse:
    """Poll: 202 + `X-Progress` while running, 200 + manifest when complete, 500 + outcome if failed."""
    ctx.audit.operation = "$export-poll-status"
    ctx.audit.touch(f"{STATUS_PATH}/{job_id}")
    job = await own_job(ctx, services, job_id)
    if job.status is JobStatus.FAILED:
        raise FhirError.of(500, "exception", f"The export failed: {job.error}")
    if job.status is not JobStatus.COMPLETED:
        return FhirResponse(
            202, None, {"Retry-After": str(RETRY_AFTER_SECONDS), "X-Progress": progress_text(job)}
        )
    return manifest(services, job)


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
    await own_job(ctx, services, job_id)
    await worker.store.cancel(job_id, now=ctx.now)
    worker.wake()
    return FhirResponse(202, None)
