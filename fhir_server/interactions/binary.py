"""Binary content over REST: who may fetch it, how it is served (IHE MHD ITI-68), raw uploads.

https://hl7.org/fhir/R4/binary.html, https://profiles.ihe.net/ITI/MHD/ITI-68.html (STANDARDS §5.1)

Access to a Binary is decided by the DocumentReferences that point to it (`content.attachment.url`
= `Binary/<id>`, the `location` search index): a caller who can read one of them (in the Binary's
own patient compartment, when it has one) may fetch the content; a caller who can read none gets
404, as for a hidden document. A Binary no live DocumentReference points to is decided on its own
(its `securityContext` patient's consents, the patient-self and system rules of consent/evaluate.py).

A read returns the raw bytes with their content type unless the client asks for FHIR JSON (an
`Accept` naming JSON, or `_format`); the FHIR Binary resource then carries the content in `data`,
wherever storage keeps it (storage/binaries.py).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterable, Mapping, Sequence
from typing import Any

from fhir_server.consent.model import Decision
from fhir_server.fhir.errors import FhirError
from fhir_server.fhir.interaction import Interaction
from fhir_server.fhir.resources import BINARY, DOCUMENT_REFERENCE
from fhir_server.interactions.context import InteractionContext
from fhir_server.interactions.render import resource_response
from fhir_server.interactions.response import FhirResponse
from fhir_server.interactions.services import Services
from fhir_server.interactions.write import plan_create, run_planned, with_content
from fhir_server.storage.binaries import content_ref, decode_data, without_pointer
from fhir_server.storage.documents import StoredResource
from fhir_server.storage.guard import AccessGuard
from fhir_server.validation import validate_or_raise

LOCATION_FIELD = "idx.location"
OCTET_STREAM = "application/octet-stream"
DOCUMENT_RULE = "document-reference"
"""Decision rule of a Binary read permitted through a DocumentReference the caller can read."""
HIDDEN_DOCUMENTS_RULE = "document-reference-hidden"


def binary_urls(base_url: str, binary_id: str) -> list[str]:
    """The `attachment.url` values that designate Binary `binary_id` on this server."""
    return [f"{BINARY}/{binary_id}", f"{base_url}/{BINARY}/{binary_id}"]


class DocumentBoundAccess:
    """GuardProvider for reading one Binary: its DocumentReferences decide (module docstring)."""

    def __init__(self, ctx: InteractionContext, services: Services, binary_id: str) -> None:
        self._ctx = ctx
        self._services = services
        self._binary_id = binary_id

    async def guard(self, resource_type: str, *, patients: Sequence[str] | None) -> AccessGuard:
        own = await self._services.access.provider(self._ctx).guard(resource_type, patients=patients)
        query = {LOCATION_FIELD: {"$in": binary_urls(self._ctx.request.base_url, self._binary_id)}}
        holders = {
            patient
            for compartment in await self._services.repository.compartments_where(DOCUMENT_REFERENCE, query)
            if not patients or set(compartment) & set(patients)
            for patient in compartment
        }
        if not holders:
            return own
        provider = self._services.access.provider(self._ctx, interaction=Interaction.READ)
        documents_guard = await provider.guard(DOCUMENT_REFERENCE, patients=sorted(holders))
        documents = await self._services.repository.find(DOCUMENT_REFERENCE, query, guard=documents_guard)
        visible = [
            (document, documents_guard.decide(document))
            for document in documents
            if not patients or set(document.compartment) & set(patients)
        ]
        for document, _ in visible:
            self._ctx.audit.patients.update(document.compartment)
        return _DocumentBoundGuard(own, self._binary_id, [decision for _, decision in visible])


class _DocumentBoundGuard:
    """Permits its Binary when a DocumentReference pointing to it was permitted; reads only."""

    def __init__(self, own: AccessGuard, binary_id: str, decisions: list[Decision]) -> None:
        self._own = own
        self._binary_id = binary_id
        self._decisions = decisions

    def query_filter(self, resource_type: str) -> Mapping[str, Any] | None:
        return self._own.query_filter(resource_type)

    def decide(self, stored: StoredResource) -> Decision:
        if not self._decisions or (stored.resource_type, stored.id) != (BINARY, self._binary_id):
            return Decision.deny(HIDDEN_DOCUMENTS_RULE)
        first = self._decisions[0]
        return Decision.allow(
            DOCUMENT_RULE,
            consents=tuple(dict.fromkeys(ref for d in self._decisions for ref in d.consents)),
            break_the_glass=first.break_the_glass,
        )


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
    security_context: str | None,
) -> FhirResponse:
    """`POST [base]/Binary` with the content itself as the body (its own Content-Type), streamed to
    storage; `X-Security-Context` names the resource whose access rules apply (R4 binary.html)."""
    resource: dict[str, Any] = {"resourceType": BINARY, "contentType": content_type}
    if security_context:
        resource["securityContext"] = {"reference": security_context}
    resource = validate_or_raise(resource, expected_type=BINARY)
    planned = await plan_create(ctx, services, resource)
    async with services.repository.binaries.staging(ctx.now) as staging:
        await staging.receive(resource, chunks)
        return await run_planned(ctx, services, with_content(planned, staging))
