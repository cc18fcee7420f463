"""FHIR read and vread. https://hl7.org/fhir/R4/http.html#read https://hl7.org/fhir/R4/http.html#vread

A Binary read is IHE MHD ITI-68 Retrieve Document: decided by the DocumentReferences that point to
the Binary and served as raw content or FHIR JSON (interactions/binary.py), audited with the
`urn:ihe:event-type-code#ITI-68` subtype.
"""

from __future__ import annotations

from collections.abc import Callable

from fhir_server.consent.model import Decision
from fhir_server.fhir.errors import FhirError, not_found
from fhir_server.fhir.resources import BINARY
from fhir_server.interactions import binary, views
from fhir_server.interactions.context import InteractionContext
from fhir_server.interactions.render import resource_response
from fhir_server.interactions.response import FhirResponse
from fhir_server.interactions.services import Services
from fhir_server.storage.documents import StoredResource
from fhir_server.storage.guard import GuardProvider

RETRIEVE_DOCUMENT = "ITI-68"


def observer(ctx: InteractionContext) -> Callable[[StoredResource, Decision], None]:
    """Records each access decision (refusals included) for the interaction's AuditEvent."""

    def observe(stored: StoredResource, decision: Decision) -> None:
        ctx.audit.touch(stored.reference, patients=stored.compartment, decision=decision)

    return observe


async def read(ctx: InteractionContext, services: Services) -> FhirResponse:
    resource_type, resource_id = _target(ctx)
    stored = await services.repository.read(
        resource_type, resource_id, access=_access(ctx, services), observe=observer(ctx)
    )
    ctx.audit.version_id = str(stored.version)
    return await _answer(ctx, services, stored)


async def vread(ctx: InteractionContext, services: Services, *, version: str) -> FhirResponse:
    resource_type, resource_id = _target(ctx)
    if not version.isdigit():
        raise not_found(resource_type, resource_id)
    access = _access(ctx, services)
    await _ensure_current_visible(ctx, services, access)
    stored = await services.repository.read(
        resource_type, resource_id, version=int(version), access=access, observe=observer(ctx)
    )
    ctx.audit.version_id = str(stored.version)
    if stored.deleted:
        raise FhirError.of(
            410, "deleted", f"Version {version} of {resource_type}/{resource_id} is a deletion"
        )
    return await _answer(ctx, services, stored)


async def _ensure_current_visible(ctx: InteractionContext, services: Services, access: GuardProvider) -> None:
    """404 when the current version is hidden: a resource hidden now hides its earlier versions too
    (docs/consent.md, masking); a deleted resource keeps its history readable."""
    resource_type, resource_id = _target(ctx)
    try:
        await services.repository.read(resource_type, resource_id, access=access, observe=observer(ctx))
    except FhirError as error:
        if error.status != 410:
            raise


def _access(ctx: InteractionContext, services: Services) -> GuardProvider:
    resource_type, resource_id = _target(ctx)
    if resource_type == BINARY:
        ctx.audit.mhd_transaction = RETRIEVE_DOCUMENT
        return binary.DocumentBoundAccess(ctx, services, resource_id)
    return services.access.provider(ctx)


async def _answer(ctx: InteractionContext, services: Services, stored: StoredResource) -> FhirResponse:
    if stored.resource_type == BINARY:
        return await binary.render(ctx, services, stored)
    [shown] = await views.served(ctx, services, [stored])
    return resource_response(shown, status=200)


def _target(ctx: InteractionContext) -> tuple[str, str]:
    if ctx.resource_type is None or ctx.resource_id is None:
        raise RuntimeError("read needs a type and an id from the route")
    return ctx.resource_type, ctx.resource_id
