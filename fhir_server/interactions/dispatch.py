"""The one table of interactions: (method, path shape) -> interaction, handler, type/id/version.

Every HTTP request under `/fhir` and every entry of a batch or transaction Bundle resolves here, so
an entry gets exactly the type check, scope check, consent decision and AuditEvent of the same
plain request (docs/security.md, "one door"). A path names an interaction only when it has the
shape of a row of `ROUTES`: a `{type}` segment must be one of the server's resource types, an `{id}`
segment a FHIR id. Anything else — an internal collection (`Binary_history`, `AuditEvent_chain`), a
lowercase type, `..`, an empty segment — resolves to a 404 that reads and writes nothing and is
audited like any request; a known path asked with a method it does not take is a 405.
https://hl7.org/fhir/R4/http.html
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from fhir_server.fhir.errors import FhirError, bad_request, method_not_allowed
from fhir_server.fhir.interaction import Interaction
from fhir_server.fhir.resources import BINARY, PATIENT, SUPPORTED_TYPES
from fhir_server.interactions import binary, capabilities, export, history, operations, read, search, write
from fhir_server.interactions.body import JSON_MEDIA, Body, BytesBody, json_body
from fhir_server.interactions.context import AuditTrail, InteractionContext, RequestMeta
from fhir_server.interactions.pipeline import Handler
from fhir_server.interactions.response import FhirResponse
from fhir_server.interactions.services import Services

if TYPE_CHECKING:
    from fhir_server.auth.principal import Principal

TYPE = "{type}"
ID = "{id}"
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
ALIASES = {"HEAD": "GET"}
"""HEAD is answered as GET (the HTTP layer drops the body)."""
UNROUTED = {
    "GET": Interaction.READ,
    "POST": Interaction.CREATE,
    "PUT": Interaction.UPDATE,
    "PATCH": Interaction.PATCH,
    "DELETE": Interaction.DELETE,
}
"""The restful-interaction an unknown path is audited as: what its method would have done."""


@dataclass(frozen=True)
class Call:
    """One resolved request, ready for its handler."""

    ctx: InteractionContext
    services: Services
    body: Body
    params: Mapping[str, str]
    """The named path segments other than type and id (`version`, `job_id`, ...)."""
    query: list[tuple[str, str]]
    exports: Callable[[], export.ExportWorker] | None = None
    """The process's export worker (HTTP only: bulk export is not a Bundle entry)."""


RouteHandler = Callable[[Call], Awaitable[FhirResponse]]


@dataclass(frozen=True)
class Route:
    methods: frozenset[str]
    shape: tuple[str, ...]
    """Literal segments, or `{name}` placeholders: `{type}` a declared type, `{id}` a FHIR id."""
    interaction: Interaction
    handler: RouteHandler
    anonymous: bool = False
    """Served without a token (the CapabilityStatement)."""
    in_bundle: bool = True
    """Whether a Bundle entry may name it (not: nested Bundles, asynchronous bulk export)."""


@dataclass(frozen=True)
class Resolved:
    """What a (method, path) names: a row of the table, or the error that answers it."""

    interaction: Interaction
    handler: RouteHandler
    resource_type: str | None = None
    resource_id: str | None = None
    params: Mapping[str, str] = field(default_factory=dict)
    anonymous: bool = False
    refusal: FhirError | None = None
    """Set when no row matched: the 404/405/400 the handler raises; nothing is read or written."""

    @property
    def version(self) -> str | None:
        return self.params.get("version")


# -- handlers -------------------------------------------------------------------------------------


async def _capabilities(call: Call) -> FhirResponse:
    """The CapabilityStatement, whose operations are read from this table's own routes."""
    paths = ["/" + "/".join(route.shape) for route in ROUTES]
    return await capabilities.capability_statement(call.ctx, call.services, paths=paths)


async def _bundle(call: Call) -> FhirResponse:
    # The entries of a Bundle resolve through this very table: transaction imports this module.
    from fhir_server.interactions import transaction

    return await transaction.process(call.ctx, call.services, body=await json_body(call.body))


async def _search_system(call: Call) -> FhirResponse:
    return await search.search_system(call.ctx, call.services, params=call.query + await call.body.form())


async def _history_system(call: Call) -> FhirResponse:
    return await history.history_system(call.ctx, call.services)


def _worker(call: Call) -> export.ExportWorker:
    if call.exports is None:
        raise RuntimeError("bulk export runs over HTTP only (the route is not a Bundle entry)")
    return call.exports()


def _kick_off(level: str) -> RouteHandler:
    async def handler(call: Call) -> FhirResponse:
        body = await json_body(call.body) if call.ctx.request.method == "POST" else b""
        return await export.kick_off(
            call.ctx,
            call.services,
            worker=_worker(call),
            level=level,
            group_id=call.params.get("group_id"),
            body=body,
        )

    return handler


async def _export_status(call: Call) -> FhirResponse:
    return await export.status(call.ctx, call.services, job_id=call.params["job_id"])


async def _export_cancel(call: Call) -> FhirResponse:
    return await export.cancel(call.ctx, call.services, worker=_worker(call), job_id=call.params["job_id"])


async def _export_file(call: Call) -> FhirResponse:
    """Audited like any request, then streamed from GridFS chunk by chunk (FhirResponse.stream)."""
    into = export.Download()
    response = await export.download(
        call.ctx, call.services, job_id=call.params["job_id"], name=call.params["name"], into=into
    )
    if into.file_id is not None:
        response.stream = into.chunks
    return response


async def _vread(call: Call) -> FhirResponse:
    return await read.vread(call.ctx, call.services, version=call.params["version"])


async def _read(call: Call) -> FhirResponse:
    return await read.read(call.ctx, call.services)


async def _history(call: Call) -> FhirResponse:
    return await history.history(call.ctx, call.services)


async def _validate(call: Call) -> FhirResponse:
    return await operations.validate(call.ctx, call.services, body=await json_body(call.body))


async def _search_type(call: Call) -> FhirResponse:
    return await search.search_type(call.ctx, call.services, params=call.query + await call.body.form())


async def _create(call: Call) -> FhirResponse:
    media = call.body.media_type
    if call.ctx.resource_type == BINARY and media and media not in JSON_MEDIA:
        # `POST [base]/Binary` with the document itself as the body (R4 binary.html), streamed.
        return await binary.create_raw(call.ctx, call.services, content_type=media, chunks=call.body.stream())
    return await write.create(call.ctx, call.services, body=await json_body(call.body))


async def _update(call: Call) -> FhirResponse:
    return await write.update(call.ctx, call.services, body=await json_body(call.body))


async def _patch(call: Call) -> FhirResponse:
    body = await call.body.read()
    return await write.patch(call.ctx, call.services, body=body, content_type=call.body.media_type)


async def _delete(call: Call) -> FhirResponse:
    return await write.delete(call.ctx, call.services)


def _route(
    methods: str,
    path: str,
    interaction: Interaction,
    handler: RouteHandler,
    *,
    anonymous: bool = False,
    in_bundle: bool = True,
) -> Route:
    shape = tuple(segment for segment in path.split("/") if segment)
    return Route(frozenset(methods.split()), shape, interaction, handler, anonymous, in_bundle)


OPERATION = Interaction.OPERATION
ROUTES: tuple[Route, ...] = (
    _route("GET", "metadata", Interaction.CAPABILITIES, _capabilities, anonymous=True),
    _route("POST", "", Interaction.TRANSACTION, _bundle, in_bundle=False),
    _route("GET", "", Interaction.SEARCH_SYSTEM, _search_system),
    _route("POST", "_search", Interaction.SEARCH_SYSTEM, _search_system),
    _route("GET", "_history", Interaction.HISTORY_SYSTEM, _history_system),
    _route("GET POST", "$export", OPERATION, _kick_off(export.SYSTEM_LEVEL), in_bundle=False),
    _route("GET POST", f"{PATIENT}/$export", OPERATION, _kick_off(export.PATIENT_LEVEL), in_bundle=False),
    _route("GET POST", "Group/{group_id}/$export", OPERATION, _kick_off(export.GROUP_LEVEL), in_bundle=False),
    _route("GET", "$export-status/{job_id}", Interaction.OPERATION, _export_status, in_bundle=False),
    _route("DELETE", "$export-status/{job_id}", Interaction.OPERATION, _export_cancel, in_bundle=False),
    _route("GET", "$export-file/{job_id}/{name}", Interaction.OPERATION, _export_file, in_bundle=False),
    _route("GET", "{type}/{id}/_history/{version}", Interaction.VREAD, _vread),
    _route("GET", "{type}/{id}/_history", Interaction.HISTORY_INSTANCE, _history),
    _route("GET", "{type}/_history", Interaction.HISTORY_TYPE, _history),
    _route("POST", "{type}/$validate", Interaction.OPERATION, _validate),
    _route("POST", "{type}/{id}/$validate", Interaction.OPERATION, _validate),
    _route("POST", "{type}/_search", Interaction.SEARCH_TYPE, _search_type),
    _route("GET", "{type}/{id}", Interaction.READ, _read),
    _route("PUT", "{type}/{id}", Interaction.UPDATE, _update),
    _route("PUT", "{type}", Interaction.UPDATE, _update),
    _route("PATCH", "{type}/{id}", Interaction.PATCH, _patch),
    _route("PATCH", "{type}", Interaction.PATCH, _patch),
    _route("DELETE", "{type}/{id}", Interaction.DELETE, _delete),
    _route("DELETE", "{type}", Interaction.DELETE, _delete),
    _route("GET", "{type}", Interaction.SEARCH_TYPE, _search_type),
    _route("POST", "{type}", Interaction.CREATE, _create),
)


# -- resolution -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Match:
    params: dict[str, str]
    declared: bool
    """Every `{type}` segment names a declared resource type."""


def _match(shape: Sequence[str], segments: Sequence[str]) -> _Match | None:
    if len(shape) != len(segments):
        return None
    params: dict[str, str] = {}
    declared = True
    for pattern, segment in zip(shape, segments, strict=True):
        if pattern == TYPE:
            declared = declared and segment in SUPPORTED_TYPES
            params["type"] = segment
        elif pattern == ID:
            if not FHIR_ID.match(segment):
                return None
            params["id"] = segment
        elif pattern.startswith("{"):
            params[pattern[1:-1]] = segment
        elif pattern != segment:
            return None
    return _Match(params, declared)


def _refusal(method: str, error: FhirError) -> Resolved:
    async def refuse(_call: Call) -> FhirResponse:
        raise error

    return Resolved(UNROUTED.get(method, Interaction.OPERATION), refuse, refusal=error)


def resolve(method: str, path: str, *, entry: bool = False) -> Resolved:
    """The interaction `method path` names (path relative to the base, decoded, without query)."""
    method = method.upper()
    asked = ALIASES.get(method, method)
    stripped = path.strip("/")
    segments = stripped.split("/") if stripped else []
    shown = f"{method} {path or '/'}"
    if "" in segments:
        return _refusal(method, FhirError.of(404, "not-found", f"{shown}: no such resource or interaction"))
    allowed: set[str] = set()
    undeclared: str | None = None
    for route in ROUTES:
        found = _match(route.shape, segments)
        if found is None:
            continue
        if not found.declared:
            undeclared = found.params["type"]
            continue
        if asked not in route.methods:
            allowed.update(route.methods)
            continue
        if entry and not route.in_bundle:
            refusal = bad_request(f"{shown} cannot be an entry of a Bundle", code="not-supported")
            return _refusal(method, refusal)
        params = {key: value for key, value in found.params.items() if key not in ("type", "id")}
        return Resolved(
            route.interaction,
            route.handler,
            resource_type=found.params.get("type"),
            resource_id=found.params.get("id"),
            params=params,
            anonymous=route.anonymous,
        )
    if allowed:
        return _refusal(method, method_not_allowed(f"{shown}: this path takes {', '.join(sorted(allowed))}"))
    if undeclared is not None:
        message = f"{shown}: resource type {undeclared!r} is not supported here"
        return _refusal(method, FhirError.of(404, "not-supported", message))
    return _refusal(method, FhirError.of(404, "not-found", f"{shown}: no such resource or interaction"))


def context(
    resolved: Resolved,
    request: RequestMeta,
    now: datetime,
    *,
    principal: Principal | None = None,
    bundle: Interaction | None = None,
) -> InteractionContext:
    """The context of a resolved request; a request that named no interaction records its raw form."""
    return InteractionContext(
        interaction=resolved.interaction,
        resource_type=resolved.resource_type,
        resource_id=resolved.resource_id,
        request=request,
        now=now,
        principal=principal,
        audit=AuditTrail(bundle=bundle, raw_request=resolved.refusal is not None),
    )


def bind(
    resolved: Resolved,
    *,
    body: Body,
    query: list[tuple[str, str]],
    exports: Callable[[], export.ExportWorker] | None = None,
) -> Handler:
    """The pipeline handler of a resolved request."""

    async def run(ctx: InteractionContext, services: Services) -> FhirResponse:
        return await resolved.handler(Call(ctx, services, body, resolved.params, query, exports))

    return run


__all__ = ["ROUTES", "Body", "BytesBody", "Call", "Resolved", "Route", "bind", "context", "resolve"]
