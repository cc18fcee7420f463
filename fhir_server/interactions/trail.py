"""AuditEvents on their way to a patient: her redacted view (audit/views.py), for every door that
serves them (interactions/views.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from urllib.parse import parse_qsl

from fhir_server.audit.views import Foreign, Readable, patient_view
from fhir_server.consent.codes import INVISIBLE_TO_PATIENT
from fhir_server.fhir.errors import FhirError
from fhir_server.fhir.interaction import Interaction
from fhir_server.fhir.resources import AUDIT_EVENT, CLIENT_WRITABLE_TYPES, PATIENT, SUPPORTED_TYPES
from fhir_server.interactions.context import InteractionContext
from fhir_server.interactions.services import Services
from fhir_server.search.naming import Naming, naming
from fhir_server.search.parse import parse_search
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
        foreign=_foreign(ctx, services, patient),
    )
    return [
        dataclasses.replace(stored, resource=view.show(stored.resource))
        if stored.resource_type == AUDIT_EVENT and stored.resource is not None
        else stored
        for stored in found
    ]


def _foreign(ctx: InteractionContext, services: Services, patient: str) -> Foreign:
    """Whether a recorded request names a patient other than her: parsed as the search it was
    (search/naming.py) and compared with her id and her identifiers; unparseable is foreign."""
    own: list[frozenset[str]] = []

    async def identifiers() -> frozenset[str]:
        if not own:
            own.append(await _identifiers_of(ctx, services, patient))
        return own[0]

    async def foreign(text: str) -> bool:
        named = _named_by(services, text, now=ctx.now)
        if named is None or named.ids - {patient}:
            return True
        return bool(named.identifiers) and not named.identifiers <= await identifiers()

    return foreign


def _named_by(services: Services, text: str, *, now: datetime) -> Naming | None:
    """The patients a recorded `METHOD target` names, or None when it cannot be read as a request."""
    method, _, target = text.partition(" ")
    path, _, query = target.partition("?")
    if not method or not path.startswith("/"):
        return None
    segments = [segment for segment in path.split("/") if segment]
    types = [index for index, segment in enumerate(segments) if segment in SUPPORTED_TYPES]
    resource_type = segments[types[0]] if types else None
    try:
        request = parse_search(
            resource_type,
            parse_qsl(query, keep_blank_values=True),
            registry=services.registry,
            strict=False,
            base_url=services.base_url,
            now=now,
        )
    except FhirError:
        return None
    named = naming(request)
    if resource_type == PATIENT and len(segments) > types[0] + 1:
        instance = segments[types[0] + 1]
        if not instance.startswith(("_", "$")):
            named.ids.add(instance)
    return named


async def _identifiers_of(ctx: InteractionContext, services: Services, patient: str) -> frozenset[str]:
    """The identifier keys of her Patient resource (none when she cannot read it)."""
    provider = services.access.provider(ctx, interaction=Interaction.READ, person=True)
    try:
        stored = await services.repository.read(PATIENT, patient, access=provider)
    except FhirError:
        return frozenset()
    value = stored.index.get("identifier")
    keys = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    return frozenset(key for key in keys if isinstance(key, str))
