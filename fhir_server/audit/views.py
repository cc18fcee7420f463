"""The patient's view of her audit trail: served events never name what she may not read.

https://profiles.ihe.net/ITI/BALP/ (STANDARDS §3); docs/audit.md, "Who reads the trail".

An event about her record (one she did not request herself) may name resources she may not read: a
document labelled INVISIBLE_PATIENT, read by a professional, or its id typed in a professional's
query. Those entities are left out of the event served to her, and the event is labelled REDACTED
(v3-ObservationValue) in `meta.security`. The stored, hash-chained event is never changed: the view is
computed on the way out, from the current state of the resources it names, so a label added after the
event was recorded still hides the resource.

A query entity (the raw request of a search) that names another patient — by id or by identifier,
such as the INS of a professional's `Patient?identifier=<hers>,<another's>` — is left out the same
way: her copy of an event never carries another patient's identity.

Events she requested herself are served whole: they name only what she typed or was served, and
redacting them would tell an existing hidden resource from an unknown id (balp.py keeps her own
requests about other records out of her compartment).
"""

from __future__ import annotations

import base64
import binascii
import copy
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

REDACTED_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
REDACTED_CODING = {"system": REDACTED_SYSTEM, "code": "REDACTED", "display": "redacted"}
_TOKEN = re.compile(r"[A-Za-z0-9\-.]{1,64}")

Readable = Callable[[str, Sequence[str]], Awaitable[set[str]]]
"""Of these ids of one resource type, those the patient may read now (current version)."""
Hidden = Callable[[], Awaitable[set[str]]]
"""Ids of the resources of her compartment that she may not read (INVISIBLE_PATIENT)."""
Foreign = Callable[[str], Awaitable[bool]]
"""Whether a recorded query (decoded: method and target) names a patient other than her."""


@dataclass(frozen=True)
class PatientView:
    """What the patient may see, for one page of events."""

    patient_id: str
    unreadable: frozenset[str]
    """References (`Type/id`) named by the events that she may not read."""
    hidden_ids: frozenset[str]
    """Ids she may not read, which no query entity shown to her may contain."""
    foreign_queries: frozenset[str] = frozenset()
    """Query entities (base64, as stored) that name another patient: never shown to her."""

    def show(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """The event as served to her: unchanged when she requested it or it names nothing hidden."""
        served = copy.deepcopy(dict(event))
        if requested_by(event, self.patient_id):
            return served
        entities = served.get("entity") or []
        kept = [entity for entity in entities if not self._hides(entity)]
        if len(kept) == len(entities):
            return served
        if kept:
            served["entity"] = kept
        else:
            served.pop("entity", None)
        meta = served.setdefault("meta", {})
        meta["security"] = [*(meta.get("security") or []), dict(REDACTED_CODING)]
        return served

    def _hides(self, entity: Mapping[str, Any]) -> bool:
        reference = _reference(entity)
        if reference is not None and reference in self.unreadable:
            return True
        query = entity.get("query")
        if not isinstance(query, str):
            return False
        return query in self.foreign_queries or bool(_query_tokens(query) & self.hidden_ids)


def requested_by(event: Mapping[str, Any], patient_id: str) -> bool:
    """The requestor agent of the event is this patient (by reference)."""
    reference = f"Patient/{patient_id}"
    return any(
        agent.get("requestor") is True and (agent.get("who") or {}).get("reference") == reference
        for agent in event.get("agent") or []
        if isinstance(agent, Mapping)
    )


def named_references(events: Iterable[Mapping[str, Any]], patient_id: str) -> dict[str, set[str]]:
    """Per resource type, the ids named by the entities of the events she did not request."""
    named: dict[str, set[str]] = {}
    for event in events:
        if requested_by(event, patient_id):
            continue
        for entity in event.get("entity") or []:
            reference = _reference(entity) if isinstance(entity, Mapping) else None
            if reference is not None:
                resource_type, _, resource_id = reference.partition("/")
                named.setdefault(resource_type, set()).add(resource_id)
    return named


async def patient_view(
    events: Sequence[Mapping[str, Any]],
    patient_id: str,
    *,
    types: Iterable[str],
    readable: Readable,
    hidden: Hidden,
    foreign: Foreign,
) -> PatientView:
    """The view of `events` for the patient: references of `types` are looked up, others never shown;
    a query entity naming another patient (by id or identifier, such as an INS) is left out."""
    known = set(types)
    unreadable: set[str] = set()
    for resource_type, ids in named_references(events, patient_id).items():
        visible = await readable(resource_type, sorted(ids)) if resource_type in known else set()
        unreadable.update(f"{resource_type}/{item}" for item in ids - visible)
    hidden_ids = await hidden() if events else set()
    hidden_ids |= {reference.partition("/")[2] for reference in unreadable}
    foreign_queries = {query for query in _queries(events, patient_id) if await foreign(_decoded(query))}
    return PatientView(patient_id, frozenset(unreadable), frozenset(hidden_ids), frozenset(foreign_queries))


def _queries(events: Iterable[Mapping[str, Any]], patient_id: str) -> set[str]:
    """The query entities of the events she did not request."""
    return {
        entity["query"]
        for event in events
        if not requested_by(event, patient_id)
        for entity in event.get("entity") or []
        if isinstance(entity, Mapping) and isinstance(entity.get("query"), str)
    }


def _reference(entity: Mapping[str, Any]) -> str | None:
    """`Type/id` of an entity's `what.reference` (version dropped), or None."""
    what = entity.get("what")
    text = what.get("reference") if isinstance(what, Mapping) else None
    if not isinstance(text, str) or "/" not in text:
        return None
    parts = text.split("/_history/")[0].split("/")
    return f"{parts[-2]}/{parts[-1]}" if len(parts) >= 2 and parts[-2] and parts[-1] else None


def _decoded(query: str) -> str:
    """The text of a base64 query entity; empty when it is not base64."""
    try:
        return base64.b64decode(query, validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return ""


def _query_tokens(query: str) -> set[str]:
    """The id-shaped tokens of a base64 query entity (an id it names is one of them)."""
    return set(_TOKEN.findall(unquote(_decoded(query))))
