"""Where the interactions get their access guards: loads what the policy needs, then decides purely.

The decision for clinical data is the consent evaluator's (consent/); this module does the I/O
around it (loading the Consents of the patients concerned) so that consent/ stays pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fhir_server.consent.model import Decision
from fhir_server.fhir.interaction import Interaction
from fhir_server.interactions.context import InteractionContext
from fhir_server.settings import Settings
from fhir_server.storage import documents as doc
from fhir_server.storage.documents import StoredResource
from fhir_server.storage.guard import NOTHING, AccessGuard, GuardProvider
from fhir_server.storage.repository import Repository


class CompartmentGuard:
    """Scopes and the patient compartment: a `patient/` token sees its own compartment only."""

    def __init__(self, ctx: InteractionContext) -> None:
        self._principal = ctx.require_principal()

    def query_filter(self, resource_type: str) -> Mapping[str, Any] | None:
        if self._principal.is_patient:
            return {doc.COMPARTMENT: self._principal.patient}
        return {}

    def decide(self, stored: StoredResource) -> Decision:
        if self._principal.is_patient:
            if self._principal.patient in stored.compartment:
                return Decision.allow("patient-self")
            return Decision.deny("outside-patient-compartment")
        return Decision.allow("scope")


class AccessControl:
    def __init__(self, repository: Repository, settings: Settings) -> None:
        self._repository = repository
        self._settings = settings

    def provider(self, ctx: InteractionContext, *, interaction: Interaction | None = None) -> GuardProvider:
        """Guards for `ctx`'s caller doing `interaction` (default: the context's own interaction)."""
        return _Provider(ctx)


class _Provider:
    def __init__(self, ctx: InteractionContext) -> None:
        self._ctx = ctx

    async def guard(self, resource_type: str, *, patients: Sequence[str] | None) -> AccessGuard:
        return CompartmentGuard(self._ctx)


__all__ = ["NOTHING", "AccessControl", "CompartmentGuard"]
