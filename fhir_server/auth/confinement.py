"""Scopes confine, they never widen: what a token's scopes leave visible of one resource type.

`check_scope` (interactions/pipeline.py) answers "may this token do this interaction on this type at
all" (403). The guards then confine every access to the resources the granting scopes name:
- a `patient/` scope: only the compartment of the token's `patient`, whoever the user is (a patient,
  or a professional's SMART EHR launch);
- a SMART v2 restriction `?param=value[&param=value]`: only resources matching it, as the same
  search on that type would (the parameters are parsed and compiled by search/, so a restriction
  and a search agree). A restriction that is not a plain search criterion of that type (unknown
  parameter, chain, `_has`, result parameter, malformed value) makes its scope grant nothing: a
  restriction that cannot be enforced must not be dropped.
Scopes combine as a union: one unconfined granting scope leaves the type unconfined.
The confinement is ANDed into every query (searches, includes, chains, `_has`, history, export)
and tested on every single resource decided (reads, and writes: the resource as it will be
written must match). https://build.fhir.org/ig/HL7/smart-app-launch/scopes-and-launch-context.html
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from fhir_server.auth.filter_match import matches
from fhir_server.auth.principal import Principal
from fhir_server.auth.scopes import Scope, permitted_scopes
from fhir_server.consent.model import Decision
from fhir_server.fhir.errors import FhirError
from fhir_server.fhir.interaction import Interaction
from fhir_server.search.compile import compile_filter
from fhir_server.search.parse import Clause, parse_search
from fhir_server.search.registry import SearchRegistry
from fhir_server.storage import documents as doc
from fhir_server.storage.documents import StoredResource
from fhir_server.storage.filters import conjunction
from fhir_server.storage.guard import AccessGuard

OUTSIDE_SCOPE = "outside-scope"
"""The decision rule of a resource that no granting scope covers."""

Confinement = Mapping[str, Any] | None
"""A filter on stored documents: `{}` unconfined, None nothing at all."""


class ScopeLimits:
    """Compiles the confinement of a principal's scopes for one interaction on one type."""

    def __init__(self, registry: SearchRegistry, base_url: str) -> None:
        self._registry = registry
        self._base_url = base_url

    async def confinement(
        self, principal: Principal, interaction: Interaction, resource_type: str
    ) -> Confinement:
        scopes = permitted_scopes(
            principal.scopes,
            interaction,
            resource_type,
            patient=principal.patient,
            system=principal.is_system,
        )
        alternatives: list[Mapping[str, Any]] = []
        for scope in scopes:
            limit = await self._scope_filter(scope, principal, resource_type)
            if limit is None:
                continue
            if not limit:
                return {}
            if limit not in alternatives:
                alternatives.append(limit)
        if not alternatives:
            return None
        return alternatives[0] if len(alternatives) == 1 else {"$or": alternatives}

    async def _scope_filter(
        self, scope: Scope, principal: Principal, resource_type: str
    ) -> Mapping[str, Any] | None:
        parts: list[Mapping[str, Any]] = []
        if scope.context == "patient":
            if principal.patient is None:
                return None
            parts.append({doc.COMPARTMENT: principal.patient})
        if scope.restrictions:
            restriction = await self.restriction_filter(resource_type, scope.restrictions)
            if restriction is None:
                return None
            parts.append(restriction)
        return conjunction(parts)

    async def restriction_filter(
        self, resource_type: str, restrictions: Sequence[tuple[str, str]]
    ) -> Mapping[str, Any] | None:
        """The filter of a `?param=value` restriction on this type, or None when it is not usable."""
        try:
            request = parse_search(
                resource_type,
                restrictions,
                registry=self._registry,
                strict=True,
                base_url=self._base_url,
                now=datetime.now(UTC),
            )
        except FhirError:
            return None
        plain = all(isinstance(clause, Clause) and not clause.chain for clause in request.clauses)
        if not plain or len(request.clauses) != len(restrictions) or request.includes:
            return None
        return await compile_filter(request, resolve=_no_sub_queries)


async def _no_sub_queries(*_: Any, **__: Any) -> list[str]:
    raise RuntimeError("a scope restriction has no chain or _has: nothing to resolve")


def stored_fields(stored: StoredResource) -> dict[str, Any]:
    """The stored-document fields a confinement filter names, for one resource version."""
    return {
        doc.ID: stored.id,
        doc.LAST_UPDATED: stored.last_updated,
        doc.INDEX: stored.index,
        doc.COMPARTMENT: list(stored.compartment),
        doc.SECURITY: list(stored.security),
    }


def within(confinement: Confinement, stored: StoredResource) -> bool:
    if confinement is None:
        return False
    if not confinement:
        return True
    try:
        return matches(confinement, stored_fields(stored))
    except ValueError:
        return False


class ConfinedGuard:
    """An AccessGuard (storage/guard.py) narrowed to what the scopes leave visible."""

    def __init__(self, inner: AccessGuard, confinement: Confinement) -> None:
        self._inner = inner
        self._confinement = confinement

    def query_filter(self, resource_type: str) -> Mapping[str, Any] | None:
        if self._confinement is None:
            return None
        access = self._inner.query_filter(resource_type)
        if access is None or not self._confinement:
            return access
        return conjunction([access, self._confinement])

    def decide(self, stored: StoredResource) -> Decision:
        if not within(self._confinement, stored):
            return Decision.deny(OUTSIDE_SCOPE)
        return self._inner.decide(stored)


__all__ = ["OUTSIDE_SCOPE", "ConfinedGuard", "Confinement", "ScopeLimits", "stored_fields", "within"]
