"""HTTP-free rendering of stored resources: body, ETag, Last-Modified, Location, Prefer: return."""

from __future__ import annotations

from datetime import UTC
from email.utils import format_datetime

from fhir_server.fhir.errors import Issue, operation_outcome
from fhir_server.interactions.context import InteractionContext
from fhir_server.interactions.response import FhirResponse
from fhir_server.record.documents import StoredResource


def version_headers(stored: StoredResource) -> dict[str, str]:
    modified = stored.last_updated.astimezone(UTC)
    return {"ETag": stored.etag, "Last-Modified": format_datetime(modified, usegmt=True)}


def resource_response(stored: StoredResource, *, status: int) -> FhirResponse:
    return FhirResponse(status, stored.resource, version_headers(stored))


def write_response(
    ctx: InteractionContext, stored: StoredResource, *, status: int, location: bool = True
) -> FhirResponse:
    """A create/update/patch answer honouring `Prefer: return=minimal|representation|OperationOutcome`."""
    headers = version_headers(stored)
    if location:
        headers["Location"] = f"{ctx.request.base_url}/{stored.reference}/_history/{stored.version}"
    preference = _return_preference(ctx)
    if preference == "minimal":
        return FhirResponse(status, None, headers)
    if preference == "operationoutcome":
        outcome = operation_outcome(
            [Issue("information", "informational", f"{stored.reference} saved as version {stored.version}")]
        )
        return FhirResponse(status, outcome, headers)
    return FhirResponse(status, stored.resource, headers)


def _return_preference(ctx: InteractionContext) -> str | None:
    header = ctx.request.header("prefer") or ""
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == "return":
            return value.strip().strip('"').lower()
    return None
