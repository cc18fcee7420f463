"""The access seam of the repository (DESIGN I1): no clinical read without a guard.

A guard is pure: `query_filter` is ANDed into every MongoDB query on a clinical collection, and
`decide` re-checks every stored version before it leaves storage (DESIGN I4, defence in depth).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from fhir_server.consent.model import Decision
from fhir_server.storage.documents import StoredResource

NOTHING: Mapping[str, Any] = {"_id": {"$in": []}}
"""A filter that matches no document."""


class AccessGuard(Protocol):
    def query_filter(self, resource_type: str) -> Mapping[str, Any] | None:
        """A filter on stored documents (storage/documents.py fields); None means nothing is visible."""
        ...

    def decide(self, stored: StoredResource) -> Decision:
        """The decision for one stored version (deleted versions included)."""
        ...
