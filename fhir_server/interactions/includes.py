"""`_include` and `_revinclude` (`:iterate` too): the resources a search page names, or is named by.

https://hl7.org/fhir/R4/search.html#include

Every included resource is read through the caller's guard; only the types the token may read (`r`)
are followed, and within them what its scopes confine it to (docs/security.md): a type it may not
read is simply not included. The CapabilityStatement lists what resolves here (`includes_for`,
`revincludes_for`).
"""

from __future__ import annotations

from fhir_server.fhir.interaction import Interaction
from fhir_server.fhir.resources import REACHED_THROUGH_DOCUMENTS, SUPPORTED_TYPES
from fhir_server.interactions.context import InteractionContext
from fhir_server.interactions.resolver import index_values, may
from fhir_server.interactions.services import Services
from fhir_server.record.documents import StoredResource
from fhir_server.search.compile import ID_FIELD
from fhir_server.search.registry import ANY_TYPE, SearchParameter, SearchRegistry
from fhir_server.search.request import Include, SearchRequest
from fhir_server.storage.guard import GuardProvider

MAX_INCLUDES = 1000
MAX_ITERATIONS = 4
"""Rounds of `:iterate` includes followed at most."""


async def included(
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
        for key in index_values(stored, code):
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
