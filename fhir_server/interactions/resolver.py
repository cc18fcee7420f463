"""Sub-queries through the caller's guard: chained and `_has` criteria (search/compile.py), `_typeFilter`.

A sub-query searches a type the token may search (403 otherwise: matching nothing instead would
silently answer another question), and only what the caller's consent and scopes leave visible.
`compile_criteria` is the one way a door turns a request's criteria into a database filter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fhir_server.auth.scopes import permitted_scopes
from fhir_server.fhir.errors import FhirError, forbidden
from fhir_server.fhir.interaction import Interaction
from fhir_server.interactions import views
from fhir_server.interactions.context import InteractionContext
from fhir_server.interactions.services import Services
from fhir_server.record.documents import StoredResource
from fhir_server.search.compile import ID_FIELD, compile_filter
from fhir_server.search.request import SearchRequest

MAX_SUB_QUERY_MATCHES = 1000
"""A chain or `_has` whose sub-query matches more resources than this is refused as too costly."""


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
                [stored.id] if field == ID_FIELD else index_values(stored, field.removeprefix("idx."))
            )
        return values


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


def index_values(stored: StoredResource, code: str) -> list[str]:
    value = stored.index.get(code)
    if value is None:
        return []
    return [value] if isinstance(value, str) else [item for item in value if isinstance(item, str)]
