"""The completion manifest and the download of its files (`[base]/$export-file/[job]/[name]`).

https://hl7.org/fhir/uv/bulkdata/export.html#response---complete-status
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC
from email.utils import format_datetime

import orjson
from bson import ObjectId

from fhir_server.fhir.errors import FhirError
from fhir_server.fhir.instants import instant
from fhir_server.interactions.context import InteractionContext
from fhir_server.interactions.export.jobs import FILE_PATH, file_url, own_job
from fhir_server.interactions.export.request import NDJSON
from fhir_server.interactions.response import FhirResponse
from fhir_server.interactions.services import Services
from fhir_server.storage.exports import ExportJob, JobStatus, JobStore


def manifest(services: Services, job: ExportJob) -> FhirResponse:
    """200 with the manifest of a completed job, `Expires` when its files will be deleted."""
    body = {
        "transactionTime": instant(job.transaction_time),
        "request": job.request_url,
        "requiresAccessToken": True,
        "output": [
            {
                "type": output.resource_type,
                "url": file_url(services, job.id, output.name),
                "count": output.count,
            }
            for output in job.outputs
        ],
        "error": [],
    }
    headers = {}
    if job.expires is not None:
        headers["Expires"] = format_datetime(job.expires.astimezone(UTC), usegmt=True)
    return FhirResponse(200, None, headers, raw=orjson.dumps(body), content_type="application/json")


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
    job = await own_job(ctx, services, job_id)
    found = [output for output in job.outputs if output.name == name]
    if job.status is not JobStatus.COMPLETED or not found:
        raise FhirError.of(404, "not-found", f"No file {name} in export {job_id}")
    into.file_id = found[0].file_id
    into.store = services.repository.exports
    return FhirResponse(200, None, content_type=NDJSON)
