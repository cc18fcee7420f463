"""The access seam of the repository (docs/architecture.md I1): no clinical read without a guard.

A guard is pure: `query_filter` is ANDed into every MongoDB query on a clinical collection, and
`decide` re-checks every stored version before it leaves storage (docs/architecture.md I4, defence in depth).
Guards are obtained from a `GuardProvider`, which loads what the policy needs (the Consents of the
patients concerned) so that the decision itself stays free of I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from fhir_server.consent.model import Decision
from fhir_server.record.documents import StoredResource
from fhir_server.record.filters import conjunction

NOTHING: Mapping[str, Any] = {"_id": {"$in": []}}
"""A filter that matches no document."""


class AccessGuard(Protocol):
    def query_filter(self, resource_type: str) -> Mapping[str, Any] | None:
        """A filter on stored documents (record/documents.py fields); None means nothing is visible."""
        ...

    def decide(self, stored: StoredResource) -> Decision:
        """The decision for one stored version (deleted versions included)."""
        ...


class GuardProvider(Protocol):
    async def guard(self, resource_type: str, *, patients: Sequence[str] | None) -> AccessGuard:
        """A guard for data of these patients' compartments; `None` means any patient (unanchored)."""
        ...


def guarded_filter(guard: AccessGuard, resource_type: str, query: Mapping[str, Any]) -> Mapping[str, Any]:
    """`query` AND the guard's filter; a guard that permits nothing yields a filter matching nothing."""
    access = guard.query_filter(resource_type)
    if access is None:
        return NOTHING
    return conjunction([query, access])
