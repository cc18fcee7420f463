"""Resource <-> stored MongoDB document (docs/architecture.md): the layout, no I/O.

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
    vis    access keys of the consent rules that read the resource alone (record/visibility.py)
    chg    change marker, an int in commit order (storage/changes.py); set on every version of a
           client-writable type, current and history alike
    cht    change time: the instant the marker was taken, never decreasing along `chg`
    ins    live Patients only, when they hold one: their INS as "system|value" keys (identity_keys),
           under a unique index, so that an INS identifies at most one Patient (current documents
           only; absent from history)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fhir_server.fhir.compartment import compartment
from fhir_server.fhir.ins import UNIQUE_INS_SYSTEMS
from fhir_server.record.visibility import security_labels, visibility_keys

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
