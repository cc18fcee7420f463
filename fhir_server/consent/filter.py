"""The consent decision as a MongoDB filter on stored documents, exactly equivalent to evaluate.decide().

The filter is ANDed into the search query so that paging and `Bundle.total` see only permitted data
(DESIGN I4, PCF "permit with filtering of results"). It reads the stored fields of storage/documents.py:
`_id`/`rid`, `pat`, `sec`, `idx.date` / `idx.period` (`$elemMatch` on `lo`/`hi`) and paths of the
resource JSON under `res`. Operators used, and nothing else: `$and`, `$or`, `$nor`, `$in`, `$nin`,
`$ne`, `$elemMatch`, `$exists`, `$lte`, `$gte` and implicit equality (with MongoDB's array semantics).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from fhir_server.consent.codes import (
    ACCESS,
    COLLECT,
    CONFIDENTIALITY_ORDER,
    CONFIDENTIALITY_SYSTEM,
    INVISIBLE_TO_PATIENT,
    MASKED_TO_PROFESSIONALS,
)
from fhir_server.consent.evaluate import AUTHORED_BY, REFERENCE_PATHS, Evaluator
from fhir_server.consent.provisions import CompiledConsent, DataItem, Label, Provision
from fhir_server.fhir.resources import DOCUMENT_REFERENCE, PATIENT
from fhir_server.storage.documents import COMPARTMENT, ID, INDEX, RESOURCE, RESOURCE_ID, SECURITY

Filter = bool | dict[str, Any]
"""True matches every document, False none; a dict is a MongoDB filter."""


def all_of(*parts: Filter) -> Filter:
    kept: list[dict[str, Any]] = []
    for part in parts:
        if part is False:
            return False
        if part is not True:
            kept.append(part)
    if not kept:
        return True
    return kept[0] if len(kept) == 1 else {"$and": kept}


def any_of(*parts: Filter) -> Filter:
    kept: list[dict[str, Any]] = []
    for part in parts:
        if part is True:
            return True
        if part is not False:
            kept.append(part)
    if not kept:
        return False
    return kept[0] if len(kept) == 1 else {"$or": kept}


def negate(part: Filter) -> Filter:
    if isinstance(part, bool):
        return not part
    return {"$nor": [part]}


def to_query(part: Filter) -> Mapping[str, Any] | None:
    """The AccessGuard form: {} for everything, None for nothing."""
    if part is True:
        return {}
    if part is False:
        return None
    return part


def consent_filter(
    evaluator: Evaluator,
    resource_type: str,
    consents_by_patient: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    all_patients: bool,
) -> Filter:
    """Documents of `resource_type` that evaluator.decide() permits, with the same consent source."""
    principal = evaluator.request.principal
    action = evaluator.action
    if action is None:
        return False
    if principal.is_patient:
        return all_of({COMPARTMENT: principal.patient}, {SECURITY: {"$ne": INVISIBLE_TO_PATIENT}})
    if evaluator.read_only and action != ACCESS:
        return False
    if resource_type == PATIENT and (action == COLLECT or evaluator.identity_manager):
        return True
    without_patient = {f"{COMPARTMENT}.0": {"$exists": False}}
    with_patient = {f"{COMPARTMENT}.0": {"$exists": True}}
    consented = _consented(
        evaluator,
        resource_type,
        consents_by_patient,
        all_patients,
        Evaluator.consent_action(action, resource_type),
    )
    author = _author(evaluator, resource_type)
    visible = {SECURITY: {"$ne": MASKED_TO_PROFESSIONALS}}
    if action == ACCESS:
        lookup = resource_type == PATIENT and evaluator.identity_lookup
        in_compartment = any_of(author, all_of(visible, any_of(consented, lookup)))
    else:
        in_compartment = all_of(any_of(author, visible), consented)
    return any_of(
        all_of(without_patient, action == COLLECT or principal.is_system),
        all_of(with_patient, in_compartment),
    )


def _author(evaluator: Evaluator, resource_type: str) -> Filter:
    if resource_type != DOCUMENT_REFERENCE:
        return False
    principal = evaluator.request.principal
    by_reference: Filter = False
    by_identifier: Filter = False
    if principal.fhir_user is not None:
        by_reference = {f"{RESOURCE}.author.reference": principal.fhir_user}
    if principal.national_provider_identifier is not None:
        by_identifier = {f"{RESOURCE}.author.identifier.value": principal.national_provider_identifier}
    return any_of(by_reference, by_identifier)


def _consented(
    evaluator: Evaluator,
    resource_type: str,
    consents_by_patient: Mapping[str, Sequence[Mapping[str, Any]]],
    all_patients: bool,
    action: str,
) -> Filter:
    """Every compartment patient permits: one clause per distinct per-patient filter."""
    loaded = sorted(consents_by_patient)
    parts: list[Filter] = []
    if not (all_patients and (evaluator.policy.default == "permit" or evaluator.break_the_glass)):
        if not loaded:
            return False
        parts.append({"$nor": [{COMPARTMENT: {"$elemMatch": {"$nin": loaded}}}]})
    by_filter: dict[str, tuple[Filter, list[str]]] = {}
    for patient_id in loaded:
        compiled = evaluator.compiled(patient_id, consents_by_patient[patient_id], action)
        allowed = _patient_permits(evaluator, compiled, resource_type)
        by_filter.setdefault(repr(allowed), (allowed, []))[1].append(patient_id)
    for allowed, patients in by_filter.values():
        parts.append(any_of({COMPARTMENT: {"$nin": patients}}, allowed))
    return all_of(*parts)


def _patient_permits(evaluator: Evaluator, consents: Sequence[CompiledConsent], resource_type: str) -> Filter:
    said = any_of(*(_matches(c.root, resource_type) for c in consents))
    denied = any_of(
        *(all_of(_matches(c.root, resource_type), _denies(c.root, resource_type)) for c in consents)
    )
    if evaluator.break_the_glass:
        refused = any_of(
            *(all_of(_matches(c.root, resource_type), _refuses_btg(c.root, resource_type)) for c in consents)
        )
        return negate(refused)
    if evaluator.policy.default == "permit":
        return negate(denied)
    return all_of(said, negate(denied))


def _denies(provision: Provision, resource_type: str) -> Filter:
    """Given that `provision` matches: its outcome is deny."""
    nested = [(_matches(child, resource_type), child) for child in provision.provisions]
    return any_of(
        all_of(negate(any_of(*(m for m, _ in nested))), provision.deny),
        *(all_of(m, _denies(child, resource_type)) for m, child in nested),
    )


def _refuses_btg(provision: Provision, resource_type: str) -> Filter:
    """Given that `provision` matches: a deciding deny provision names purpose BTG."""
    nested = [(_matches(child, resource_type), child) for child in provision.provisions]
    return any_of(
        all_of(negate(any_of(*(m for m, _ in nested))), provision.explicit_btg_deny),
        *(all_of(m, _refuses_btg(child, resource_type)) for m, child in nested),
    )


def _matches(provision: Provision, resource_type: str) -> Filter:
    if not provision.request_match:
        return False
    parts: list[Filter] = []
    if provision.classes is not None:
        parts.append(resource_type in provision.classes)
    if provision.codes is not None:
        parts.append(
            resource_type == DOCUMENT_REFERENCE
            and any_of(
                *(
                    {
                        f"{RESOURCE}.type.coding": {
                            "$elemMatch": {"code": c.code, **({"system": c.system} if c.system else {})}
                        }
                    }
                    for c in provision.codes
                )
            )
        )
    if provision.labels is not None:
        parts.append(any_of(*(_label(label) for label in provision.labels)))
    if provision.data_period is not None:
        parts.append(_data_period(provision.data_period, resource_type))
    if provision.data is not None:
        parts.append(any_of(*(_data(item, resource_type) for item in provision.data)))
    return all_of(*parts)


def _label(label: Label) -> Filter:
    if label.level is None:
        return {SECURITY: label.key}
    keys = [f"{CONFIDENTIALITY_SYSTEM}|{code}" for code in CONFIDENTIALITY_ORDER]
    above, at_or_below = keys[label.level + 1 :], keys[: label.level + 1]
    none_above: Filter = {SECURITY: {"$nin": above}} if above else True
    if label.level >= CONFIDENTIALITY_ORDER.index("N"):
        return none_above
    return all_of(none_above, {SECURITY: {"$in": at_or_below}})


def _data_period(bounds: tuple[datetime, datetime], resource_type: str) -> Filter:
    start, end = bounds
    overlaps = {"$elemMatch": {"lo": {"$lte": end}, "hi": {"$gte": start}}}
    dated = {f"{INDEX}.date": overlaps}
    if resource_type != DOCUMENT_REFERENCE:
        return dated
    return any_of(dated, all_of({f"{INDEX}.date.0": {"$exists": False}}, {f"{INDEX}.period": overlaps}))


def _data(item: DataItem, resource_type: str) -> Filter:
    itself: Filter = False
    if item.meaning != AUTHORED_BY and resource_type == item.target_type:
        itself = {"$or": [{RESOURCE_ID: item.target_id}, {ID: item.target_id}]}
    paths = REFERENCE_PATHS.get(item.meaning, {}).get(resource_type, ())
    references = sorted(item.references)
    return any_of(itself, *({f"{RESOURCE}.{path}": {"$in": references}} for path in paths))
