"""FHIR read and vread. https://hl7.org/fhir/R4/http.html#read https://hl7.org/fhir/R4/http.html#vread"""

from __future__ import annotations

import base64
from collections.abc import Callable

from fhir_server.consent.model import Decision
from fhir_server.fhir.errors import FhirError, not_found
from fhir_server.fhir.resources import BINARY
from fhir_server.interactions.context import InteractionContext
from fhir_server.interactions.render import resource_response
from fhir_server.interactions.response import FhirResponse
from fhir_server.interactions.services import Services
from fhir_server.storage.documents import StoredResource


def observer(ctx: InteractionContext) -> Callable[[StoredResource, Decision], None]:
    """Records each access decision (refusals included) for the interaction's AuditEvent."""

    def observe(stored: StoredResource, decision: Decision) -> None:
        ctx.audit.touch(stored.reference, patients=stored.compartment, decision=decision)

    return observe


async def read(ctx: InteractionContext, services: Services) -> FhirResponse:
    resource_type, resource_id = _target(ctx)
    stored = await services.repository.read(
        resource_type, resource_id, access=services.access.provider(ctx), observe=observer(ctx)
    )
    ctx.audit.version_id = str(stored.version)
    return _answer(ctx, stored)


async def vread(ctx: InteractionContext, services: Services, *, version: str) -> FhirResponse:
    resource_type, resource_id = _target(ctx)
    if not version.isdigit():
        raise not_found(resource_type, resource_id)
    stored = await services.repository.read(
        resource_type,
        resource_id,
        version=int(version),
        access=services.access.provider(ctx),
        observe=observer(ctx),
    )
    ctx.audit.version_id = str(stored.version)
    if stored.deleted:
        raise FhirError.of(
            410, "deleted", f"Version {version} of {resource_type}/{resource_id} is a deletion"
        )
    return _answer(ctx, stored)


def _answer(ctx: InteractionContext, stored: StoredResource) -> FhirResponse:
    if stored.resource_type == BINARY and stored.resource is not None and _wants_raw(ctx):
        content_type = str(stored.resource.get("contentType") or "application/octet-stream")
        data = base64.b64decode(stored.resource.get("data") or "")
        response = resource_response(stored, status=200)
        return FhirResponse(200, None, response.headers, raw=data, content_type=content_type)
    return resource_response(stored, status=200)


def _wants_raw(ctx: InteractionContext) -> bool:
    """ITI-68: a client that does not ask for FHIR JSON gets the document's own bytes."""
    accept = (ctx.request.header("accept") or "").lower()
    query_format = ctx.request.target.partition("?")[2]
    if "_format=" in query_format:
        return False
    return bool(accept) and "json" not in accept and "*/*" not in accept


def _target(ctx: InteractionContext) -> tuple[str, str]:
    if ctx.resource_type is None or ctx.resource_id is None:
        raise RuntimeError("read needs a type and an id from the route")
    return ctx.resource_type, ctx.resource_id
