"""AuditEvents on their way to a patient: her redacted view (audit/views.py), for every door that
serves them (read, vread, search and its includes, history)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from fhir_server.audit.views import patient_view
from fhir_server.consent.codes import INVISIBLE_TO_PATIENT
from fhir_server.fhir.interaction import Interaction
from fhir_server.fhir.resources import AUDIT_EVENT, CLIENT_WRITABLE_TYPES
from fhir_server.interactions.context import InteractionContext
from fhir_server.interactions.services import Services
from fhir_server.record.documents import StoredResource


async def served(
    ctx: InteractionContext, services: Services, found: Sequence[StoredResource]
) -> list[StoredResource]:
    """`found` as the caller may see it: AuditEvents redacted for a patient, everything else as is."""
    principal = ctx.require_principal()
    events = [stored for stored in found if stored.resource_type == AUDIT_EVENT and stored.resource]
    if not events or not principal.is_patient or principal.patient is None:
        return list(found)
    patient = principal.patient
    provider = services.access.provider(ctx, interaction=Interaction.READ, person=True)

    async def readable(resource_type: str, ids: Sequence[str]) -> set[str]:
        guard = await provider.guard(resource_type, patients=(patient,))
        return await services.repository.visible_current(resource_type, ids, guard=guard)

    async def hidden() -> set[str]:
        ids: set[str] = set()
        for resource_type in sorted(CLIENT_WRITABLE_TYPES):
            ids |= await services.repository.labelled_ids(
                resource_type, patient=patient, label=INVISIBLE_TO_PATIENT
            )
        return ids

    view = await patient_view(
        [stored.resource for stored in events if stored.resource is not None],
        patient,
        types=CLIENT_WRITABLE_TYPES,
        readable=readable,
        hidden=hidden,
    )
    return [
        dataclasses.replace(stored, resource=view.show(stored.resource))
        if stored.resource_type == AUDIT_EVENT and stored.resource is not None
        else stored
        for stored in found
    ]
