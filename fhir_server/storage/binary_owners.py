"""Start-up migration: give each Binary stored before ownership existed its owning document.

A Binary's access is its owning DocumentReference's (consent/binary.py, docs/consent.md), named in
`Binary.securityContext` by the server. Binaries written by earlier versions have no owner and no
recorded uploader (their `securityContext`, if any, names a Patient and was the client's). At every
start the server looks for them and gives each the first DocumentReference (oldest `lastUpdated`,
then id) whose attachment designates it, as a new Binary version written in a transaction.

- Idempotent: a Binary with a DocumentReference owner, or written by this version (it records its
  uploader), is never selected again; a concurrent change is detected in the transaction.
- Bounded: one cursor over the legacy Binaries only, read in batches; one small transaction each.
- Logged: how many were examined and given an owner; the ones no document designates stay ownerless
  and without an uploader, so nobody reaches them (fail closed), and are examined again next start.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pymongo.asynchronous.client_session import AsyncClientSession

from fhir_server.consent.binary import UPLOADER_EXTENSION, owner_id, uploader, with_ownership
from fhir_server.consent.model import Decision
from fhir_server.fhir.instants import now_utc
from fhir_server.fhir.resources import BINARY, DOCUMENT_REFERENCE
from fhir_server.record import documents as doc
from fhir_server.record.documents import StoredResource
from fhir_server.storage.repository import Repository

log = logging.getLogger("fhir_server.migration")

LEGACY: Mapping[str, Any] = {
    f"{doc.RESOURCE}.securityContext.reference": {"$not": re.compile(f"^{DOCUMENT_REFERENCE}/")},
    f"{doc.RESOURCE}.meta.extension.url": {"$ne": UPLOADER_EXTENSION},
}
"""Live Binaries with no DocumentReference owner and no recorded uploader."""
LOCATION = f"{doc.INDEX}.location"
BATCH = 200


@dataclass(frozen=True)
class MigrationReport:
    examined: int
    owned: int


class _LegacyBinaries:
    """The migration's guard: server maintenance of Binary ownership, never a client's read."""

    def query_filter(self, resource_type: str) -> Mapping[str, Any] | None:
        return LEGACY if resource_type == BINARY else None

    def decide(self, stored: StoredResource) -> Decision:
        legacy = stored.resource_type == BINARY and stored.resource is not None
        return Decision(legacy, "binary-ownership-migration")


async def migrate_binary_owners(repository: Repository, *, base_url: str) -> MigrationReport:
    """Give every legacy Binary its first designating DocumentReference as owner (module docstring)."""
    examined = owned = 0
    async for stored in repository.scan(BINARY, {}, guard=_LegacyBinaries(), batch_size=BATCH):
        examined += 1
        owner = await _first_document(repository, stored.id, base_url)
        if owner is not None and await repository.in_transaction(_owner_setter(repository, stored.id, owner)):
            owned += 1
    if examined:
        log.info(
            "Binary ownership: %d legacy Binaries examined, %d given their DocumentReference, "
            "%d designated by none (reachable by nobody)",
            examined,
            owned,
            examined - owned,
        )
    return MigrationReport(examined, owned)


async def _first_document(repository: Repository, binary_id: str, base_url: str) -> str | None:
    urls = [f"{BINARY}/{binary_id}", f"{base_url}/{BINARY}/{binary_id}"]
    documents = await repository.policy_documents(DOCUMENT_REFERENCE, {LOCATION: {"$in": urls}})
    ranked = sorted(
        (str((d.get("meta") or {}).get("lastUpdated", "")), str(d.get("id")))
        for d in documents
        if d.get("id")
    )
    return ranked[0][1] if ranked else None


def _owner_setter(
    repository: Repository, binary_id: str, owner: str
) -> Callable[[AsyncClientSession], Awaitable[bool]]:
    async def work(session: AsyncClientSession) -> bool:
        current = await repository.current_for_write(BINARY, binary_id, session=session)
        if current is None or current.deleted or current.resource is None:
            return False
        if owner_id(current.resource) is not None or uploader(current.resource) is not None:
            return False
        body = with_ownership(current.resource, owner=owner, uploaded_by=None)
        await repository.save(BINARY, body, previous=current, now=now_utc(), session=session)
        return True

    return work
