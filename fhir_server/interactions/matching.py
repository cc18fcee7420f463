"""Resolving a search expression to permitted matches: conditional interactions and chained parameters.

Every sub-query goes through a guard, so a chain or a conditional request never reveals (nor lets a
write touch) a resource its caller may not see. https://hl7.org/fhir/R4/http.html#ccreate
"""

from __future__ import annotations

from collections.abc import Sequence

from fhir_server.fhir.interaction import Interaction
from fhir_server.interactions.context import InteractionContext
from fhir_server.interactions.search import GuardedResolver, is_identity_lookup
from fhir_server.interactions.services import Services
from fhir_server.record.documents import StoredResource
from fhir_server.search.compile import compile_filter
from fhir_server.search.parse import parse_search


async def find_matches(
    ctx: InteractionContext,
    services: Services,
    resource_type: str,
    params: Sequence[tuple[str, str]],
    *,
    limit: int = 2,
) -> list[StoredResource]:
    """Up to `limit` visible resources matching a conditional request's search criteria (strict parsing)."""
    request = parse_search(
        resource_type, params, registry=services.registry, strict=True, base_url=services.base_url
    )
    query = await compile_filter(request, resolve=GuardedResolver(ctx, services))
    provider = services.access.provider(
        ctx, interaction=Interaction.SEARCH_TYPE, identity_lookup=is_identity_lookup(request)
    )
    guard = await provider.guard(resource_type, patients=None)
    return await services.repository.find(resource_type, query, guard=guard, limit=limit)
