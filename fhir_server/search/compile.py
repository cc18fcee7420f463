"""SearchRequest -> MongoDB filter and sort on stored documents (record/documents.py).

https://hl7.org/fhir/R4/search.html

The filter covers the search criteria only: the caller ANDs the access filter
(`AccessGuard.query_filter`) and `{"del": False}` into it, and into every sub-query it runs for a
chain or `_has` through the `ChainResolver`, so chained criteria never see hidden data
(docs/architecture.md I4).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from fhir_server.record.filters import conjunction
from fhir_server.search.parse import Clause, HasClause, SearchRequest
from fhir_server.search.registry import ANY_TYPE, SearchRegistry
from fhir_server.search.types import TYPES

ID_FIELD = "_id"

__all__ = ["ID_FIELD", "ChainResolver", "compile_filter", "compile_sort", "conjunction"]


class ChainResolver(Protocol):
    async def __call__(
        self, resource_type: str, query: Mapping[str, Any], *, field: str = ID_FIELD
    ) -> list[str]:
        """Distinct values of `field` (default: the ids) over the `resource_type` documents that
        match `query` AND what the caller may see."""
        ...


async def _clause_filter(
    resource_type: str, clause: Clause | HasClause, resolve: ChainResolver
) -> dict[str, Any]:
    if isinstance(clause, HasClause):
        inner = await _clause_filter(clause.resource_type, clause.clause, resolve)
        referring = await resolve(clause.resource_type, inner, field=clause.reference.field)
        prefix = f"{resource_type}/"
        ids = sorted({key[len(prefix) :] for key in referring if key.startswith(prefix)})
        return {ID_FIELD: {"$in": ids}}
    field = clause.parameter.field
    if clause.chain:
        keys: list[str] = []
        for target in clause.chain:
            inner = await _clause_filter(target.resource_type, target.clause, resolve)
            keys.extend(
                f"{target.resource_type}/{found}" for found in await resolve(target.resource_type, inner)
            )
        return {field: {"$in": sorted(set(keys))}}
    if clause.modifier == "missing":
        return {field: {"$exists": not clause.values[0]}}
    return TYPES[clause.parameter.type].to_mongo(field, clause.values, clause.context)


async def compile_filter(request: SearchRequest, *, resolve: ChainResolver) -> dict[str, Any]:
    """The MongoDB filter of the request's criteria; `{}` when it has none."""
    scope = request.resource_type or ANY_TYPE
    return conjunction([await _clause_filter(scope, clause, resolve) for clause in request.clauses])


def compile_sort(request: SearchRequest, registry: SearchRegistry) -> list[tuple[str, int]]:
    """Sort keys for the request, always ending with `_id` so that the order is total (keyset paging)."""
    scope = request.resource_type or (request.types[0] if len(request.types) == 1 else ANY_TYPE)
    keys: list[tuple[str, int]] = []
    for key in request.sort:
        field = registry.sort_field(scope, key.code, descending=key.descending)
        if field is not None and field not in (existing for existing, _ in keys):
            keys.append((field, -1 if key.descending else 1))
    if ID_FIELD not in (existing for existing, _ in keys):
        keys.append((ID_FIELD, 1))
    return keys
