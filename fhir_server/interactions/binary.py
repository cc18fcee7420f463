"""Binary content over REST: how it is served (IHE MHD ITI-68), raw uploads.

https://hl7.org/fhir/R4/binary.html, https://profiles.ihe.net/ITI/MHD/ITI-68.html (STANDARDS §5.1)

Who may reach a Binary is decided on the DocumentReference that owns it (consent/binary.py, with its
I/O in interactions/binary_access.py, whose `DocumentBoundAccess` the reads use): a caller who may
not gets 404, as for a Binary that does not exist.

A read returns the raw bytes with their content type unless the client asks for FHIR JSON (an
`Accept` naming JSON, or `_format`); the FHIR Binary resource then carries the content in `data`,
wherever storage keeps it (storage/binaries.py).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterable
from typing import Any

from fhir_server.fhir.errors import FhirError
from fhir_server.fhir.resources import BINARY
from fhir_server.interactions.binary_access import DocumentBoundAccess as DocumentBoundAccess
from fhir_server.interactions.context import InteractionContext
from fhir_server.interactions.render import resource_response
from fhir_server.interactions.response import FhirResponse
from fhir_server.interactions.services import Services
from fhir_server.interactions.write import plan_create, run_planned, with_content
from fhir_server.record.documents import StoredResource
from fhir_server.storage.binaries import content_ref, decode_data, without_pointer
from fhir_server.validation import validate_or_raise

OCTET_STREAM = "application/octet-stream"


async def render(ctx: InteractionContext, services: Services, stored: StoredResource) -> FhirResponse:
    """ITI-68: the raw content unless FHIR JSON is asked for; then the resource with its `data`."""
    resource = stored.resource or {}
    response = resource_response(stored, status=200)
    content = await _content(services, stored)
    if wants_raw(ctx):
        content_type = str(resource.get("contentType") or OCTET_STREAM)
        return FhirResponse(200, None, response.headers, raw=content, content_type=content_type)
    body = without_pointer(resource)
    if content_ref(resource) is not None:
        body["data"] = base64.b64encode(content).decode("ascii")
    return FhirResponse(200, body, response.headers)


async def _content(services: Services, stored: StoredResource) -> bytes:
    resource = stored.resource or {}
    ref = content_ref(resource)
    if resource.get("data") or ref is None:
        return decode_data(resource)
    try:
        return await services.repository.binaries.content(ref, binary_id=stored.id)
    except LookupError as error:
        raise FhirError.of(500, "exception", f"The content of {stored.reference} is missing") from error


def wants_raw(ctx: InteractionContext) -> bool:
    """A client that does not ask for FHIR JSON (Accept or `_format`) gets the document's own bytes."""
    if "_format=" in ctx.request.target.partition("?")[2]:
        return False
    accept = (ctx.request.header("accept") or "").lower()
    return "json" not in accept


async def create_raw(
    ctx: InteractionContext,
    services: Services,
    *,
    content_type: str,
    chunks: AsyncIterable[bytes],
) -> FhirResponse:
    """`POST [base]/Binary` with the content itself as the body (its own Content-Type), streamed to
    storage. `X-Security-Context` is not taken: the server alone sets `securityContext`."""
    resource: dict[str, Any] = {"resourceType": BINARY, "contentType": content_type}
    resource = validate_or_raise(resource, expected_type=BINARY)
    planned = await plan_create(ctx, services, resource)
    async with services.repository.binaries.staging(ctx.now) as staging:
        await staging.receive(resource, chunks)
        return await run_planned(ctx, services, with_content(planned, staging))
