"""Resolving a search expression to permitted matches: conditional interactions and chained parameters.

Every sub-query goes through a guard, so a chain or a conditional request never reveals (nor lets a
write touch) a resource its caller may not see. https://hl7.org/fhir/R4/http.html#ccreate
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fhir_server.fhir.interaction import Interaction
from fhir_server.interactions.context import InteractionContext
from fhir_server.interactions.services import Services
from fhir_server.search.compile import compile_filter
from fhir_server.search.parse import parse_search
from fhir_server.storage.documents import StoredResource


class GuardedChainResolver:
    """Ids of the resources of a type that match a compiled sub-query and that the caller may see."""

    def __init__(self, ctx: InteractionContext, services: Services) -> None:
        self._ctx = ctx
        self._services = services

    async def __call__(self, resource_type: str, query: Mapping[str, Any]) -> list[str]:
        provider = self._services.access.provider(self._ctx, interaction=Interaction.SEARCH_TYPE)
        guard = await provider.guard(resource_type, patients=None)
        return await self._services.repository.find_ids(resource_type, query, guard=guard)


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
    query = await compile_filter(request, resolve=GuardedChainResolver(ctx, services))
    provider = services.access.provider(ctx, interaction=Interaction.SEARCH_TYPE)
    guard = await provider.guard(resource_type, patients=None)
    return await services.repository.find(resource_type, query, guard=guard, limit=limit)
