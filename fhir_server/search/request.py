"""A parsed search: its clauses (criteria), includes and result controls (search/parse.py builds it).

Pure data, no I/O: search/compile.py turns it into a database query, interactions/search.py into a
searchset Bundle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fhir_server.fhir.errors import Issue
from fhir_server.search.registry import SearchParameter
from fhir_server.search.types.common import QueryContext

DEFAULT_COUNT = 20


@dataclass(frozen=True)
class Clause:
    """One search parameter occurrence: its values are alternatives (OR); clauses are ANDed."""

    parameter: SearchParameter
    context: QueryContext
    values: tuple[Any, ...] = ()
    """Parsed values (`search/types/`), or `(True,)`/`(False,)` for `:missing`."""
    chain: tuple[ChainTarget, ...] = ()
    """For a chained reference (`patient.identifier=...`): the sub-search per candidate target type."""

    @property
    def modifier(self) -> str | None:
        return self.context.modifier


@dataclass(frozen=True)
class ChainTarget:
    resource_type: str
    clause: Clause


@dataclass(frozen=True)
class HasClause:
    """Reverse chain `_has:<resource_type>:<reference>:<clause>`."""

    resource_type: str
    reference: SearchParameter
    clause: Clause | HasClause


@dataclass(frozen=True)
class Include:
    """`_include` (reverse=False) or `_revinclude`: follow `parameter` of `source_type` resources."""

    source_type: str
    parameter: SearchParameter
    target_type: str | None
    iterate: bool
    reverse: bool


@dataclass(frozen=True)
class SortKey:
    code: str
    descending: bool


@dataclass(frozen=True)
class SearchRequest:
    resource_type: str | None
    """None for a system-level search (`types` then lists `_type`, empty for all types)."""
    clauses: tuple[Clause | HasClause, ...] = ()
    types: tuple[str, ...] = ()
    includes: tuple[Include, ...] = ()
    sort: tuple[SortKey, ...] = ()
    count: int = DEFAULT_COUNT
    total: str | None = None
    """`_total` as asked (none, estimate, accurate), None when not asked."""
    summary: str | None = None
    elements: tuple[str, ...] = ()
    cursor: str | None = None
    issues: tuple[Issue, ...] = ()
    """Warnings about parameters that were ignored."""
    applied: tuple[tuple[str, str], ...] = field(default=())
    """The parameters actually used, in request order (for the `self` link); `_cursor` excluded."""

    @property
    def revincludes(self) -> tuple[Include, ...]:
        return tuple(include for include in self.includes if include.reverse)

    @property
    def forward_includes(self) -> tuple[Include, ...]:
        return tuple(include for include in self.includes if not include.reverse)
