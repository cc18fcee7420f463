"""FHIR create, update, patch and delete, plain and conditional.

https://hl7.org/fhir/R4/http.html#create https://hl7.org/fhir/R4/http.html#update
https://hl7.org/fhir/R4/http.html#patch https://hl7.org/fhir/R4/http.html#delete
https://hl7.org/fhir/R4/http.html#cond-update

Each write decides access twice: may the caller see the current version (else 404, existence is not
revealed), and may it make this change (else 403). The new version, its history entry and the
AuditEvent are committed in one transaction (pipeline.audited_write).

Hidden is absent (docs/security.md): a resource the caller may not see answers every write, plain or
conditional, exactly as an id that does not exist. Creating a resource under a client-chosen id
(update as create) is for `system/` clients only; others get 404. Error bodies never carry stored
content (a failed JSON Patch `test` says only that it failed). A Binary is decided on the
DocumentReference that owns it, whose ownership the server alone sets (interactions/binary_access.py).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

import jsonpatch
import orjson
from pymongo.asynchronous.client_session import AsyncClientSession

from fhir_server.consent.binary import decide_binary_create
from fhir_server.consent.model import Decision
from fhir_server.consent.refusals import refusal_reason
from fhir_server.consent.writers import identity_change
from fhir_server.fhir.errors import (
    FhirError,
    bad_request,
    forbidden,
    gone,
    method_not_allowed,
    not_found,
    precondition_failed,
)
from fhir_server.fhir.interaction import Interaction
from fhir_server.fhir.resources import BINARY, CLIENT_WRITABLE_TYPES, DOCUMENT_REFERENCE
from fhir_server.interactions import binary_access, views
from fhir_server.interactions.context import InteractionContext
from fhir_server.interactions.matching import find_matches
from fhir_server.interactions.pipeline import audited_write
from fhir_server.interactions.render import write_response
from fhir_server.interactions.response import FhirResponse
from fhir_server.interactions.services import Services
from fhir_server.storage.binaries import Staging
from fhir_server.storage.documents import StoredResource
from fhir_server.validation import check_bounds, parse_resource_json, validate_or_raise

FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
JSON_PATCH = "application/json-patch+json"
SERVER_OWNED_META = ("versionId", "lastUpdated")


def check_id(resource_type: str, resource_id: str) -> None:
    if not FHIR_ID.match(resource_id):
        raise not_found(resource_type, resource_id)


def _writable(ctx: InteractionContext) -> str:
    resource_type = ctx.resource_type
    if resource_type is None:
        raise RuntimeError("writes need a type from the route")
    if resource_type not in CLIENT_WRITABLE_TYPES:
        raise method_not_allowed(
            f"{resource_type} is written by the server only; {ctx.interaction} is refused"
        )
    return resource_type


def _prepare(resource: dict[str, Any]) -> dict[str, Any]:
    """Drop what the server owns (meta.versionId, meta.lastUpdated) from a client's resource."""
    meta = {key: value for key, value in (resource.get("meta") or {}).items() if key not in SERVER_OWNED_META}
    body = {key: value for key, value in resource.items() if key != "meta"}
    if meta:
        body["meta"] = meta
    return body


async def _decide(
    ctx: InteractionContext, services: Services, stored: StoredResource, interaction: Interaction
) -> Decision:
    """The caller's decision on one version; a Binary's is its owning document's (consent/binary.py)."""
    if stored.resource_type == BINARY:
        if interaction == Interaction.CREATE:
            return decide_binary_create()
        return await binary_access.decide(ctx, services, stored.id, interaction)
    guard = await services.access.provider(ctx, interaction=interaction).guard(
        stored.resource_type, patients=stored.compartment
    )
    return guard.decide(stored)


async def _ensure_may_write(
    ctx: InteractionContext, services: Services, stored: StoredResource, *, interaction: Interaction
) -> None:
    decision = await _decide(ctx, services, stored, interaction)
    ctx.audit.touch(stored.reference, patients=stored.compartment, decision=decision)
    if not decision.permit:
        reason = refusal_reason(decision, stored.compartment)
        raise forbidden(f"You may not {interaction} this {stored.resource_type}: {reason}")


def _ensure_identity_kept(
    ctx: InteractionContext, previous: StoredResource, resource: dict[str, Any]
) -> None:
    """A patient changes her demographics, never her identifiers (consent/writers.py)."""
    refusal = identity_change(ctx.require_principal(), previous.resource, resource)
    if refusal is not None:
        ctx.audit.decisions.append(refusal)
        raise forbidden(f"A patient may not change the identifiers of her record ({refusal.rule})")


async def _may_see(ctx: InteractionContext, services: Services, stored: StoredResource) -> bool:
    """Whether the caller could read the current version (the decision goes to the AuditEvent)."""
    decision = await _decide(ctx, services, stored, Interaction.READ)
    ctx.audit.touch(stored.reference, patients=stored.compartment, decision=decision)
    return decision.permit


async def _ensure_may_see(ctx: InteractionContext, services: Services, stored: StoredResource) -> None:
    """404 unless the caller could read the current version: a hidden resource is never revealed."""
    if not await _may_see(ctx, services, stored):
        raise not_found(stored.resource_type, stored.id)


def _prospective(
    services: Services, resource_type: str, resource: dict[str, Any], *, version: int, now: datetime
) -> StoredResource:
    """The version about to be written, with its search index, so consent decides on what will be stored."""
    return StoredResource.prospective(
        resource_type, resource, version=version, now=now, index=services.registry.extract(resource)
    )


async def _matches(
    ctx: InteractionContext, services: Services, resource_type: str, params: Sequence[tuple[str, str]]
) -> list[StoredResource]:
    """Up to two visible resources matching conditional criteria; a hidden one does not match."""
    if resource_type == BINARY:
        return await binary_access.find_matches(ctx, services, params)
    return await find_matches(ctx, services, resource_type, params)


def _server_owned(
    ctx: InteractionContext, resource_type: str, resource: dict[str, Any], previous: StoredResource | None
) -> dict[str, Any]:
    """The resource with what only the server sets: a Binary's owner and uploader."""
    if resource_type == BINARY:
        return binary_access.owned(ctx, resource, previous)
    return resource


async def _bind(
    ctx: InteractionContext,
    services: Services,
    resource_type: str,
    resource: dict[str, Any],
    previous: StoredResource | None,
    session: AsyncClientSession,
) -> None:
    """A DocumentReference designates only Binaries it may (interactions/binary_access.py)."""
    if resource_type == DOCUMENT_REFERENCE:
        live = previous if previous is not None and not previous.deleted else None
        await binary_access.bind_attachments(ctx, services, resource, live, session=session)


def _check_if_match(ctx: InteractionContext, current: StoredResource | None) -> None:
    header = ctx.request.header("if-match")
    if header is None:
        return
    expected = header.strip().removeprefix("W/").strip('"')
    if current is None or current.deleted or str(current.version) != expected:
        found = "none" if current is None or current.deleted else current.etag
        raise precondition_failed(f"If-Match {header} does not match the current version ({found})")


# -- plans: a write resolved (conditionals, access to the target) and ready to run in a transaction


@dataclass
class Planned:
    """A resolved write. `apply` runs inside a transaction; `existing` means nothing is to be written
    (a conditional create that matched)."""

    apply: Apply | None
    existing: StoredResource | None = None


Apply = Callable[[AsyncClientSession], Awaitable[tuple[StoredResource | None, int]]]


async def plan_create(ctx: InteractionContext, services: Services, resource: dict[str, Any]) -> Planned:
    resource_type = _writable(ctx)
    condition = ctx.request.header("if-none-exist")
    if condition:
        matches = await _matches(ctx, services, resource_type, _query_pairs(condition))
        if len(matches) > 1:
            raise precondition_failed(f"If-None-Exist '{condition}' matches several resources")
        if matches:
            existing = matches[0]
            ctx.resource_id = existing.id
            ctx.audit.touch(existing.reference, patients=existing.compartment)
            return Planned(None, existing)
    resource.setdefault("id", str(uuid.uuid4()))
    ctx.resource_id = resource["id"]
    return _plan_new(ctx, services, resource_type, resource)


def _plan_new(
    ctx: InteractionContext, services: Services, resource_type: str, resource: dict[str, Any]
) -> Planned:
    async def apply(session: AsyncClientSession) -> tuple[StoredResource | None, int]:
        body = _server_owned(ctx, resource_type, resource, None)
        await _ensure_may_write(
            ctx,
            services,
            _prospective(services, resource_type, body, version=1, now=ctx.now),
            interaction=Interaction.CREATE,
        )
        previous = await services.repository.current_for_write(resource_type, body["id"], session=session)
        if previous is not None:
            await _ensure_may_see(ctx, services, previous)
        if previous is not None and not previous.deleted:
            raise FhirError.of(409, "duplicate", f"{resource_type}/{body['id']} already exists")
        _check_if_match(ctx, previous)
        await _bind(ctx, services, resource_type, body, None, session)
        stored = await services.repository.save(
            resource_type, body, previous=previous, now=ctx.now, session=session
        )
        ctx.audit.version_id = str(stored.version)
        return stored, 201

    return Planned(apply)


async def plan_update(ctx: InteractionContext, services: Services, resource: dict[str, Any]) -> Planned:
    resource_type = _writable(ctx)
    if ctx.resource_id is None:
        matches = await _matches(ctx, services, resource_type, _search_pairs(ctx))
        if len(matches) > 1:
            raise precondition_failed("The conditional update criteria match several resources")
        if not matches:
            if "id" in resource:
                _ensure_may_choose_id(ctx, resource_type, str(resource["id"]))
            resource.setdefault("id", str(uuid.uuid4()))
            check_id(resource_type, resource["id"])
            ctx.resource_id = resource["id"]
            return _plan_new(ctx, services, resource_type, resource)
        match = matches[0]
        if resource.get("id") not in (None, match.id):
            raise bad_request(
                f"The resource id {resource.get('id')!r} differs from the matching resource",
                expression=(f"{resource_type}.id",),
            )
        resource["id"] = match.id
        ctx.resource_id = match.id
    check_id(resource_type, ctx.resource_id)
    if resource.get("id") != ctx.resource_id:
        raise bad_request(
            f"The resource id ({resource.get('id')!r}) must equal the id in the URL ({ctx.resource_id!r})",
            expression=(f"{resource_type}.id",),
        )

    async def apply(session: AsyncClientSession) -> tuple[StoredResource | None, int]:
        previous = await services.repository.current_for_write(resource_type, resource["id"], session=session)
        if previous is None:
            _ensure_may_choose_id(ctx, resource_type, str(resource["id"]))
        elif not await _may_see(ctx, services, previous):
            await _refuse_as_unknown(ctx, services, resource_type, resource)
        _check_if_match(ctx, previous)
        creating = previous is None or previous.deleted
        version = 1 if previous is None else previous.version + 1
        if not creating and previous is not None:
            await _ensure_may_write(ctx, services, previous, interaction=Interaction.UPDATE)
            _ensure_identity_kept(ctx, previous, resource)
        body = _server_owned(ctx, resource_type, resource, None if creating else previous)
        await _ensure_may_write(
            ctx,
            services,
            _prospective(services, resource_type, body, version=version, now=ctx.now),
            interaction=Interaction.CREATE if creating else Interaction.UPDATE,
        )
        await _bind(ctx, services, resource_type, body, previous, session)
        stored = await services.repository.save(
            resource_type, body, previous=previous, now=ctx.now, session=session
        )
        ctx.audit.version_id = str(stored.version)
        return stored, 201 if creating else 200

    return Planned(apply)


async def _refuse_as_unknown(
    ctx: InteractionContext, services: Services, resource_type: str, resource: dict[str, Any]
) -> None:
    """A PUT on a hidden id answers what it would on a free id, as far as that answer refuses: what
    only a create would pass (If-Match, the create decision) is checked first; then 404, since a
    create cannot take a taken id."""
    resource_id = str(resource["id"])
    _ensure_may_choose_id(ctx, resource_type, resource_id)
    _check_if_match(ctx, None)
    body = _server_owned(ctx, resource_type, resource, None)
    await _ensure_may_write(
        ctx,
        services,
        _prospective(services, resource_type, body, version=1, now=ctx.now),
        interaction=Interaction.CREATE,
    )
    raise not_found(resource_type, resource_id)


def _ensure_may_choose_id(ctx: InteractionContext, resource_type: str, resource_id: str) -> None:
    """Update as create (a client-chosen id) is for `system/` clients: others get what an unknown id gets."""
    if not ctx.require_principal().is_system:
        raise not_found(resource_type, resource_id)


async def _target(ctx: InteractionContext, services: Services, resource_type: str) -> str | None:
    """The id a patch or delete acts on: the URL's, or the single visible match of its search
    criteria (None when nothing matches; 412 when several do)."""
    if ctx.resource_id is None:
        matches = await _matches(ctx, services, resource_type, _search_pairs(ctx))
        if not matches:
            return None
        if len(matches) > 1:
            raise precondition_failed(f"The conditional {ctx.interaction} criteria match several resources")
        ctx.resource_id = matches[0].id
    check_id(resource_type, ctx.resource_id)
    return ctx.resource_id


async def _visible_previous(
    ctx: InteractionContext,
    services: Services,
    resource_type: str,
    resource_id: str,
    session: AsyncClientSession,
) -> StoredResource:
    """The current version the write replaces: 404 when unknown or hidden from the caller."""
    previous = await services.repository.current_for_write(resource_type, resource_id, session=session)
    if previous is None:
        raise not_found(resource_type, resource_id)
    await _ensure_may_see(ctx, services, previous)
    return previous


async def plan_patch(
    ctx: InteractionContext, services: Services, operations: list[dict[str, Any]]
) -> Planned:
    resource_type = _writable(ctx)
    resource_id = await _target(ctx, services, resource_type)
    if resource_id is None:
        raise not_found(resource_type)

    async def apply(session: AsyncClientSession) -> tuple[StoredResource | None, int]:
        previous = await _visible_previous(ctx, services, resource_type, resource_id, session)
        if previous.resource is None:
            raise gone(resource_type, resource_id)
        _check_if_match(ctx, previous)
        await _ensure_may_write(ctx, services, previous, interaction=Interaction.PATCH)
        patched = _apply_patch(previous.resource, operations)
        if patched.get("id") != resource_id or patched.get("resourceType") != resource_type:
            raise FhirError.of(
                422,
                "processing",
                "A patch may not change the resource id or type",
                expression=(resource_type,),
            )
        patched = _server_owned(
            ctx, resource_type, _prepare(validate_or_raise(patched, expected_type=resource_type)), previous
        )
        _ensure_identity_kept(ctx, previous, patched)
        prospective = _prospective(
            services, resource_type, patched, version=previous.version + 1, now=ctx.now
        )
        await _ensure_may_write(ctx, services, prospective, interaction=Interaction.PATCH)
        await _bind(ctx, services, resource_type, patched, previous, session)
        stored = await services.repository.save(
            resource_type, patched, previous=previous, now=ctx.now, session=session
        )
        ctx.audit.version_id = str(stored.version)
        return stored, 200

    return Planned(apply)


async def plan_delete(ctx: InteractionContext, services: Services) -> Planned:
    resource_type = _writable(ctx)
    resource_id = await _target(ctx, services, resource_type)
    if resource_id is None:
        return Planned(None)

    async def apply(session: AsyncClientSession) -> tuple[StoredResource | None, int]:
        previous = await _visible_previous(ctx, services, resource_type, resource_id, session)
        if previous.deleted or previous.resource is None:
            return None, 204
        _check_if_match(ctx, previous)
        await _ensure_may_write(ctx, services, previous, interaction=Interaction.DELETE)
        stored = await services.repository.save(
            resource_type, previous.resource, previous=previous, now=ctx.now, session=session, deleted=True
        )
        ctx.audit.version_id = str(stored.version)
        return stored, 204

    return Planned(apply)


def with_content(planned: Planned, staging: Staging) -> Planned:
    """The write, then the commit marker of the Binary content it uploaded, in the same transaction
    (storage/binaries.py)."""
    apply = planned.apply
    if apply is None:
        return planned

    async def run(session: AsyncClientSession) -> tuple[StoredResource | None, int]:
        result = await apply(session)
        await staging.commit(session)
        return result

    return Planned(run, planned.existing)


async def run_planned(ctx: InteractionContext, services: Services, planned: Planned) -> FhirResponse:
    """Run one planned write with its AuditEvent in one transaction and render the answer."""
    if planned.existing is not None:
        return await serve_write(ctx, services, planned.existing, 200)
    apply = planned.apply
    if apply is None:
        return FhirResponse(204)

    async def work(session: AsyncClientSession) -> tuple[tuple[StoredResource | None, int], int]:
        stored, status = await apply(session)
        return (stored, status), status

    stored, status = await audited_write(services, ctx, work)
    return await serve_write(ctx, services, stored, status)


async def serve_write(
    ctx: InteractionContext, services: Services, stored: StoredResource | None, status: int
) -> FhirResponse:
    """The answer of a committed write, its representation as the caller may see it (views.py)."""
    if stored is not None and not stored.deleted:
        [stored] = await views.served(ctx, services, [stored])
    return render_write(ctx, stored, status)


def render_write(ctx: InteractionContext, stored: StoredResource | None, status: int) -> FhirResponse:
    if stored is None or stored.deleted:
        return FhirResponse(status, None, {"ETag": stored.etag} if stored is not None else {})
    return write_response(ctx, stored, status=status)


# -- the HTTP-facing interactions ----------------------------------------------------------------


def read_resource(ctx: InteractionContext, body: bytes) -> dict[str, Any]:
    """The request body as a valid resource of the route's type, server-owned meta dropped (422/400)."""
    return _prepare(validate_or_raise(parse_resource_json(body), expected_type=_writable(ctx)))


async def create(ctx: InteractionContext, services: Services, *, body: bytes) -> FhirResponse:
    resource = read_resource(ctx, body)
    resource.pop("id", None)
    return await _run_with_content(ctx, services, resource, await plan_create(ctx, services, resource))


async def update(ctx: InteractionContext, services: Services, *, body: bytes) -> FhirResponse:
    resource = read_resource(ctx, body)
    return await _run_with_content(ctx, services, resource, await plan_update(ctx, services, resource))


async def _run_with_content(
    ctx: InteractionContext, services: Services, resource: dict[str, Any], planned: Planned
) -> FhirResponse:
    """Run a create or update; a large Binary content goes to GridFS first (storage/binaries.py)."""
    async with services.repository.binaries.staging(ctx.now) as staging:
        if planned.apply is not None:
            await staging.offload(resource)
        return await run_planned(ctx, services, with_content(planned, staging))


async def patch(
    ctx: InteractionContext, services: Services, *, body: bytes, content_type: str | None
) -> FhirResponse:
    _writable(ctx)
    media = (content_type or "").split(";")[0].strip().lower()
    if media != JSON_PATCH:
        raise FhirError.of(
            415, "not-supported", f"PATCH needs Content-Type {JSON_PATCH}, not {media or 'none'}"
        )
    return await run_planned(ctx, services, await plan_patch(ctx, services, parse_patch(body)))


async def delete(ctx: InteractionContext, services: Services) -> FhirResponse:
    return await run_planned(ctx, services, await plan_delete(ctx, services))


def parse_patch(body: bytes) -> list[dict[str, Any]]:
    try:
        operations = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise bad_request(f"The JSON Patch body is not valid JSON: {error}", code="structure") from error
    if not isinstance(operations, list) or not all(isinstance(op, dict) for op in operations):
        raise bad_request("A JSON Patch body is an array of operations", code="structure")
    check_bounds(operations)
    return operations


def _apply_patch(resource: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """The patched resource. Failures are named by operation and path, never by the stored values
    (the library's own messages quote the document)."""
    result: Any = resource
    for position, operation in enumerate(operations):
        where = f"operation {position} ({operation.get('op')!r} at {operation.get('path')!r})"
        try:
            result = jsonpatch.JsonPatch([operation]).apply(result, in_place=False)
        except jsonpatch.JsonPatchTestFailed as error:
            raise FhirError.of(422, "processing", f"JSON Patch test failed: {where}") from error
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError, KeyError) as error:
            raise FhirError.of(422, "processing", f"The JSON Patch cannot be applied: {where}") from error
    if not isinstance(result, dict):
        raise FhirError.of(422, "processing", "The JSON Patch does not yield a resource")
    return result


# -- helpers --------------------------------------------------------------------------------------


def _query_pairs(query: str) -> list[tuple[str, str]]:
    text = query.split("?", 1)[1] if "?" in query else query
    pairs = parse_qsl(text, keep_blank_values=True)
    if not pairs:
        raise bad_request("A conditional request needs search criteria")
    return pairs


def _search_pairs(ctx: InteractionContext) -> Sequence[tuple[str, str]]:
    return _query_pairs(ctx.request.target)
