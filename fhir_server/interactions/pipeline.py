"""The one path every FHIR request takes (docs/architecture.md): authenticate -> scope check -> interaction
(consent decisions and guarded storage inside) -> AuditEvent, awaited -> response.

No route calls an interaction any other way, so none can skip authentication, scopes or audit
(docs/architecture.md I1, I2). An AuditEvent that cannot be persisted turns the response into a 503, and for
writes it is recorded inside the data transaction, so the change and its trace commit together.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pymongo.asynchronous.client_session import AsyncClientSession

from fhir_server.audit.balp import InteractionFacts, build_audit_events
from fhir_server.audit.sink import AuditUnavailable
from fhir_server.auth.principal import Principal
from fhir_server.auth.scopes import PERMISSION_OF, permitted_scopes
from fhir_server.auth.tokens import bearer_token
from fhir_server.fhir.errors import FhirError, forbidden, operation_outcome, unavailable
from fhir_server.interactions.context import InteractionContext
from fhir_server.interactions.response import FhirResponse
from fhir_server.interactions.services import Services

log = logging.getLogger("fhir_server")

Handler = Callable[[InteractionContext, Services], Awaitable[FhirResponse]]
T = TypeVar("T")


async def execute(
    services: Services,
    ctx: InteractionContext,
    handler: Handler,
    *,
    authorization: str | None,
    anonymous_allowed: bool = False,
) -> FhirResponse:
    """Run `handler` for `ctx` through authentication, scope check and audit."""
    try:
        if authorization is not None or not anonymous_allowed:
            try:
                ctx.principal = authenticate(services, ctx, authorization)
            except FhirError as error:
                await record_audit(services, ctx, error.status, outcome_desc=error.message)
                return error_response(error)
        return await serve(services, ctx, handler)
    except AuditUnavailable:
        log.exception("audit store unavailable")
        return error_response(unavailable("The audit trail cannot be written; the request was not served"))


async def serve(services: Services, ctx: InteractionContext, handler: Handler) -> FhirResponse:
    """Scope check, interaction, AuditEvent: an authenticated request, or one entry of a Bundle.

    `AuditUnavailable` propagates: the whole request fails with 503 (`execute`).
    """
    outcome_desc: str | None = None
    try:
        if ctx.principal is not None:
            check_scope(ctx)
        response = await handler(ctx, services)
    except AuditUnavailable:
        raise
    except FhirError as error:
        response = error_response(error)
        outcome_desc = error.message
    except Exception:
        log.exception("unhandled error in %s", ctx.interaction)
        response = error_response(FhirError.of(500, "exception", "Internal server error"))
        outcome_desc = "Internal server error"
    if not ctx.audit.recorded:
        await record_audit(services, ctx, response.status, outcome_desc=outcome_desc)
    return response


def authenticate(services: Services, ctx: InteractionContext, authorization: str | None) -> Principal:
    claims = services.verifier.verify(bearer_token(authorization))
    return Principal.from_claims(claims, network_address=ctx.request.client_address)


def check_scope(ctx: InteractionContext, resource_type: str | None = None) -> None:
    """403 unless a SMART scope covers the interaction on the type (auth/scopes.py: permitted_scopes).

    Which resources of the type the scopes then leave visible (`patient/` compartment, `?param=value`
    restrictions) is decided with the data, by the guards (auth/confinement.py).
    """
    principal = ctx.require_principal()
    target = resource_type or ctx.resource_type
    if target is None or ctx.interaction not in PERMISSION_OF:
        return
    if not permitted_scopes(
        principal.scopes, ctx.interaction, target, patient=principal.patient, system=principal.is_system
    ):
        raise forbidden(f"No granted scope permits {ctx.interaction} on {target}")


def error_response(error: FhirError) -> FhirResponse:
    return FhirResponse(error.status, operation_outcome(error.issues), dict(error.headers))


def facts_of(ctx: InteractionContext, status: int, *, outcome_desc: str | None) -> InteractionFacts:
    decisions = ctx.audit.decisions
    raw = ctx.interaction.is_search or ctx.interaction.is_history or ctx.audit.raw_request
    if ctx.principal is None:
        # Not authenticated: anyone could send this, so it names no resource and no patient (it would
        # land in that patient's trail); the server trail keeps the request as received instead.
        return InteractionFacts(
            interaction=ctx.interaction,
            status=status,
            outcome_desc=outcome_desc,
            client_address=ctx.request.client_address,
            raw_query=_raw_request(ctx) if raw or status >= 400 else None,
            request_id=ctx.request.request_id,
            recorded=ctx.now,
            server=ctx.request.base_url,
            operation=ctx.audit.operation,
        )
    return InteractionFacts(
        interaction=ctx.interaction,
        resource_type=ctx.resource_type,
        resource_id=ctx.resource_id,
        version_id=ctx.audit.version_id,
        status=status,
        outcome_desc=outcome_desc,
        principal=ctx.principal,
        client_address=ctx.request.client_address,
        patient_ids=tuple(sorted(ctx.audit.patients)),
        refused_patient_ids=tuple(sorted(ctx.audit.refused_patients - ctx.audit.patients)),
        resources=tuple(ctx.audit.resources),
        raw_query=_raw_request(ctx) if raw else None,
        request_id=ctx.request.request_id,
        decisions=tuple(decisions),
        recorded=ctx.now,
        server=ctx.request.base_url,
        operation=ctx.audit.operation,
        mhd_transaction=ctx.audit.mhd_transaction,
        bundle=ctx.audit.bundle,
    )


def _raw_request(ctx: InteractionContext) -> bytes:
    """The request as received (method and target), for the BALP query entity."""
    return f"{ctx.request.method} {ctx.request.target}".encode()


async def record_audit(
    services: Services,
    ctx: InteractionContext,
    status: int,
    *,
    outcome_desc: str | None = None,
    session: AsyncClientSession | None = None,
) -> None:
    events = build_audit_events(facts_of(ctx, status, outcome_desc=outcome_desc))
    await services.audit.record(events, session=session)
    if session is None:
        ctx.audit.recorded = True


async def audited_write(
    services: Services,
    ctx: InteractionContext,
    work: Callable[[AsyncClientSession], Awaitable[tuple[T, int]]],
) -> T:
    """Run a write and its AuditEvent in one transaction: both commit, or neither does
    (docs/architecture.md I2)."""

    async def transaction(session: AsyncClientSession) -> T:
        result, status = await work(session)
        await record_audit(services, ctx, status, session=session)
        return result

    result = await services.repository.in_transaction(transaction)
    ctx.audit.recorded = True
    return result


__all__ = [
    "Handler",
    "audited_write",
    "check_scope",
    "error_response",
    "execute",
    "record_audit",
    "serve",
]
