"""Who may reach a Binary: the rule of document content (docs/consent.md, "Binary"), pure, no I/O.

A Binary's access is the access to the DocumentReference that owns it. The owner is named in
`Binary.securityContext` and is set by the server only (never taken from a client):
- the DocumentReference of the same transaction Bundle (ITI-65) whose attachment designates it;
- else the first DocumentReference that references a Binary its own client uploaded (the claim).
The uploader (`client_id` and `sub` of the token that created the Binary) is kept in a server-owned
extension of `Binary.meta`. A Binary no document owns is visible only to its uploader.

Read, vread, update, patch, delete and conditional create of a Binary are all decided on the owning
document's current version, with the decision the interaction needs (read, or write). A
DocumentReference may reference a Binary it owns, one it may claim, or one the caller may already
read; referencing never transfers ownership.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any

from fhir_server.auth.principal import Principal
from fhir_server.consent.model import Decision
from fhir_server.fhir.references import reference_id
from fhir_server.fhir.resources import DOCUMENT_REFERENCE

UPLOADER_EXTENSION = "https://fhir-server.example.org/StructureDefinition/binary-uploader"
"""Server-owned `Binary.meta.extension`: the client (`client`) and subject (`subject`) that uploaded it."""

UPLOAD_RULE = "binary-upload"
UPLOADER_RULE = "binary-uploader"
UNOWNED_RULE = "binary-unowned"
OWNER_HIDDEN_RULE = "binary-owner-hidden"


class Reference(Enum):
    """Why a DocumentReference may designate a Binary in its attachment."""

    OWNED = "owned"
    """The Binary is already this document's content."""
    CLAIM = "claim"
    """Nobody owns it and the caller uploaded it: the document becomes its owner."""
    READABLE = "readable"
    """Owned elsewhere (or unowned) and readable by the caller: referenced, ownership unchanged."""


def owner_id(binary: Mapping[str, Any] | None) -> str | None:
    """The id of the DocumentReference that owns this Binary resource, None when no document does."""
    if binary is None:
        return None
    return reference_id(binary.get("securityContext"), DOCUMENT_REFERENCE)


def uploader_of(principal: Principal) -> tuple[str, str]:
    """The uploader identity of a caller: its client and its subject."""
    return principal.client_id, principal.subject


def uploader(binary: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """The recorded uploader of a Binary resource (None when none was recorded)."""
    meta = (binary or {}).get("meta")
    if not isinstance(meta, Mapping):
        return None
    for extension in meta.get("extension") or []:
        if not isinstance(extension, Mapping) or extension.get("url") != UPLOADER_EXTENSION:
            continue
        parts = {item.get("url"): item.get("valueString") for item in extension.get("extension") or []}
        client, subject = parts.get("client"), parts.get("subject")
        if isinstance(client, str) and isinstance(subject, str) and client and subject:
            return client, subject
    return None


def is_uploader(principal: Principal, binary: Mapping[str, Any] | None) -> bool:
    """True when `principal` uploaded this Binary; an empty client or subject never matches."""
    recorded = uploader(binary)
    return recorded is not None and recorded == uploader_of(principal)


def with_ownership(
    binary: Mapping[str, Any], *, owner: str | None, uploaded_by: tuple[str, str] | None
) -> dict[str, Any]:
    """The Binary with the server's ownership fields, whatever the client sent in their place.

    `owner`: DocumentReference id (or None); `uploaded_by`: (client, subject), or None to record none.
    """
    body = {key: value for key, value in binary.items() if key != "securityContext"}
    meta = dict(body.get("meta") or {})
    extensions = [e for e in meta.get("extension") or [] if (e or {}).get("url") != UPLOADER_EXTENSION]
    if uploaded_by is not None:
        client, subject = uploaded_by
        extensions.append(
            {
                "url": UPLOADER_EXTENSION,
                "extension": [
                    {"url": "client", "valueString": client},
                    {"url": "subject", "valueString": subject},
                ],
            }
        )
    if extensions:
        meta["extension"] = extensions
    else:
        meta.pop("extension", None)
    if meta:
        body["meta"] = meta
    else:
        body.pop("meta", None)
    if owner is not None:
        body["securityContext"] = {"reference": f"{DOCUMENT_REFERENCE}/{owner}"}
    return body


def decide_binary(principal: Principal, binary: Mapping[str, Any] | None, owner: Decision | None) -> Decision:
    """The decision on a Binary, given its current resource and the decision on its owner.

    `binary`: the Binary's current version (None when it is deleted or unknown: nobody reaches it);
    `owner`: the decision, for the interaction asked, on the owning DocumentReference's current
    version (None when that document does not exist or was not loaded).
    """
    if binary is None:
        return Decision.deny(UNOWNED_RULE)
    if owner_id(binary) is not None:
        if owner is None or not owner.permit:
            return Decision.deny(
                owner.rule if owner is not None else OWNER_HIDDEN_RULE,
                consents=owner.consents if owner is not None else (),
            )
        return owner
    if is_uploader(principal, binary):
        return Decision.allow(UPLOADER_RULE)
    return Decision.deny(UNOWNED_RULE)


def decide_binary_create() -> Decision:
    """Uploading content is open to whoever holds a Binary create scope: a new Binary is reachable
    only by its uploader until a document it belongs to owns it."""
    return Decision.allow(UPLOAD_RULE)


def may_reference(
    principal: Principal, binary: Mapping[str, Any] | None, document_id: str, read: Decision
) -> Reference | None:
    """Whether DocumentReference `document_id` may designate this Binary (module docstring).

    `binary`: its current version (None: deleted or unknown); `read`: the caller's read decision on
    the Binary (decide_binary). None means refused, and is the same answer for an unknown Binary.
    """
    if binary is None:
        return None
    owner = owner_id(binary)
    if owner == document_id:
        return Reference.OWNED
    if owner is None and is_uploader(principal, binary):
        return Reference.CLAIM
    if read.permit:
        return Reference.READABLE
    return None
