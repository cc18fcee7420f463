"""Where the interactions get their access guards: load what the policy needs, then decide purely.

The decision is the consent evaluator's (consent/, no I/O). This module does the I/O around it:
for the patients concerned it loads their Consents — on every request, with no cache, so a
Consent created, changed or revoked is enforced on the very next request on every server instance
(docs/architecture.md I3). Consents are loaded whatever their status: applicability is the evaluator's
decision.
Groups named as actors are read from the Consent itself (contained); Group is not a stored type.
Every guard is narrowed to what the token's scopes leave visible (interactions/confinement.py): the
`patient/` compartment and SMART v2 `?param=value` restrictions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fhir_server.consent import AccessRequest, ConsentGuard, ConsentPolicy, needs_consents
from fhir_server.fhir.interaction import Interaction
from fhir_server.fhir.references import reference_id
from fhir_server.fhir.resources import CONSENT
from fhir_server.interactions.confinement import ConfinedGuard, ScopeLimits
from fhir_server.interactions.context import InteractionContext
from fhir_server.record import documents as doc
from fhir_server.search.registry import SearchRegistry
from fhir_server.settings import Settings
from fhir_server.storage.guard import AccessGuard, GuardProvider
from fhir_server.storage.repository import Repository

ACTIVE_CONSENTS: Mapping[str, Any] = {f"{doc.INDEX}.status": "active"}


class AccessControl:
    def __init__(
        self, repository: Repository, settings: Settings, *, registry: SearchRegistry, base_url: str
    ) -> None:
        self._repository = repository
        self.policy = ConsentPolicy.from_settings(settings.consent_default, settings.break_glass_roles)
        self._limits = ScopeLimits(registry, base_url)

    def provider(
        self,
        ctx: InteractionContext,
        *,
        interaction: Interaction | None = None,
        identity_lookup: bool = False,
        person: bool = False,
    ) -> GuardProvider:
        """Guards for `ctx`'s caller doing `interaction` (default: the context's own interaction).

        `identity_lookup`: the request is an exact identifier search on Patient (the DMP existence
        check), the one way a professional without consent may find a Patient.
        `person`: what the user may read whatever this token's scopes (consent and fixed rules only),
        for the redaction of her audit trail: a narrow token must not turn her own events into
        redacted ones. Never used to serve data.
        """
        return _ConsentGuards(
            self._repository,
            self.policy,
            None if person else self._limits,
            ctx,
            interaction or ctx.interaction,
            identity_lookup=identity_lookup,
        )


class _ConsentGuards:
    """One request's guards; consents loaded once per request and patient set, never across requests."""

    def __init__(
        self,
        repository: Repository,
        policy: ConsentPolicy,
        limits: ScopeLimits | None,
        ctx: InteractionContext,
        interaction: Interaction,
        *,
        identity_lookup: bool,
    ) -> None:
        self._repository = repository
        self._policy = policy
        self._limits = limits
        self._ctx = ctx
        self._interaction = interaction
        self._identity_lookup = identity_lookup
        self._loaded: dict[tuple[str, ...] | None, dict[str, list[Mapping[str, Any]]]] = {}

    async def guard(self, resource_type: str, *, patients: Sequence[str] | None) -> AccessGuard:
        principal = self._ctx.require_principal()
        request = AccessRequest(principal, self._interaction, resource_type, self._ctx.now)
        key = None if patients is None else tuple(sorted(set(patients)))
        if not needs_consents(request):
            consents: dict[str, list[Mapping[str, Any]]] = {patient: [] for patient in key or ()}
        else:
            consents = await self._consents(key)
        consent = ConsentGuard(
            request,
            consents,
            policy=self._policy,
            all_patients=patients is None,
            identity_lookup=self._identity_lookup,
        )
        if self._limits is None:
            return consent
        confinement = await self._limits.confinement(principal, self._interaction, resource_type)
        return ConfinedGuard(consent, confinement)

    async def _consents(self, patients: tuple[str, ...] | None) -> dict[str, list[Mapping[str, Any]]]:
        if patients in self._loaded:
            return self._loaded[patients]
        if patients is None:
            query: Mapping[str, Any] = ACTIVE_CONSENTS
            grouped: dict[str, list[Mapping[str, Any]]] = {}
        else:
            query = {doc.COMPARTMENT: {"$in": list(patients)}}
            grouped = {patient: [] for patient in patients}
        for consent in await self._repository.policy_documents(CONSENT, query):
            patient = reference_id(consent.get("patient"), "Patient")
            if patient is not None:
                grouped.setdefault(patient, []).append(consent)
        self._loaded[patients] = grouped
        return grouped
