"""IHE MHD ITI-65 Provide Document Bundle: what a transaction Bundle must satisfy beyond FHIR.

https://profiles.ihe.net/ITI/MHD/ITI-65.html (STANDARDS §5.1). Checked after the Bundle's local
references are rewritten to the ids the server assigns, before anything is written:
- every DocumentReference attachment pointing at a Binary of the Bundle has the `size` and `hash`
  (SHA-1 of the raw bytes, base64) of that Binary's content, when it states them (any transaction);
  the first DocumentReference of the Bundle that points at a Binary of the Bundle owns it: the server
  binds them (`InteractionContext.bindings`), and the write sets `Binary.securityContext` from that
  binding alone (consent/binary.py);
- in an ITI-65 Bundle: one SubmissionSet List, at least one DocumentReference, every attachment
  that designates a Binary of this server designates one of the Bundle, and the SubmissionSet,
  Folders and DocumentReferences are about one patient;
- a DocumentReference with `relatesTo.code = replaces` supersedes its target: unless the Bundle
  writes that target itself, the transaction also patches its status from `current` to `superseded`.
A failed check refuses the whole Bundle (422) naming the entry.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fhir_server.fhir.errors import FhirError
from fhir_server.fhir.references import reference_id
from fhir_server.fhir.resources import BINARY, DOCUMENT_REFERENCE, LIST
from fhir_server.interactions.binary_access import local_binary
from fhir_server.interactions.context import InteractionContext
from fhir_server.storage.binaries import decode_data

PROVIDE_DOCUMENT_BUNDLE = "ITI-65"
MHD_LIST_TYPES = "https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes"
SUBMISSION_SET = "submissionset"
FOLDER = "folder"
PROVIDE_BUNDLE_PROFILE_PREFIX = "https://profiles.ihe.net/ITI/MHD/StructureDefinition/IHE.MHD."
WRITES = ("POST", "PUT")
SUPERSEDE: list[dict[str, Any]] = [
    {"op": "test", "path": "/status", "value": "current"},
    {"op": "replace", "path": "/status", "value": "superseded"},
]
"""The JSON Patch applied to a replaced DocumentReference (only a current document can be replaced)."""


class BundleEntry(Protocol):
    """What these checks read of a transaction entry (interactions/transaction.py `Entry`)."""

    index: int
    method: str
    resource_type: str
    resource_id: str | None
    resource: dict[str, Any] | None
    ctx: InteractionContext

    @property
    def expression(self) -> str: ...


@dataclass(frozen=True)
class Replacement:
    """Entry `index` replaces DocumentReference `target` (an id)."""

    index: int
    target: str


def is_provide_bundle(bundle: Mapping[str, Any]) -> bool:
    """An ITI-65 Bundle: an IHE.MHD.*ProvideBundle profile, or a SubmissionSet List among its entries."""
    profiles = (bundle.get("meta") or {}).get("profile") or []
    if any(
        isinstance(p, str) and p.startswith(PROVIDE_BUNDLE_PROFILE_PREFIX) and "ProvideBundle" in p
        for p in profiles
    ):
        return True
    return any(
        list_kind((entry or {}).get("resource") or {}) == SUBMISSION_SET
        for entry in bundle.get("entry") or []
    )


def list_kind(resource: Mapping[str, Any]) -> str | None:
    """`submissionset` or `folder` for an MHD List, else None."""
    if resource.get("resourceType") != LIST:
        return None
    for coding in (resource.get("code") or {}).get("coding") or []:
        if coding.get("system") == MHD_LIST_TYPES and coding.get("code") in (SUBMISSION_SET, FOLDER):
            return str(coding["code"])
    return None


def binary_contents(entries: Sequence[BundleEntry]) -> dict[str, bytes]:
    """The decoded content of each Binary the Bundle writes, by its reference `Binary/<id>`."""
    return {
        reference: decode_data(entry.resource or {}, expression=f"{entry.expression}.resource.data")
        for reference, entry in _binaries(entries).items()
    }


def _binaries(entries: Sequence[BundleEntry]) -> dict[str, BundleEntry]:
    """The entries that write a Binary, by the Binary's reference `Binary/<id>`."""
    return {
        f"{BINARY}/{(entry.resource or {}).get('id') or entry.resource_id}": entry
        for entry in _written(entries, BINARY)
    }


def check_attachments(
    entries: Sequence[BundleEntry], contents: Mapping[str, bytes], *, base_url: str, provide_bundle: bool
) -> dict[str, set[str]]:
    """Size and hash of every attachment against the Bundle's Binary it points to, and each such
    Binary bound to the first DocumentReference pointing at it (module docstring).

    Returns, for each Binary of the Bundle a DocumentReference points to, the patients of those
    documents: whose record the Binary's content belongs to (its AuditEvent names them).
    """
    owners: dict[str, set[str]] = {}
    binaries = _binaries(entries)
    for entry in _written(entries, DOCUMENT_REFERENCE):
        resource = entry.resource or {}
        document = f"{DOCUMENT_REFERENCE}/{resource.get('id') or entry.resource_id}"
        for position, content in enumerate(resource.get("content") or []):
            attachment = content.get("attachment") or {}
            path = f"{entry.expression}.resource.content[{position}].attachment"
            url = attachment.get("url")
            target = local_binary(url, base_url) if isinstance(url, str) else None
            if target is None:
                continue
            data = contents.get(target)
            if target in binaries and target not in binaries[target].ctx.bindings:
                binaries[target].ctx.bindings[target] = document
                entry.ctx.bindings[target] = document
            if data is None:
                if provide_bundle:
                    raise _invalid(
                        entry,
                        f"attachment.url {url} designates a Binary that is not in the Bundle",
                        f"{path}.url",
                    )
                continue
            patient = reference_id(resource.get("subject"), "Patient")
            owners.setdefault(target, set()).update([patient] if patient else [])
            if "size" in attachment and attachment["size"] != len(data):
                raise _invalid(
                    entry,
                    f"attachment.size {attachment['size']} differs from the {len(data)} bytes of {target}",
                    f"{path}.size",
                )
            expected = base64.b64encode(hashlib.sha1(data).digest()).decode("ascii")
            if "hash" in attachment and attachment["hash"] != expected:
                raise _invalid(
                    entry,
                    f"attachment.hash {attachment['hash']} is not the SHA-1 of {target} ({expected})",
                    f"{path}.hash",
                )
    return owners


def check_provide_bundle(entries: Sequence[BundleEntry]) -> None:
    """The composition and single patient of an ITI-65 Bundle."""
    submission_sets = [
        entry for entry in _written(entries, LIST) if list_kind(entry.resource or {}) == SUBMISSION_SET
    ]
    if len(submission_sets) != 1:
        raise FhirError.of(
            422,
            "invalid",
            f"An ITI-65 Bundle has exactly one SubmissionSet List, not {len(submission_sets)}",
            expression=tuple(f"{entry.expression}.resource" for entry in submission_sets)
            or ("Bundle.entry",),
        )
    if not _written(entries, DOCUMENT_REFERENCE):
        raise FhirError.of(
            422,
            "required",
            "An ITI-65 Provide Document Bundle has at least one DocumentReference",
            expression=("Bundle.entry",),
        )
    patient: str | None = None
    for entry in entries:
        resource = entry.resource or {}
        if entry.method not in WRITES or not (
            entry.resource_type == DOCUMENT_REFERENCE or list_kind(resource) is not None
        ):
            continue
        subject = reference_id(resource.get("subject"), "Patient")
        if patient is None:
            patient = subject
        elif subject != patient:
            raise _invalid(
                entry,
                f"The subject Patient/{subject} differs from Patient/{patient} of the rest of the submission",
                f"{entry.expression}.resource.subject",
            )


def replacements(entries: Sequence[BundleEntry]) -> list[Replacement]:
    """The DocumentReferences that written documents replace and that the Bundle does not write itself."""
    written = {entry.resource_id for entry in entries if entry.resource_type == DOCUMENT_REFERENCE}
    written |= {str((entry.resource or {}).get("id")) for entry in _written(entries, DOCUMENT_REFERENCE)}
    found: list[Replacement] = []
    for entry in _written(entries, DOCUMENT_REFERENCE):
        for relation in (entry.resource or {}).get("relatesTo") or []:
            target = reference_id(relation.get("target"), DOCUMENT_REFERENCE)
            if relation.get("code") == "replaces" and target is not None and target not in written:
                found.append(Replacement(entry.index, target))
                written.add(target)
    return found


def _written(entries: Sequence[BundleEntry], resource_type: str) -> list[BundleEntry]:
    return [
        entry
        for entry in entries
        if entry.method in WRITES and entry.resource_type == resource_type and entry.resource is not None
    ]


def _invalid(entry: BundleEntry, message: str, expression: str) -> FhirError:
    return FhirError.of(
        422,
        "invalid",
        f"{entry.expression} ({entry.method} {entry.resource_type}): {message}",
        expression=(expression,),
    )
