"""The consent decision as a MongoDB filter on stored documents, exactly equivalent to evaluate.decide().

The filter is ANDed into the search query so that paging and `Bundle.total` see only permitted data
(docs/architecture.md I4, PCF "permit with filtering of results"). Planners choose an index from the top-level
fields of a query, and the embedded database uses none when a top-level operator (`$and`, `$or`,
`$nor`) is present (docs/architecture.md), so the filter is built flat wherever the decision allows it:

- patient tokens: `{vis: "patient:<id>"}`;
- every other caller, when each loaded patient's consents decide without reading the data (actor,
  action, purpose and period criteria only, or no consent: the default policy; break-the-glass):
  one `$in` on the `vis` keys of record/visibility.py — the caller's author keys, `"*:<patients>"` for
  each non-empty set of permitted patients (at most MAX_ENUMERATED_PATIENTS of them; `"*"` when every
  patient permits), `"-"` (no compartment) for `system/` clients and creations; past that bound, or
  when some patients refuse while unloaded ones permit, the same `$in` with one `pat` clause, for a
  caller that authors nothing of this type (an author reads their documents whatever the consents say,
  which no AND with a `pat` clause can express);
- otherwise (data criteria: class, code, securityLabel, dataPeriod, data): the general form, where a
  top-level `$or` remains for what the consents test on the data.

The general form reads `_id`/`rid`, `pat`, `sec`, `vis`, `idx.date` / `idx.period` (`$elemMatch` on
`lo`/`hi`) and paths of the resource JSON under `res`. Operators used, and nothing else: `$and`, `$or`,
`$nor`, `$not`, `$in`, `$nin`, `$ne`, `$elemMatch`, `$exists`, `$lte`, `$gte` and implicit equality
(with MongoDB's array semantics).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from itertools import combinations
from typing import Any, TypeGuard, cast

from fhir_server.consent.codes import ACCESS, COLLECT, CONFIDENTIALITY_ORDER, CONFIDENTIALITY_SYSTEM
from fhir_server.consent.evaluate import REFERENCE_PATHS, Evaluator
from fhir_server.consent.provisions import AUTHORED_BY, CompiledConsent, DataItem, Label, Provision
from fhir_server.consent.writers import patient_rule, role_rule
from fhir_server.fhir.resources import DOCUMENT_REFERENCE, PATIENT
from fhir_server.record.documents import COMPARTMENT, ID, INDEX, RESOURCE, RESOURCE_ID, SECURITY, VISIBILITY
from fhir_server.record.visibility import (
    MASKED_TO_PROFESSIONALS,
    NO_COMPARTMENT_KEY,
    OPEN_KEY,
    author_identifier_key,
    author_key,
    open_key,
    patient_key,
)

Filter = bool | dict[str, Any]
"""True matches every document, False none; a dict is a MongoDB filter."""

MAX_ENUMERATED_PATIENTS = 5
"""Permitted patients whose compartment sets are listed as `vis` keys (2^n - 1 keys)."""


def _clauses(condition: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """The single-field (or single-operator) clauses of an implicit AND, with `$and` spliced in."""
    for key, value in condition.items():
        if key == "$and":
            for part in value:
                yield from _clauses(part)
        else:
            yield key, value


def _is_operator_document(value: Any) -> TypeGuard[dict[str, Any]]:
    return isinstance(value, dict) and bool(value) and all(str(k).startswith("$") for k in value)


def all_of(*parts: Filter) -> Filter:
    """AND, merged into one document wherever fields (or a field's operators) do not collide."""
    merged: dict[str, Any] = {}
    rest: list[dict[str, Any]] = []
    for part in parts:
        if part is False:
            return False
        if part is True:
            continue
        for key, value in _clauses(part):
            present = merged.get(key)
            if key not in merged:
                merged[key] = value
            elif (
                not key.startswith("$")
                and _is_operator_document(present)
                and _is_operator_document(value)
                and not present.keys() & value.keys()
            ):
                merged[key] = {**present, **value}
            else:
                rest.append({key: value})
    if rest:
        merged["$and"] = rest
    return merged or True


def any_of(*parts: Filter) -> Filter:
    kept: list[dict[str, Any]] = []
    for part in parts:
        if part is True:
            return True
        if part is not False:
            kept.extend(part["$or"] if set(part) == {"$or"} else [part])
    if not kept:
        return False
    return kept[0] if len(kept) == 1 else {"$or": kept}


def negate(part: Filter) -> Filter:
    """NOT, on the field itself when the part is one field clause (`$not`, `$ne`), else `$nor`."""
    if isinstance(part, bool):
        return not part
    if len(part) == 1:
        [(key, value)] = part.items()
        if not key.startswith("$"):
            if _is_operator_document(value):
                return {key: value["$not"]} if set(value) == {"$not"} else {key: {"$not": value}}
            return {key: {"$ne": value}}
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
    if principal.is_patient and principal.patient is not None:
        fixed = patient_rule(evaluator.request.interaction, resource_type)
        return False if fixed is not None else {VISIBILITY: patient_key(principal.patient)}
    if evaluator.read_only and action != ACCESS:
        return False
    fixed = role_rule(principal, action, resource_type)
    if fixed is not None:
        return fixed.permit
    allowed = {
        patient: _patient_permits(evaluator, evaluator.compiled(patient, consents, action), resource_type)
        for patient, consents in sorted(consents_by_patient.items())
    }
    unloaded_permit = all_patients and (evaluator.default_permits(resource_type) or evaluator.break_the_glass)
    if all(isinstance(permits, bool) for permits in allowed.values()):
        keyed = _keyed(evaluator, resource_type, cast(Mapping[str, bool], allowed), unloaded_permit)
        if keyed is not None:
            return keyed
    return _general(evaluator, resource_type, allowed, unloaded_permit)


def _author_keys(evaluator: Evaluator, resource_type: str) -> list[str]:
    """The `vis` keys under which the caller is an author (only DocumentReference authors count)."""
    if resource_type != DOCUMENT_REFERENCE:
        return []
    principal = evaluator.request.principal
    keys = []
    if principal.fhir_user is not None:
        keys.append(author_key(principal.fhir_user))
    if principal.national_provider_identifier is not None:
        keys.append(author_identifier_key(principal.national_provider_identifier))
    return keys


def _keyed(
    evaluator: Evaluator, resource_type: str, allowed: Mapping[str, bool], unloaded_permit: bool
) -> Filter | None:
    """The flat form when each patient's consents decide alone (module docstring); None if none fits.

    Permitted: no compartment and (creation or `system/`), key "-"; or a compartment and, for `access`,
    author or (unmasked and every compartment patient permits), for the other actions (author or
    unmasked) and every compartment patient permits.
    """
    access = evaluator.action == ACCESS
    refused = [patient for patient, permits in allowed.items() if not permits]
    permitted = [patient for patient, permits in allowed.items() if permits]
    keys = (
        [NO_COMPARTMENT_KEY] if evaluator.action == COLLECT or evaluator.request.principal.is_system else []
    )
    authors = _author_keys(evaluator, resource_type)
    patients: Filter = True
    lookup = access and resource_type == PATIENT and evaluator.identity_lookup
    if lookup or (unloaded_permit and not refused):
        keys.extend((*authors, OPEN_KEY))
    elif not unloaded_permit and not permitted:
        keys.extend(authors if access else ())
    elif access and not unloaded_permit and len(permitted) <= MAX_ENUMERATED_PATIENTS:
        keys.extend(authors)
        keys.extend(
            open_key(group)
            for size in range(1, len(permitted) + 1)
            for group in combinations(permitted, size)
        )
    elif access and authors:
        return None
    else:
        keys.extend((*authors, OPEN_KEY))
        patients = (
            {COMPARTMENT: {"$nin": refused}}
            if unloaded_permit
            else {COMPARTMENT: {"$not": {"$elemMatch": {"$nin": permitted}}}}
        )
    if not keys:
        return False
    return all_of({VISIBILITY: keys[0] if len(keys) == 1 else {"$in": sorted(keys)}}, patients)


def _general(
    evaluator: Evaluator, resource_type: str, allowed: Mapping[str, Filter], unloaded_permit: bool
) -> Filter:
    principal = evaluator.request.principal
    action = evaluator.action
    without_patient = {f"{COMPARTMENT}.0": {"$exists": False}}
    with_patient = {f"{COMPARTMENT}.0": {"$exists": True}}
    consented = _consented(allowed, unloaded_permit)
    authors = _author_keys(evaluator, resource_type)
    author: Filter = {VISIBILITY: {"$in": authors}} if authors else False
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


def _consented(allowed: Mapping[str, Filter], unloaded_permit: bool) -> Filter:
    """Every compartment patient permits: one clause per distinct per-patient filter."""
    parts: list[Filter] = []
    if not unloaded_permit:
        if not allowed:
            return False
        parts.append({COMPARTMENT: {"$not": {"$elemMatch": {"$nin": sorted(allowed)}}}})
    by_filter: dict[str, tuple[Filter, list[str]]] = {}
    for patient, permits in allowed.items():
        by_filter.setdefault(repr(permits), (permits, []))[1].append(patient)
    if not unloaded_permit and len(by_filter) == 1:
        # Every loaded patient has the same filter and the compartment lies within them: no `$or`.
        parts.append(next(iter(by_filter.values()))[0])
        return all_of(*parts)
    for permits, patients in by_filter.values():
        parts.append(any_of({COMPARTMENT: {"$nin": patients}}, permits))
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
    if evaluator.default_permits(resource_type):
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
