"""The one path every FHIR request takes (DESIGN §2): authenticate -> scope check -> interaction
(consent decisions and guarded storage inside) -> AuditEvent, awaited -> response.

No route calls an interaction any other way, so none can skip authentication, scopes or audit
(DESIGN I1, I2). An AuditEvent that cannot be persisted turns the response into a 503, and for
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
from fhir_server.auth.scopes import PERMISSION_OF, granting_scopes
from fhir_server.auth.tokens import bearer_token
from fhir_server.fhir.errors import FhirError, forbidden, operation_outcome, unavailable
from fhir_server.fhir.resources import AUDIT_EVENT
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
    outcome_desc: str | None = None
    try:
        if authorization is not None or not anonymous_allowed:
            ctx.principal = authenticate(services, ctx, authorization)
            check_scope(ctx)
        response = await handler(ctx, services)
    except AuditUnavailable:
        log.exception("audit store unavailable")
        return error_response(unavailable("The audit trail cannot be written; the request was not served"))
    except FhirError as error:
        response = error_response(error)
        outcome_desc = error.message
    except Exception:
        log.exception("unhandled error in %s", ctx.interaction)
        response = error_response(FhirError.of(500, "exception", "Internal server error"))
        outcome_desc = "Internal server error"
    if ctx.audit.recorded:
        return response
    try:
        await record_audit(services, ctx, response.status, outcome_desc=outcome_desc)
    except AuditUnavailable:
        log.exception("audit store unavailable")
        return error_response(unavailable("The audit trail cannot be written; the request was not served"))
    return response


def authenticate(services: Services, ctx: InteractionContext, authorization: str | None) -> Principal:
    claims = services.verifier.verify(bearer_token(authorization))
    return Principal.from_claims(claims, network_address=ctx.request.client_address)


def check_scope(ctx: InteractionContext, resource_type: str | None = None) -> None:
    """403 unless a SMART scope covers the interaction on the type (patient/ needs a patient in context)."""
    principal = ctx.require_principal()
    target = resource_type or ctx.resource_type
    if target is None or ctx.interaction not in PERMISSION_OF:
        return
    # Reading the audit trail needs an explicit AuditEvent scope; writes stay 405 whatever the scope.
    wildcard_audit_read = target == AUDIT_EVENT and PERMISSION_OF[ctx.interaction] in "rs"
    scopes = tuple(
        scope
        for scope in granting_scopes(principal.scopes, ctx.interaction, target)
        if (scope.context != "patient" or principal.patient)
        and not (wildcard_audit_read and scope.context == "user" and scope.resource_type == "*")
    )
    if not scopes:
        raise forbidden(f"No granted scope permits {ctx.interaction} on {target}")


def error_response(error: FhirError) -> FhirResponse:
    return FhirResponse(error.status, operation_outcome(error.issues), dict(error.headers))


def facts_of(ctx: InteractionContext, status: int, *, outcome_desc: str | None) -> InteractionFacts:
    decisions = ctx.audit.decisions
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
        raw_query=_raw_request(ctx) if ctx.interaction.is_search or ctx.interaction.is_history else None,
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
    """Run a write and its AuditEvent in one transaction: both commit, or neither does (DESIGN I2)."""

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
]
