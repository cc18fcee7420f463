"""A job's URLs, and the rule that only its kick-off's client may reach it.

Status, cancel and files answer only the kick-off's client (`client_id`), with a valid token; any
other caller gets 404, as for an unknown, cancelled or expired job.
"""

from __future__ import annotations

from fhir_server.fhir.errors import FhirError
from fhir_server.interactions.context import InteractionContext
from fhir_server.interactions.export.request import system_principal
from fhir_server.interactions.services import Services
from fhir_server.storage.exports import ExportJob, JobStatus

STATUS_PATH = "$export-status"
FILE_PATH = "$export-file"


async def own_job(ctx: InteractionContext, services: Services, job_id: str) -> ExportJob:
    """The caller's job, 404 for anyone else (and for unknown, cancelled or expired jobs)."""
    principal = system_principal(ctx)
    job = await services.repository.exports.get(job_id)
    if (
        job is None
        or job.client_id != principal.client_id
        or job.status is JobStatus.CANCELLED
        or (job.expires is not None and job.expires <= ctx.now)
    ):
        raise FhirError.of(404, "not-found", f"No export job {job_id}")
    return job


def status_url(services: Services, job_id: str) -> str:
    return f"{services.base_url}/{STATUS_PATH}/{job_id}"


def file_url(services: Services, job_id: str, name: str) -> str:
    return f"{services.base_url}/{FILE_PATH}/{job_id}/{name}"
