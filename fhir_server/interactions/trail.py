"""AuditEvents on their way to a patient: her redacted view (audit/views.py), for every door that
serves them (interactions/views.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from fhir_server.audit.views import Readable, patient_view
from fhir_server.consent.codes import INVISIBLE_TO_PATIENT
from fhir_server.fhir.interaction import Interaction
from fhir_server.fhir.resources import AUDIT_EVENT, CLIENT_WRITABLE_TYPES
from fhir_server.interactions.context import InteractionContext
from fhir_server.interactions.services import Services
from fhir_server.storage.documents import StoredResource


def viewing_patient(ctx: InteractionContext) -> str | None:
    """The patient whose view of the trail this caller gets (a patient token), else None (served whole)."""
    principal = ctx.require_principal()
    return principal.patient if principal.is_patient else None


def readable_by(ctx: InteractionContext, services: Services, patient: str) -> Readable:
    """Of some ids of one type, those the patient may read now, whatever this token's scopes."""
    provider = services.access.provider(ctx, interaction=Interaction.READ, person=True)

    async def readable(resource_type: str, ids: Sequence[str]) -> set[str]:
        if resource_type not in CLIENT_WRITABLE_TYPES:
            return set()
        guard = await provider.guard(resource_type, patients=(patient,))
        return await services.repository.visible_current(resource_type, ids, guard=guard)

    return readable


async def served(
    ctx: InteractionContext, services: Services, found: Sequence[StoredResource]
) -> list[StoredResource]:
    """`found` as the caller may see it: AuditEvents redacted for a patient, everything else as is."""
    events = [stored for stored in found if stored.resource_type == AUDIT_EVENT and stored.resource]
    patient = viewing_patient(ctx)
    if not events or patient is None:
        return list(found)

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
        readable=readable_by(ctx, services, patient),
        hidden=hidden,
    )
    return [
        dataclasses.replace(stored, resource=view.show(stored.resource))
        if stored.resource_type == AUDIT_EVENT and stored.resource is not None
        else stored
        for stored in found
    ]
