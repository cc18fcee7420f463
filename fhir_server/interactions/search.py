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

from fhir_server.auth.scopes import permitted_scopes
from fhir_server.fhir.bundles import bundle
from fhir_server.fhir.errors import FhirError, bad_request, forbidden, method_not_allowed, operation_outcome
from fhir_server.fhir.interaction import Interaction
from fhir_server.fhir.resources import PATIENT, REACHED_THROUGH_DOCUMENTS, SUPPORTED_TYPES
from fhir_server.interactions import views
from fhir_server.interactions.context import InteractionContext
from fhir_server.interactions.pipeline import check_scope
from fhir_server.interactions.response import FhirResponse
from fhir_server.interactions.services import Services
from fhir_server.record.documents import StoredResource
from fhir_server.search.compile import ID_FIELD, compile_filter, compile_sort, conjunction
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
from fhir_server.search.parse import Clause, Include, SearchRequest, parse_search
from fhir_server.search.registry import ANY_TYPE, SearchParameter, SearchRegistry
from fhir_server.storage.guard import GuardProvider

MAX_SUB_QUERY_MATCHES = 1000
"""A chain or `_has` whose sub-query matches more resources than this is refused as too costly."""
MAX_INCLUDES = 1000
MAX_ITERATIONS = 4
"""Rounds of `:iterate` includes followed at most."""

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}

SUMMARY_ELEMENTS: Mapping[str, frozenset[str]] = {
    "Patient": frozenset(
        "identifier active name telecom gender birthDate deceasedBoolean deceasedDateTime address "
        "managingOrganization link".split()
    ),
    "DocumentReference": frozenset(
        "masterIdentifier identifier status docStatus type category subject date author authenticator "
        "custodian relatesTo description securityLabel content context".split()
    ),
    "Consent": frozenset(
        "identifier status scope category patient dateTime performer organization sourceAttachment "
        "sourceReference policyRule provision".split()
    ),
    "AuditEvent": frozenset(
        "type subtype action period recorded outcome outcomeDesc purposeOfEvent agent source entity".split()
    ),
    "List": frozenset("identifier status mode title code subject encounter date source".split()),
    "Binary": frozenset("contentType securityContext".split()),
}
"""Top-level elements flagged isSummary in R4 (`_summary=true`)."""

MANDATORY_ELEMENTS: Mapping[str, frozenset[str]] = {
    "DocumentReference": frozenset({"status", "content"}),
    "Consent": frozenset({"status", "scope", "category"}),
    "AuditEvent": frozenset({"type", "recorded", "agent", "source"}),
    "List": frozenset({"status", "mode"}),
    "Binary": frozenset({"contentType"}),
}
"""Top-level elements with a minimum cardinality of 1, kept whatever `_elements` asks."""
ALWAYS_KEPT = frozenset({"resourceType", "id", "meta", "implicitRules"})
ANCHOR_FIELDS = ("idx.patient", "idx.subject")
"""Reference parameters whose Patient values confine a search to those patients' compartments."""


class GuardedResolver:
    """ChainResolver for search: sub-queries run through the caller's guard (search/compile.py)."""

    def __init__(self, ctx: InteractionContext, services: Services) -> None:
        self._ctx = ctx
        self._services = services

    async def __call__(
        self, resource_type: str, query: Mapping[str, Any], *, field: str = ID_FIELD
    ) -> list[str]:
        if not may(self._ctx, Interaction.SEARCH_TYPE, resource_type):
            raise forbidden(f"No granted scope permits searching {resource_type} (chained or _has criterion)")
        guard = await self._services.access.provider(self._ctx, interaction=Interaction.SEARCH_TYPE).guard(
            resource_type, patients=None
        )
        found = await self._services.repository.find(
            resource_type, query, guard=guard, limit=MAX_SUB_QUERY_MATCHES + 1
        )
        if len(found) > MAX_SUB_QUERY_MATCHES:
            raise FhirError.of(
                400,
                "too-costly",
                f"A chained or _has criterion matches over {MAX_SUB_QUERY_MATCHES} {resource_type} resources",
            )
        values: list[str] = []
        for stored in found:
            values.extend(
                [stored.id] if field == ID_FIELD else _index_values(stored, field.removeprefix("idx."))
            )
        return values


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


async def compile_criteria(
    ctx: InteractionContext, services: Services, request: SearchRequest
) -> dict[str, Any]:
    """The database filter of a request's criteria, as this caller may ask them: criteria on what
    the served view hides name only what the caller may read (interactions/views.py), and chained
    and `_has` sub-queries run through the caller's guard."""
    visible = await views.visible_criteria(ctx, services, request)
    return await compile_filter(visible, resolve=GuardedResolver(ctx, services))


def may(ctx: InteractionContext, interaction: Interaction, resource_type: str) -> bool:
    """A scope of the caller's token permits `interaction` on `resource_type` (auth/scopes.py)."""
    principal = ctx.require_principal()
    return bool(
        permitted_scopes(
            principal.scopes,
            interaction,
            resource_type,
            patient=principal.patient,
            system=principal.is_system,
        )
    )


def _index_values(stored: StoredResource, code: str) -> list[str]:
    value = stored.index.get(code)
    if value is None:
        return []
    return [value] if isinstance(value, str) else [item for item in value if isinstance(item, str)]


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
    extra, run_sort = page_query(sort, cursor)
    provider = services.access.provider(ctx, identity_lookup=is_identity_lookup(request))
    named = {resource_type: anchored_patients(resource_type, criteria) for resource_type in types}
    guards = {
        resource_type: await provider.guard(resource_type, patients=named[resource_type])
        for resource_type in types
    }

    total: int | None = None
    if request.total == "accurate" or request.summary == "count":
        total = 0
        for resource_type in types:
            total += await services.repository.count(resource_type, criteria, guard=guards[resource_type])

    page: list[StoredResource] = []
    more = False
    count = 0 if request.summary == "count" else request.count
    if count:
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
        more = len(found) > count
        page = found[:count]
        if cursor is not None and cursor.direction == PREVIOUS:
            page.reverse()
        if total is None and request.total != "none" and cursor is None and not more:
            total = len(page)

    included = await _includes(ctx, services, request, page) if page and request.includes else []
    for stored in [*page, *included]:
        ctx.audit.touch(stored.reference, patients=stored.compartment)
    page = await views.served(ctx, services, page)
    included = await views.served(ctx, services, included)

    links = _links(request, sort, cursor, page, more=more, path=path)
    entries = [_entry(services, request, stored, mode="match") for stored in page]
    entries.extend(_entry(services, request, stored, mode="include") for stored in included)
    if request.issues:
        entries.append(
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": operation_outcome(request.issues),
                "search": {"mode": "outcome"},
            }
        )
    return FhirResponse(200, bundle("searchset", now=ctx.now, entries=entries, links=links, total=total))


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


async def _includes(
    ctx: InteractionContext, services: Services, request: SearchRequest, page: list[StoredResource]
) -> list[StoredResource]:
    """Resources named by `_include`/`_revinclude`, each read (`r`) through the caller's guard."""
    seen = {stored.reference for stored in page}
    included: list[StoredResource] = []
    frontier = list(page)
    provider = services.access.provider(ctx, interaction=Interaction.READ)
    readable = frozenset(t for t in SUPPORTED_TYPES if may(ctx, Interaction.READ, t))
    for round_number in range(MAX_ITERATIONS):
        wanted = [include for include in request.includes if include.iterate or round_number == 0]
        added: list[StoredResource] = []
        for include in wanted:
            for stored in await _follow(services, provider, include, frontier, readable):
                if stored.reference not in seen and len(included) + len(added) < MAX_INCLUDES:
                    seen.add(stored.reference)
                    added.append(stored)
        included.extend(added)
        frontier = added
        if not added or not any(include.iterate for include in request.includes):
            break
    return included


SEARCHABLE_TYPES: tuple[str, ...] = tuple(t for t in SUPPORTED_TYPES if t not in REACHED_THROUGH_DOCUMENTS)


def reachable_types(parameter: SearchParameter) -> frozenset[str]:
    """The stored types an `_include` of this reference parameter can return."""
    if not parameter.targets or ANY_TYPE in parameter.targets:
        return frozenset(SUPPORTED_TYPES)
    return frozenset(parameter.targets) & frozenset(SUPPORTED_TYPES)


def includes_for(registry: SearchRegistry, resource_type: str) -> list[str]:
    """`_include` values a search of `resource_type` resolves (`Type:parameter`): the type's reference
    parameters that can name a stored type (the CapabilityStatement's `searchInclude`)."""
    return [
        f"{resource_type}:{code}"
        for code, parameter in sorted(registry.parameters_for(resource_type).items())
        if parameter.type == "reference" and reachable_types(parameter)
    ]


def revincludes_for(registry: SearchRegistry, resource_type: str) -> list[str]:
    """`_revinclude` values a search of `resource_type` resolves: the reference parameters of searchable
    types that can name `resource_type` (the CapabilityStatement's `searchRevInclude`)."""
    return [
        f"{source_type}:{code}"
        for source_type in sorted(SEARCHABLE_TYPES)
        for code, parameter in sorted(registry.parameters_for(source_type).items())
        if parameter.type == "reference" and resource_type in reachable_types(parameter)
    ]


async def _follow(
    services: Services,
    provider: GuardProvider,
    include: Include,
    sources: list[StoredResource],
    readable: frozenset[str],
) -> list[StoredResource]:
    """The resources one include reaches from `sources`, among the `readable` types only."""
    code = include.parameter.code
    if include.reverse:
        keys = sorted({stored.reference for stored in sources})
        if not keys or include.source_type not in SEARCHABLE_TYPES or include.source_type not in readable:
            return []
        guard = await provider.guard(include.source_type, patients=None)
        return await services.repository.find(
            include.source_type, {include.parameter.field: {"$in": keys}}, guard=guard, limit=MAX_INCLUDES
        )
    by_type: dict[str, set[str]] = {}
    for stored in sources:
        if stored.resource_type != include.source_type:
            continue
        for key in _index_values(stored, code):
            target_type, _, target_id = key.partition("/")
            if "/" in target_id or not target_id:
                continue
            if target_type not in reachable_types(include.parameter) or target_type not in readable:
                continue
            if include.target_type is None or include.target_type == target_type:
                by_type.setdefault(target_type, set()).add(target_id)
    found: list[StoredResource] = []
    for target_type, ids in by_type.items():
        guard = await provider.guard(target_type, patients=None)
        found.extend(
            await services.repository.find(target_type, {ID_FIELD: {"$in": sorted(ids)}}, guard=guard)
        )
    return found


def _entry(
    services: Services, request: SearchRequest, stored: StoredResource, *, mode: str
) -> dict[str, Any]:
    return {
        "fullUrl": f"{services.base_url}/{stored.reference}",
        "resource": _shaped(request, stored.resource or {}),
        "search": {"mode": mode},
    }


def _shaped(request: SearchRequest, resource: Mapping[str, Any]) -> dict[str, Any]:
    """The resource as `_summary` / `_elements` ask, tagged SUBSETTED when anything was left out."""
    resource_type = str(resource.get("resourceType"))
    if request.elements:
        wanted = set(request.elements) | MANDATORY_ELEMENTS.get(resource_type, frozenset()) | ALWAYS_KEPT
        kept = {key: value for key, value in resource.items() if _element_name(key, wanted)}
    elif request.summary == "true":
        summary = SUMMARY_ELEMENTS.get(resource_type, frozenset()) | ALWAYS_KEPT
        kept = {key: value for key, value in resource.items() if key in summary}
    elif request.summary == "data":
        kept = {key: value for key, value in resource.items() if key != "text"}
    else:
        return dict(resource)
    if len(kept) == len(resource):
        return kept
    meta = dict(kept.get("meta") or {})
    meta["tag"] = [*(meta.get("tag") or []), SUBSETTED]
    kept["meta"] = meta
    return kept


CHOICE_TYPES = frozenset(
    "Boolean DateTime Date String Integer Reference Attachment Period CodeableConcept Identifier "
    "Quantity".split()
)


def _element_name(key: str, wanted: set[str]) -> bool:
    """`deceased` in `_elements` keeps `deceasedBoolean`/`deceasedDateTime` (choice elements)."""
    if key in wanted:
        return True
    return any(key.startswith(name) and key[len(name) :] in CHOICE_TYPES for name in wanted)


__all__ = ["GuardedResolver", "search_system", "search_type"]
