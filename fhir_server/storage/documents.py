"""Resource <-> stored MongoDB document (docs/architecture.md).

One collection per resource type holds the current version; `<Type>_history` holds every version.
A stored document (current and history alike):

    _id    resource id (history: "<id>/<vid>")
    rid    resource id (history documents only)
    vid    version id, an int starting at 1
    lu     last updated, a UTC datetime (millisecond precision, as BSON keeps it)
    del    True for the tombstone version written by a delete
    res    the resource JSON (meta.versionId / meta.lastUpdated filled in); None when deleted
    idx    search index values extracted at write time, keyed by SearchParameter code
           (search/registry.py): token -> ["code", "system|code", "system|", "|code"...],
           string -> folded strings, date -> [{"lo": datetime, "hi": datetime}],
           reference -> ["Type/id", absolute URLs...], uri -> strings
    pat    patient compartment: ids of the patients this resource belongs to
    sec    security labels (meta.security, and DocumentReference.securityLabel): "system|code" and "code"
    vis    access keys of the consent rules that read the resource alone (docs/consent.md), so that a consent
           filter can be one field-level `$in` (consent/filter.py): "-" no patient compartment;
           "*" and "*:<compartment as a JSON array>" a compartment, not masked to professionals
           (MASQUE_PS); "author:<reference>" and "author-id:<identifier value>" an author of a live
           DocumentReference with a compartment; "patient:<id>" visible to that compartment patient
           (no INVISIBLE_PATIENT label)
    chg    change marker, an int in commit order (storage/changes.py); set on every version of a
           client-writable type, current and history alike
    cht    change time: the instant the marker was taken, never decreasing along `chg`
    ins    live Patients only, when they hold one: their INS as "system|value" keys (identity_keys),
           under a unique index, so that an INS identifies at most one Patient (current documents
           only; absent from history)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fhir_server.validation.ins import UNIQUE_INS_SYSTEMS

ID = "_id"
RESOURCE_ID = "rid"
VERSION = "vid"
LAST_UPDATED = "lu"
DELETED = "del"
RESOURCE = "res"
INDEX = "idx"
COMPARTMENT = "pat"
SECURITY = "sec"
VISIBILITY = "vis"
CHANGE = "chg"
CHANGE_TIME = "cht"
IDENTITY = "ins"


UNVERSIONED_TYPES = frozenset({"AuditEvent"})
"""Types written once by the server (append-only): their only version lives in the current collection."""


def history_collection(resource_type: str) -> str:
    return f"{resource_type}_history"


def now_utc() -> datetime:
    """Now, truncated to the millisecond precision BSON dates keep, so reads equal writes."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def instant(value: datetime) -> str:
    """FHIR instant text of a stored datetime."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def label_keys(codings: Iterable[Mapping[str, Any]]) -> list[str]:
    keys: list[str] = []
    for coding in codings:
        code = coding.get("code")
        if not code:
            continue
        system = coding.get("system")
        keys.append(code)
        keys.append(f"{system}|{code}" if system else f"|{code}")
    return sorted(set(keys))


def security_labels(resource: Mapping[str, Any]) -> list[str]:
    codings = list((resource.get("meta") or {}).get("security") or [])
    if resource.get("resourceType") == "DocumentReference":
        for concept in resource.get("securityLabel") or []:
            codings.extend(concept.get("coding") or [])
    return label_keys(codings)


def reference_id(reference: Any, resource_type: str) -> str | None:
    """The id in a `Type/id` (or absolute .../Type/id) reference to `resource_type`, else None."""
    if not isinstance(reference, Mapping):
        return None
    text = reference.get("reference")
    if not isinstance(text, str):
        return None
    parts = text.split("/_history/")[0].rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == resource_type and parts[-1]:
        return parts[-1]
    return None


def compartment(resource: Mapping[str, Any]) -> list[str]:
    """Patient ids whose compartment holds this resource."""
    resource_type = resource.get("resourceType")
    ids: list[str | None] = []
    if resource_type == "Patient":
        ids.append(resource.get("id"))
    elif resource_type == "DocumentReference":
        ids.append(reference_id(resource.get("subject"), "Patient"))
    elif resource_type == "Consent":
        ids.append(reference_id(resource.get("patient"), "Patient"))
    elif resource_type == "Binary":
        ids.append(reference_id(resource.get("securityContext"), "Patient"))
    elif resource_type == "List":
        ids.append(reference_id(resource.get("subject"), "Patient"))
    elif resource_type == "AuditEvent":
        for entity in resource.get("entity") or []:
            ids.append(reference_id(entity.get("what"), "Patient"))
        for agent in resource.get("agent") or []:
            ids.append(reference_id(agent.get("who"), "Patient"))
    return sorted({item for item in ids if item})


MASKED_TO_PROFESSIONALS = "MASQUE_PS"
INVISIBLE_TO_PATIENT = "INVISIBLE_PATIENT"
NO_COMPARTMENT_KEY = "-"
OPEN_KEY = "*"


def open_key(patients: Iterable[str]) -> str:
    """The `vis` key of an unmasked resource whose compartment is exactly `patients`."""
    return "*:" + json.dumps(sorted(patients), separators=(",", ":"))


def author_key(reference: str) -> str:
    return f"author:{reference}"


def author_identifier_key(value: str) -> str:
    return f"author-id:{value}"


def patient_key(patient_id: str) -> str:
    return f"patient:{patient_id}"


def _strings_at(value: Any, path: str) -> list[str]:
    """The strings at a dotted path, crossing arrays the way a MongoDB query path does."""
    current = [value]
    for key in path.split("."):
        current = [
            element[key]
            for item in current
            for element in (item if isinstance(item, list) else [item])
            if isinstance(element, Mapping) and key in element
        ]
    found = [v for item in current for v in (item if isinstance(item, list) else [item])]
    return [item for item in found if isinstance(item, str)]


def visibility_keys(resource: Mapping[str, Any], *, deleted: bool = False) -> list[str]:
    """The `vis` keys of one version (module docstring); a deleted version has no author."""
    patients = compartment(resource)
    if not patients:
        return [NO_COMPARTMENT_KEY]
    labels = security_labels(resource)
    keys = [] if INVISIBLE_TO_PATIENT in labels else [patient_key(p) for p in patients]
    if MASKED_TO_PROFESSIONALS not in labels:
        keys.extend((OPEN_KEY, open_key(patients)))
    if not deleted and resource.get("resourceType") == "DocumentReference":
        keys.extend(author_key(v) for v in _strings_at(resource, "author.reference"))
        keys.extend(author_identifier_key(v) for v in _strings_at(resource, "author.identifier.value"))
    return sorted(set(keys))


@dataclass(frozen=True)
class StoredResource:
    """One version of a resource as read from storage."""

    resource_type: str
    id: str
    version: int
    last_updated: datetime
    deleted: bool
    resource: dict[str, Any] | None
    compartment: tuple[str, ...]
    security: tuple[str, ...]
    index: Mapping[str, Any]

    @classmethod
    def from_document(cls, resource_type: str, document: Mapping[str, Any]) -> StoredResource:
        return cls(
            resource_type=resource_type,
            id=document.get(RESOURCE_ID) or document[ID],
            version=document[VERSION],
            last_updated=document[LAST_UPDATED],
            deleted=bool(document.get(DELETED)),
            resource=document.get(RESOURCE),
            compartment=tuple(document.get(COMPARTMENT) or ()),
            security=tuple(document.get(SECURITY) or ()),
            index=document.get(INDEX) or {},
        )

    @classmethod
    def prospective(
        cls,
        resource_type: str,
        resource: dict[str, Any],
        *,
        version: int,
        now: datetime,
        index: Mapping[str, Any],
    ) -> StoredResource:
        """A version about to be written, so that access can be decided before anything is stored."""
        return cls(
            resource_type=resource_type,
            id=str(resource.get("id") or ""),
            version=version,
            last_updated=now,
            deleted=False,
            resource=resource,
            compartment=tuple(compartment(resource)),
            security=tuple(security_labels(resource)),
            index=index,
        )

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'

    @property
    def reference(self) -> str:
        return f"{self.resource_type}/{self.id}"


def identity_keys(resource: Mapping[str, Any]) -> list[str]:
    """The INS of a Patient as `system|value` keys (systems of UNIQUE_INS_SYSTEMS, value trimmed)."""
    if resource.get("resourceType") != "Patient":
        return []
    keys = set()
    for identifier in resource.get("identifier") or []:
        if not isinstance(identifier, Mapping):
            continue
        system, value = identifier.get("system"), identifier.get("value")
        if system in UNIQUE_INS_SYSTEMS and isinstance(value, str) and value.strip():
            keys.add(f"{system}|{value.strip()}")
    return sorted(keys)


def to_document(
    resource: dict[str, Any],
    *,
    version: int,
    last_updated: datetime,
    index: Mapping[str, Any],
    deleted: bool = False,
) -> dict[str, Any]:
    """The current-version document; `resource` already carries id and meta."""
    document: dict[str, Any] = {
        ID: resource["id"],
        VERSION: version,
        LAST_UPDATED: last_updated,
        DELETED: deleted,
        RESOURCE: None if deleted else resource,
        INDEX: {} if deleted else dict(index),
        COMPARTMENT: compartment(resource),
        SECURITY: security_labels(resource),
        VISIBILITY: visibility_keys(resource, deleted=deleted),
    }
    identities = [] if deleted else identity_keys(resource)
    if identities:
        document[IDENTITY] = identities
    return document


def to_history_document(current: Mapping[str, Any]) -> dict[str, Any]:
    document = {key: value for key, value in current.items() if key != IDENTITY}
    document[RESOURCE_ID] = current[ID]
    document[ID] = f"{current[ID]}/{current[VERSION]}"
    return document
