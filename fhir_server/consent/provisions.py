"""Consent resources compiled for one request: applicability and the request-side criteria resolved.

The criteria that depend only on the request (actor, action, purpose, period) are decided once here;
the criteria that depend on the data (class, code, securityLabel, dataPeriod, data) are kept as values
that `evaluate.py` checks on one stored resource and `filter.py` turns into a MongoDB filter.
http://hl7.org/fhir/R4/consent.html#provision, docs/tokens.md, docs/consent.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fhir_server.auth.principal import Coding, Principal
from fhir_server.consent.codes import (
    CONFIDENTIALITY_ORDER,
    CONFIDENTIALITY_SYSTEM,
    CONSENT_ACTION_SYSTEM,
    CONSENT_SCOPE_SYSTEM,
    PATIENT_PRIVACY,
    RESOURCE_TYPES_SYSTEM,
    covers,
    is_break_the_glass,
    purpose_covers,
)
from fhir_server.consent.periods import aware, period_bounds
from fhir_server.fhir.references import reference_id

INSTANCE = "instance"
RELATED = "related"
DEPENDENTS = "dependents"
AUTHORED_BY = "authoredby"


@dataclass(frozen=True)
class Label:
    """One `provision.securityLabel`: a confidentiality level (high-water mark) or an exact label key."""

    level: int | None = None
    """Index in CONFIDENTIALITY_ORDER: covers resources whose highest level is at most this one."""
    key: str | None = None
    """`system|code` (or `code` when the provision states no system), looked up in the stored labels."""


@dataclass(frozen=True)
class DataItem:
    """One `provision.data`: a meaning and the referenced resource."""

    meaning: str
    target_type: str
    target_id: str
    references: frozenset[str]
    """The literal reference text and its relative `Type/id` form: what a resource's reference must equal."""


@dataclass(frozen=True)
class Provision:
    path: str
    deny: bool
    """`type` is deny, or absent (fail closed: R4 and PCF require it)."""
    request_match: bool
    """actor, action, purpose and period all match the request (and every stated element is usable)."""
    explicit_btg_deny: bool
    """A deny provision whose purpose names BTG itself: the patient refuses break-the-glass."""
    classes: frozenset[str] | None
    codes: tuple[Coding, ...] | None
    labels: tuple[Label, ...] | None
    data_period: tuple[datetime, datetime] | None
    data: tuple[DataItem, ...] | None
    provisions: tuple[Provision, ...]


@dataclass(frozen=True)
class CompiledConsent:
    reference: str
    root: Provision


@dataclass(frozen=True)
class RequestSide:
    """What the request brings to actor/action/purpose/period matching."""

    principal: Principal
    action: str
    now: datetime
    groups: Mapping[str, Mapping[str, Any]]


def relative_reference(text: str) -> str:
    """`Type/id` of a relative or absolute literal reference (history suffix dropped); else the text."""
    parts = text.split("/_history/")[0].rstrip("/").split("/")
    return f"{parts[-2]}/{parts[-1]}" if len(parts) >= 2 and parts[-2] and parts[-1] else text


def consent_patient(consent: Mapping[str, Any]) -> str | None:
    return reference_id(consent.get("patient"), "Patient")


def is_applicable(consent: Mapping[str, Any], patient_id: str) -> bool:
    """status active, scope patient-privacy, about this patient, with a root provision (docs/consent.md).

    The root `provision.period` is a request criterion of the root: outside it the consent says nothing.
    """
    if consent.get("resourceType", "Consent") != "Consent" or consent.get("status") != "active":
        return False
    if not isinstance(consent.get("provision"), Mapping) or consent_patient(consent) != patient_id:
        return False
    scope = consent.get("scope")
    codings = scope.get("coding") if isinstance(scope, Mapping) else None
    return any(
        isinstance(coding, Mapping)
        and coding.get("code") == PATIENT_PRIVACY
        and coding.get("system") in (None, CONSENT_SCOPE_SYSTEM)
        for coding in codings or ()
    )


def compile_consents(
    consents: Iterable[Mapping[str, Any]], patient_id: str, side: RequestSide
) -> tuple[CompiledConsent, ...]:
    """The applicable consents of one patient, compiled for this request, in the given order."""
    return tuple(
        CompiledConsent(
            f"Consent/{consent.get('id')}",
            _provision(
                consent["provision"],
                f"Consent/{consent.get('id')}#provision",
                side,
                _contained_groups(consent),
            ),
        )
        for consent in consents
        if is_applicable(consent, patient_id)
    )


def referenced_groups(consents: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """References of the Group actors (not contained) that the consents name: the caller loads them."""
    found: set[str] = set()
    for consent in consents:
        pending = [consent.get("provision")]
        while pending:
            provision = pending.pop()
            if not isinstance(provision, Mapping):
                continue
            for actor in _list(provision.get("actor")):
                text = _reference_text(actor.get("reference"))
                if text and not text.startswith("#") and relative_reference(text).startswith("Group/"):
                    found.add(text)
            pending.extend(_list(provision.get("provision")))
    return frozenset(found)


def _provision(
    element: Mapping[str, Any], path: str, side: RequestSide, contained: Mapping[str, Mapping[str, Any]]
) -> Provision:
    deny = element.get("type") != "permit"
    purposes = _optional(element, "purpose")
    period = element.get("period")
    bounds = period_bounds(period) if period is not None else None
    data_period = element.get("dataPeriod")
    data_bounds = period_bounds(data_period) if data_period is not None else None
    request_match = (
        _optional_matches(element, "actor", lambda a: _actor_matches(a, side, contained))
        and _optional_matches(element, "action", lambda c: _action_matches(c, side.action))
        and (purposes is None or any(_purpose_matches(p, side.principal) for p in purposes))
        and (period is None or (bounds is not None and bounds[0] <= aware(side.now) <= bounds[1]))
        and (data_period is None or data_bounds is not None)
    )
    nested = element.get("provision")
    return Provision(
        path=path,
        deny=deny,
        request_match=request_match,
        explicit_btg_deny=deny and any(is_break_the_glass(p) for p in purposes or ()),
        classes=_classes(element),
        codes=_codes(element),
        labels=_labels(element),
        data_period=None if data_bounds == _UNBOUNDED else data_bounds,
        data=_data(element),
        provisions=tuple(
            _provision(child, f"{path}.provision[{index}]", side, contained)
            for index, child in enumerate(nested if isinstance(nested, list) else ())
            if isinstance(child, Mapping)
        ),
    )


_UNBOUNDED = period_bounds({})


def _list(value: Any) -> list[Mapping[str, Any]]:
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def _optional(element: Mapping[str, Any], name: str) -> list[Mapping[str, Any]] | None:
    """The items of a repeating element, or None when it is absent (absent does not constrain)."""
    value = element.get(name)
    if value is None or value == []:
        return None
    return _list(value)


def _optional_matches(element: Mapping[str, Any], name: str, test: Any) -> bool:
    items = _optional(element, name)
    return items is None or any(test(item) for item in items)


def _codings(concept: Any) -> list[Mapping[str, Any]]:
    return _list(concept.get("coding")) if isinstance(concept, Mapping) else []


def _action_matches(concept: Mapping[str, Any], action: str) -> bool:
    return any(
        coding.get("code") == action and coding.get("system") in (None, CONSENT_ACTION_SYSTEM)
        for coding in _codings(concept)
    )


def _purpose_matches(coding: Mapping[str, Any], principal: Principal) -> bool:
    return any(purpose_covers(coding, purpose) for purpose in principal.purpose_of_use)


def _reference_text(reference: Any) -> str | None:
    text = reference.get("reference") if isinstance(reference, Mapping) else None
    return text if isinstance(text, str) and text else None


def _contained_groups(consent: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {
        f"#{item['id']}": item
        for item in _list(consent.get("contained"))
        if item.get("resourceType") == "Group" and isinstance(item.get("id"), str)
    }


def _actor_matches(
    actor: Mapping[str, Any], side: RequestSide, contained: Mapping[str, Mapping[str, Any]]
) -> bool:
    principal = side.principal
    reference = actor.get("reference")
    if not isinstance(reference, Mapping):
        return False
    text = _reference_text(reference)
    if text is not None:
        if text.startswith("#"):
            return _group_member(contained.get(text), principal)
        target = relative_reference(text)
        if principal.fhir_user is not None and target == principal.fhir_user:
            return True
        if target.startswith("Group/"):
            return _group_member(side.groups.get(text) or side.groups.get(target), principal)
        organization = principal.organization_id
        if organization and target.startswith("Organization/"):
            if text == organization or target in (
                f"Organization/{organization}",
                relative_reference(organization),
            ):
                return True
        if principal.is_system and target == f"Device/{principal.client_id}":
            return True
    return _identifier_matches(reference, principal)


def _identifier_matches(reference: Mapping[str, Any], principal: Principal) -> bool:
    identifier = reference.get("identifier")
    if not isinstance(identifier, Mapping) or not identifier.get("value"):
        return False
    value, system = identifier["value"], identifier.get("system")
    kind = reference.get("type")
    if kind in (None, "Practitioner", "PractitionerRole") and value == principal.national_provider_identifier:
        return True
    organization = principal.organization_id
    if kind in (None, "Organization") and organization and organization in (value, f"{system}|{value}"):
        return True
    return principal.is_system and kind in (None, "Device") and value == principal.client_id


def _group_member(group: Mapping[str, Any] | None, principal: Principal) -> bool:
    """Listed as a member, or holding a profession that satisfies every characteristic of the Group."""
    if not isinstance(group, Mapping) or group.get("resourceType") != "Group" or group.get("active") is False:
        return False
    for member in _list(group.get("member")):
        text = _reference_text(member.get("entity"))
        if text and member.get("inactive") is not True and relative_reference(text) == principal.fhir_user:
            return True
    characteristics = _list(group.get("characteristic"))
    if not characteristics:
        return False
    for characteristic in characteristics:
        if "valueCodeableConcept" in characteristic:
            codings = _codings(characteristic["valueCodeableConcept"])
        elif characteristic.get("valueBoolean") is True:
            codings = _codings(characteristic.get("code"))
        else:
            codings = []
        held = any(covers(Coding.from_json(c), role) for c in codings for role in principal.roles)
        if held == (characteristic.get("exclude") is True):
            return False
    return True


def _classes(element: Mapping[str, Any]) -> frozenset[str] | None:
    items = _optional(element, "class")
    if items is None:
        return None
    return frozenset(
        c["code"]
        for c in items
        if isinstance(c.get("code"), str) and c.get("system") in (None, RESOURCE_TYPES_SYSTEM)
    )


def _codes(element: Mapping[str, Any]) -> tuple[Coding, ...] | None:
    items = _optional(element, "code")
    if items is None:
        return None
    return tuple(
        Coding(c.get("system"), c["code"])
        for concept in items
        for c in _codings(concept)
        if isinstance(c.get("code"), str)
    )


def _labels(element: Mapping[str, Any]) -> tuple[Label, ...] | None:
    items = _optional(element, "securityLabel")
    if items is None:
        return None
    labels: list[Label] = []
    for coding in items:
        code, system = coding.get("code"), coding.get("system")
        if not isinstance(code, str) or not code:
            continue
        if system == CONFIDENTIALITY_SYSTEM and code in CONFIDENTIALITY_ORDER:
            labels.append(Label(level=CONFIDENTIALITY_ORDER.index(code)))
        else:
            labels.append(Label(key=f"{system}|{code}" if system else code))
    return tuple(labels)


def _data(element: Mapping[str, Any]) -> tuple[DataItem, ...] | None:
    items = _optional(element, "data")
    if items is None:
        return None
    data: list[DataItem] = []
    for item in items:
        text = _reference_text(item.get("reference"))
        meaning = item.get("meaning")
        if text is None or meaning not in (INSTANCE, RELATED, DEPENDENTS, AUTHORED_BY):
            continue
        target = relative_reference(text)
        target_type, _, target_id = target.partition("/")
        if target_id:
            data.append(DataItem(meaning, target_type, target_id, frozenset({text, target})))
    return tuple(data)
