"""FHIR search: type and system level, `_include`/`_revinclude`, searchset Bundle assembly.

https://hl7.org/fhir/R4/search.html — criteria are compiled into the database query and ANDed with
the caller's access filter by the guarded repository, as are chained and `_has` sub-queries and
every included resource, so totals, pages and includes only ever see permitted data.
Scopes (docs/security.md): `_include`/`_revinclude` (`:iterate` too) reach only the types the token
may read (`r`), and within them what its scopes confine it to; a type it may not read is simply not
included. A chain or `_has` that searches a type the token may not search is refused (403): matching
nothing instead would silently answer another question.
Paging is by keyset cursor (search/paging.py): `next`/`previous` links carry an opaque `_cursor`.
`Bundle.total` costs a count query, run only for `_total=accurate` and `_summary=count`; otherwise
the total is given when the page shows it exactly (a first page with no next one) and left out
when it does not, as FHIR allows.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from fhir_server.fhir.bundles import bundle
from fhir_server.fhir.errors import FhirError, bad_request, method_not_allowed, operation_outcome
from fhir_server.fhir.resources import PATIENT, REACHED_THROUGH_DOCUMENTS, SUPPORTED_TYPES
from fhir_server.interactions import views
from fhir_server.interactions.context import InteractionContext
from fhir_server.interactions.includes import included
from fhir_server.interactions.pipeline import check_scope
from fhir_server.interactions.resolver import GuardedResolver, compile_criteria
from fhir_server.interactions.response import FhirResponse
from fhir_server.interactions.services import Services
from fhir_server.interactions.shaping import shaped
from fhir_server.record.documents import StoredResource
from fhir_server.search.compile import ID_FIELD, compile_sort, conjunction
from fhir_server.search.naming import naming
from fhir_server.search.paging import (
    CURSOR_PARAMETER,
    NEXT,
    PREVIOUS,
    Cursor,
    compare,
    decode_cursor,
    encode_cursor,
    page_query,
    sort_values,
)
from fhir_server.search.parse import Clause, SearchRequest, parse_search
from fhir_server.storage.guard import AccessGuard

ANCHOR_FIELDS = ("idx.patient", "idx.subject")
"""Reference parameters whose Patient values confine a search to those patients' compartments."""


def _document(stored: StoredResource) -> dict[str, Any]:
    """The stored-document fields a sort can name, for cursor values."""
    return {"_id": stored.id, "lu": stored.last_updated, "idx": stored.index}


def is_identity_lookup(request: SearchRequest) -> bool:
    """`Patient?identifier=system|value` and nothing else: the DMP existence check (docs/consent.md), the
    one way a professional without a permitting consent may find a Patient."""
    if request.resource_type != PATIENT or request.includes or len(request.clauses) != 1:
        return False
    clause = request.clauses[0]
    if (
        not isinstance(clause, Clause)
        or clause.parameter.code != "identifier"
        or clause.modifier
        or clause.chain
    ):
        return False
    return all(
        isinstance(value, str) and all(part for part in value.split("|", 1)) and "|" in value
        for value in clause.values
    )


def anchored_patients(resource_type: str, criteria: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The patients a search is confined to by its own criteria (`patient=`, `subject=Patient/..`,
    `Patient?_id=`), so that only their Consents are loaded; None when the search spans any patient."""
    fields = (ID_FIELD,) if resource_type == PATIENT else ANCHOR_FIELDS
    for field in fields:
        value = criteria.get(field)
        values = value.get("$in") if isinstance(value, Mapping) and set(value) == {"$in"} else [value]
        if not isinstance(values, list) or not values or not all(isinstance(item, str) for item in values):
            continue
        if resource_type == PATIENT:
            return tuple(values)
        if all(item.startswith("Patient/") for item in values):
            return tuple(item.removeprefix("Patient/") for item in values)
    return None


def _strict(ctx: InteractionContext) -> bool:
    prefer = (ctx.request.header("prefer") or "").replace(" ", "").lower()
    return "handling=strict" in prefer.split(",")


async def search_type(
    ctx: InteractionContext, services: Services, *, params: Sequence[tuple[str, str]]
) -> FhirResponse:
    """`GET|POST [base]/[type]?...` (and `_search`)."""
    resource_type = ctx.resource_type
    if resource_type is None:
        raise RuntimeError("type-level search needs a type from the route")
    if resource_type in REACHED_THROUGH_DOCUMENTS:
        raise method_not_allowed(f"{resource_type} is not searchable: find its DocumentReference instead")
    request = parse_search(
        resource_type,
        params,
        registry=services.registry,
        strict=_strict(ctx),
        base_url=services.base_url,
        now=ctx.now,
    )
    ctx.audit.mhd_transaction = mhd_transaction(request)
    return await _search(
        ctx, services, request, (resource_type,), path=f"{services.base_url}/{resource_type}"
    )


MHD_QUERIES: dict[str, tuple[str, frozenset[str]]] = {
    "DocumentReference": ("ITI-67", frozenset({"status"})),
    "List": ("ITI-66", frozenset({"code", "status"})),
}
"""IHE MHD queries by type: the transaction and the parameters it requires besides the patient."""
PATIENT_PARAMETERS = frozenset({"patient", "subject"})


def mhd_transaction(request: SearchRequest) -> str | None:
    """`ITI-67` (Find Document References) or `ITI-66` (Find Document Lists) when the search has the
    shape MHD requires — a patient (or `patient.identifier`) and the required parameters — so the
    AuditEvent carries the MHD subtype alongside the RESTful one."""
    query = MHD_QUERIES.get(request.resource_type or "")
    if query is None:
        return None
    transaction, required = query
    codes = {clause.parameter.code for clause in request.clauses if isinstance(clause, Clause)}
    if codes & PATIENT_PARAMETERS and required <= codes:
        return transaction
    return None


async def search_system(
    ctx: InteractionContext, services: Services, *, params: Sequence[tuple[str, str]]
) -> FhirResponse:
    """`GET|POST [base]?...`: every type in `_type` (default: all) that the caller's scopes cover."""
    request = parse_search(
        None, params, registry=services.registry, strict=_strict(ctx), base_url=services.base_url, now=ctx.now
    )
    types = []
    for resource_type in request.types or SUPPORTED_TYPES:
        if resource_type in REACHED_THROUGH_DOCUMENTS and request.types:
            raise bad_request(f"{resource_type} is not searchable", expression=("_type",))
        if resource_type not in SUPPORTED_TYPES or resource_type in REACHED_THROUGH_DOCUMENTS:
            continue
        try:
            check_scope(ctx, resource_type)
        except FhirError:
            if request.types:
                raise
            continue
        types.append(resource_type)
    return await _search(ctx, services, request, tuple(types), path=services.base_url)


async def _search(
    ctx: InteractionContext,
    services: Services,
    request: SearchRequest,
    types: tuple[str, ...],
    *,
    path: str,
) -> FhirResponse:
    # BALP patient-query: the patients a search names are concerned, even when it finds nothing.
    ctx.audit.patients.update(await named_patients(services, request))
    criteria = await compile_criteria(ctx, services, request)
    sort = compile_sort(request, services.registry)
    cursor = decode_cursor(request.cursor, sort) if request.cursor else None
    guards = await _guards(ctx, services, request, types, criteria)
    total: int | None = None
    if request.total == "accurate" or request.summary == "count":
        total = 0
        for resource_type in types:
            total += await services.repository.count(resource_type, criteria, guard=guards[resource_type])
    page, more = await _page(services, request, types, guards, criteria, sort, cursor)
    if total is None and request.total != "none" and cursor is None and not more:
        total = len(page)

    found = await included(ctx, services, request, page) if page and request.includes else []
    for stored in [*page, *found]:
        ctx.audit.touch(stored.reference, patients=stored.compartment)
    page = await views.served(ctx, services, page)
    found = await views.served(ctx, services, found)

    links = _links(request, sort, cursor, page, more=more, path=path)
    entries = [_entry(services, request, stored, mode="match") for stored in page]
    entries.extend(_entry(services, request, stored, mode="include") for stored in found)
    if request.issues:
        entries.append(
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": operation_outcome(request.issues),
                "search": {"mode": "outcome"},
            }
        )
    return FhirResponse(200, bundle("searchset", now=ctx.now, entries=entries, links=links, total=total))


async def _guards(
    ctx: InteractionContext,
    services: Services,
    request: SearchRequest,
    types: tuple[str, ...],
    criteria: Mapping[str, Any],
) -> dict[str, AccessGuard]:
    """The caller's guard per searched type, loading only the Consents of the patients the search
    names when it names some (`anchored_patients`)."""
    provider = services.access.provider(ctx, identity_lookup=is_identity_lookup(request))
    named = {resource_type: anchored_patients(resource_type, criteria) for resource_type in types}
    return {
        resource_type: await provider.guard(resource_type, patients=named[resource_type])
        for resource_type in types
    }


async def named_patients(services: Services, request: SearchRequest) -> set[str]:
    """The patients the query names (search/naming.py), identifiers resolved to the Patient that holds
    them whatever the caller may see: only to put the AuditEvent in their trails, never served."""
    named = naming(request)
    patients = set(named.ids)
    parameter = services.registry.parameter(PATIENT, "identifier")
    if named.identifiers and parameter is not None:
        query = {parameter.field: {"$in": sorted(named.identifiers)}}
        for compartment in await services.repository.compartments_where(PATIENT, query):
            patients.update(compartment)
    return patients


async def _page(
    services: Services,
    request: SearchRequest,
    types: tuple[str, ...],
    guards: Mapping[str, AccessGuard],
    criteria: Mapping[str, Any],
    sort: list[tuple[str, int]],
    cursor: Cursor | None,
) -> tuple[list[StoredResource], bool]:
    """The page the cursor asks for, merged across types in sort order; and whether more follow."""
    count = 0 if request.summary == "count" else request.count
    if not count:
        return [], False
    extra, run_sort = page_query(sort, cursor)
    query = conjunction([criteria, extra]) if extra else criteria
    found: list[StoredResource] = []
    for resource_type in types:
        found.extend(
            await services.repository.find(
                resource_type, query, guard=guards[resource_type], sort=run_sort, limit=count + 1
            )
        )
    if len(types) > 1:
        found.sort(
            key=functools.cmp_to_key(
                lambda a, b: compare(
                    run_sort, sort_values(_document(a), run_sort), sort_values(_document(b), run_sort)
                )
            )
        )
    page = found[:count]
    if cursor is not None and cursor.direction == PREVIOUS:
        page.reverse()
    return page, len(found) > count


def _links(
    request: SearchRequest,
    sort: Sequence[tuple[str, int]],
    cursor: Cursor | None,
    page: list[StoredResource],
    *,
    more: bool,
    path: str,
) -> list[tuple[str, str]]:
    applied = [(name, str(request.count) if name == "_count" else value) for name, value in request.applied]

    def url(extra: list[tuple[str, str]]) -> str:
        params = applied + extra
        return f"{path}?{urlencode(params)}" if params else path

    links = [("self", url([(CURSOR_PARAMETER, request.cursor)] if request.cursor else []))]
    if not page:
        return links
    backwards = cursor is not None and cursor.direction == PREVIOUS
    has_next = backwards or more
    has_previous = (cursor is not None and not backwards) or (backwards and more)
    if has_next:
        links.append(
            ("next", url([(CURSOR_PARAMETER, encode_cursor(sort, _document(page[-1]), direction=NEXT))]))
        )
    if has_previous:
        token = encode_cursor(sort, _document(page[0]), direction=PREVIOUS)
        links.append(("previous", url([(CURSOR_PARAMETER, token)])))
    return links


def _entry(
    services: Services, request: SearchRequest, stored: StoredResource, *, mode: str
) -> dict[str, Any]:
    return {
        "fullUrl": f"{services.base_url}/{stored.reference}",
        "resource": shaped(request, stored.resource or {}),
        "search": {"mode": mode},
    }


__all__ = ["GuardedResolver", "compile_criteria", "search_system", "search_type"]
