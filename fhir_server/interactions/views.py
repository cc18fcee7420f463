"""What a caller is served of the resources she may read: one place, used by every door.

Two stored types name other resources: an AuditEvent (its entities, the query it records) and a
List (its entries: an IHE MHD SubmissionSet names the documents it carried). A caller who may read
one may not read everything it names; served whole, it would tell a hidden resource from an unknown
one (docs/consent.md: hidden is absent). So:
- `served` is what every door serves — read, vread, search matches and includes, history, the batch
  and transaction entries that run those, write representations, bulk export: an AuditEvent shown to
  a patient is her view of it (interactions/trail.py, audit/views.py); a List keeps only the entries
  that name a resource the caller may read now (or nothing this server stores) and, when it lost
  one, is labelled REDACTED (v3-ObservationValue) in `meta.security`. The stored resource is never
  changed.
- `visible_criteria` makes the search criteria that look into those parts (List `item`, and
  AuditEvent `entity` for a patient) match only what the view keeps: a value naming a resource the
  caller may not read matches nothing, exactly like an id that does not exist. Chains and `_has`
  criteria are rewritten too, at every depth.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fhir_server.audit.views import REDACTED_CODING, Readable
from fhir_server.fhir.interaction import Interaction
from fhir_server.fhir.resources import AUDIT_EVENT, BINARY, LIST, SUPPORTED_TYPES
from fhir_server.interactions import trail
from fhir_server.interactions.context import InteractionContext
from fhir_server.interactions.services import Services
from fhir_server.search.parse import ChainTarget, Clause, HasClause, SearchRequest
from fhir_server.search.types.reference import ReferenceValue, reference_key
from fhir_server.storage import documents as doc
from fhir_server.storage.documents import StoredResource

VIEWED_TYPES = frozenset(SUPPORTED_TYPES) - {BINARY}
"""Types whose resources a List entry or a criterion may name and that a guard decides; a Binary is
decided by the document that owns it (interactions/binary_access.py), so one named here is hidden."""
LIST_ITEM = (LIST, "item")
PATIENT_TRAIL_ENTITY = (AUDIT_EVENT, "entity")


async def served(
    ctx: InteractionContext, services: Services, found: Sequence[StoredResource]
) -> list[StoredResource]:
    """`found` as the caller may see it (the one function every door serves through)."""
    shown = await trail.served(ctx, services, found)
    lists = [stored for stored in shown if stored.resource_type == LIST and stored.resource is not None]
    if not lists:
        return shown
    named = _named(item for stored in lists for item in _items(stored.resource or {}))
    readable = caller_readable(ctx, services)
    visible = {
        f"{resource_type}/{item}"
        for resource_type, ids in named.items()
        for item in await readable(resource_type, sorted(ids))
    }
    return [
        dataclasses.replace(stored, resource=_list_view(stored.resource, visible))
        if stored.resource_type == LIST and stored.resource is not None
        else stored
        for stored in shown
    ]


def caller_readable(ctx: InteractionContext, services: Services) -> Readable:
    """Of some ids of one type, those this caller (token scopes included) may read now, decided with
    the Consents of the live ones' patients (a resource of any other patient stays hidden)."""
    provider = services.access.provider(ctx, interaction=Interaction.READ)

    async def readable(resource_type: str, ids: Sequence[str]) -> set[str]:
        if resource_type not in VIEWED_TYPES or not ids:
            return set()
        found = await services.repository.compartments_where(resource_type, {doc.ID: {"$in": list(ids)}})
        patients = sorted({patient for compartment in found for patient in compartment})
        guard = await provider.guard(resource_type, patients=patients)
        return await services.repository.visible_current(resource_type, ids, guard=guard)

    return readable


def _items(resource: Mapping[str, Any]) -> list[str]:
    """The `Type/id` keys of the stored types a List's entries name."""
    keys = [_entry_key(entry) for entry in resource.get("entry") or [] if isinstance(entry, Mapping)]
    return [key for key in keys if key is not None]


def _entry_key(entry: Mapping[str, Any]) -> str | None:
    item = entry.get("item")
    text = item.get("reference") if isinstance(item, Mapping) else None
    key = reference_key(text) if isinstance(text, str) else None
    if key is None or key.count("/") != 1 or key.split("/")[0] not in SUPPORTED_TYPES:
        return None
    return key


def _named(keys: Iterable[str]) -> dict[str, set[str]]:
    named: dict[str, set[str]] = {}
    for key in keys:
        resource_type, _, resource_id = key.partition("/")
        named.setdefault(resource_type, set()).add(resource_id)
    return named


def _list_view(resource: Mapping[str, Any], visible: set[str]) -> dict[str, Any]:
    served = copy.deepcopy(dict(resource))
    entries = served.get("entry") or []
    kept = [
        entry
        for entry in entries
        if not isinstance(entry, Mapping) or (key := _entry_key(entry)) is None or key in visible
    ]
    if len(kept) == len(entries):
        return served
    if kept:
        served["entry"] = kept
    else:
        served.pop("entry", None)
    meta = served.setdefault("meta", {})
    meta["security"] = [*(meta.get("security") or []), dict(REDACTED_CODING)]
    return served


# -- criteria -------------------------------------------------------------------------------------


async def visible_criteria(
    ctx: InteractionContext, services: Services, request: SearchRequest
) -> SearchRequest:
    """The request whose criteria on viewed parts name only what the caller may read (see above)."""
    viewed = {LIST_ITEM: caller_readable(ctx, services)}
    patient = trail.viewing_patient(ctx)
    if patient is not None:
        viewed[PATIENT_TRAIL_ENTITY] = trail.readable_by(ctx, services, patient)
    scope = request.resource_type or (request.types[0] if len(request.types) == 1 else None)
    clauses = [await _clause(scope, clause, viewed) for clause in request.clauses]
    return dataclasses.replace(request, clauses=tuple(clauses))


async def _clause(
    resource_type: str | None, clause: Clause | HasClause, viewed: Mapping[tuple[str, str], Readable]
) -> Clause | HasClause:
    if isinstance(clause, HasClause):
        inner = await _clause(clause.resource_type, clause.clause, viewed)
        return dataclasses.replace(clause, clause=inner)
    if clause.chain:
        chain = [
            ChainTarget(target.resource_type, await _sole(target.resource_type, target.clause, viewed))
            for target in clause.chain
        ]
        return dataclasses.replace(clause, chain=tuple(chain))
    readable = viewed.get((resource_type or "", clause.parameter.code))
    if readable is None or clause.modifier in ("identifier", "missing"):
        return clause
    values = [value for value in clause.values if isinstance(value, ReferenceValue)]
    named: dict[str, set[str]] = {}
    for value in values:
        for key in _candidates(value):
            resource_type_, _, resource_id = key.partition("/")
            named.setdefault(resource_type_, set()).add(resource_id)
    visible = {f"{kind}/{item}" for kind, ids in named.items() for item in await readable(kind, sorted(ids))}
    kept = tuple(
        ReferenceValue(tuple(key for key in _candidates(value) if _outside(key) or key in visible))
        for value in values
    )
    return dataclasses.replace(clause, values=kept)


async def _sole(resource_type: str, clause: Clause, viewed: Mapping[tuple[str, str], Readable]) -> Clause:
    rewritten = await _clause(resource_type, clause, viewed)
    if not isinstance(rewritten, Clause):
        raise TypeError("a chain target is a plain clause")
    return rewritten


def _candidates(value: ReferenceValue) -> tuple[str, ...]:
    """The keys a value matches; a bare id of a parameter that targets any type, as each stored type."""
    if value.any_type_id is None:
        return value.keys
    return (*value.keys, *(f"{kind}/{value.any_type_id}" for kind in sorted(SUPPORTED_TYPES)))


def _outside(key: str) -> bool:
    """A key naming nothing this server stores (an external URL): no view hides it."""
    return key.count("/") != 1 or key.split("/")[0] not in SUPPORTED_TYPES


__all__ = ["caller_readable", "served", "visible_criteria"]
