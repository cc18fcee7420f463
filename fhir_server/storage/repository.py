"""The guarded async repository: versioned writes in transactions, reads only through a guard.

Every read of a clinical collection takes an `AccessGuard` (or a `GuardProvider` when the patient is
only known once the document is found): docs/architecture.md I1. Each write stores the new current document
and
its history entry in one MongoDB transaction, together with whatever else the caller writes in the
same session (the AuditEvent of docs/architecture.md I2).
https://hl7.org/fhir/R4/http.html
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, TypeVar

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError

from fhir_server.consent.model import Decision
from fhir_server.fhir.errors import AuditUnavailable, FhirError, conflict, gone, not_found, unavailable
from fhir_server.fhir.instants import instant, now_utc
from fhir_server.fhir.resources import PATIENT
from fhir_server.record import documents as doc
from fhir_server.record.documents import StoredResource
from fhir_server.record.filters import conjunction
from fhir_server.storage import changes, conditions
from fhir_server.storage.binaries import BinaryStore
from fhir_server.storage.changes import Horizon, Written
from fhir_server.storage.exports import JobStore
from fhir_server.storage.guard import AccessGuard, GuardProvider, guarded_filter

log = logging.getLogger("fhir_server")
IDENTITY_INDEX = "ins_unique"
"""The unique index on the `ins` keys of live Patients (record/documents.py)."""

IndexExtractor = Callable[[Mapping[str, Any]], Mapping[str, Any]]
T = TypeVar("T")

TRANSACTION_RETRY_SECONDS = 20.0
"""How long a transaction is rerun on transient conflicts. Concurrent writes to one patient's record
contend on its audit chain head (audit/sink.py): each rerun waits a jittered, capped backoff."""
BACKOFF_BASE = 0.002
BACKOFF_CAP = 0.05
COMMIT_ATTEMPTS = 3
"""Commits retried when their outcome is unknown, before the outcome is looked up."""
TRANSIENT = "TransientTransactionError"
UNKNOWN_COMMIT = "UnknownTransactionCommitResult"
LIVE: Mapping[str, Any] = {doc.DELETED: False}


class Repository:
    def __init__(
        self,
        client: AsyncMongoClient[dict[str, Any]],
        database: AsyncDatabase[dict[str, Any]],
        *,
        extract: IndexExtractor,
    ) -> None:
        self._client = client
        self._database = database
        """Private: only the repository reaches clinical collections (docs/architecture.md)."""
        self._extract = extract
        self._written: dict[int, list[Written]] = {}
        self._lane = asyncio.Lock()
        """Reruns of contended transactions, one at a time (`in_transaction`)."""
        """Per open transaction (session id): the versions `save` wrote, stamped before commit."""
        self.binaries = BinaryStore(database)
        """Binary content too large to keep inline (GridFS), see storage/binaries.py."""
        self.exports = JobStore(database)
        """Bulk export jobs and their files (storage/exports.py)."""

    # -- transactions -------------------------------------------------------------------------

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[AsyncClientSession]:
        async with self._client.start_session() as session:
            yield session

    async def in_transaction(self, work: Callable[[AsyncClientSession], Awaitable[T]]) -> T:
        """Run `work` in one multi-document transaction and commit it exactly once.

        A transient error before the commit (a write conflict with a concurrent transaction, a lost
        audit chain head) aborts the attempt and reruns `work`. Reruns go through one FIFO lane per
        process: many writers contending on one document (a patient's audit chain head,
        audit/sink.py) would otherwise keep aborting each other, while in the lane each rerun only
        meets first attempts and gets through, in arrival order. The budget is time, not attempts
        (TRANSACTION_RETRY_SECONDS, waiting in the lane included). A commit whose outcome is unknown
        is never rerun: it is resolved (`_commit`). Every failure is a FhirError, audited as such.
        """
        deadline = time.monotonic() + TRANSACTION_RETRY_SECONDS
        try:
            return await self._attempt(work)
        except PyMongoError as error:
            if not error.has_error_label(TRANSIENT):
                raise _refusal(error, transient=False) from error
            log.debug("transaction rerun in the lane: %r", error)
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self._lane.acquire()
        except TimeoutError as error:
            raise unavailable("Too many concurrent writes to the same records; retry") from error
        try:
            for attempt in itertools.count():
                await asyncio.sleep(random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt)))
                try:
                    return await self._attempt(work)
                except PyMongoError as error:
                    transient = error.has_error_label(TRANSIENT)
                    if not transient or time.monotonic() >= deadline:
                        raise _refusal(error, transient=transient) from error
                    log.debug("transaction rerun (attempt %d): %r", attempt + 2, error)
        finally:
            self._lane.release()
        raise AssertionError("unreachable: the loop returns or raises")

    async def _attempt(self, work: Callable[[AsyncClientSession], Awaitable[T]]) -> T:
        """One run of `work` in a transaction, its versions stamped (storage/changes.py), committed."""
        async with self._session() as session:
            lease: changes.Lease | None = None
            try:
                lease = await changes.open_lease(self._database, now=now_utc())
                await session.start_transaction()
                self._written[id(session)] = []
                result = await work(session)
                await changes.stamp(
                    self._database, lease, self._written[id(session)], now=now_utc(), session=session
                )
                await self._commit(session, lease)
                lease = None
                return result
            finally:
                if session.in_transaction:
                    await session.abort_transaction()
                self._written.pop(id(session), None)
                if lease is not None:
                    await self._release(lease)

    async def _commit(self, session: AsyncClientSession, lease: changes.Lease) -> None:
        """Commit; when the outcome is unknown (the answer was lost), retry the commit itself, which
        commits at most once, and if that cannot be answered either, look the outcome up: the
        transaction deleted its lease (storage/changes.py), so the lease is gone exactly when it
        committed. Its session is killed first (which aborts it if it is still open), and ending the
        lease from outside settles it: a transaction whose lease was deleted can no longer commit.
        Returns when committed; raises a transient error (rerun the work) when it did not commit;
        503 when the outcome cannot be known."""
        for attempt in range(COMMIT_ATTEMPTS):
            try:
                await session.commit_transaction()
                return
            except PyMongoError as error:
                if not error.has_error_label(UNKNOWN_COMMIT):
                    raise
                log.warning("commit outcome unknown (attempt %d): %s", attempt + 1, error)
                await asyncio.sleep(0.01 * 2**attempt)
        try:
            # A commit that never arrived leaves the transaction open on the server, holding its
            # writes (and the lease) until it expires: end it now, then look.
            await self._client.admin.command("killSessions", [session.session_id])
            ended = await changes.settle(self._database, lease, now=now_utc())
        except PyMongoError as error:
            raise unavailable("The database did not say whether the write was committed") from error
        if ended is None:
            raise unavailable("The database did not say in time whether the write was committed")
        if ended:
            raise PyMongoError("the transaction did not commit: rerun it", error_labels=[TRANSIENT])
        log.warning("commit outcome unknown, resolved: the transaction committed")

    async def _release(self, lease: changes.Lease) -> None:
        """The transaction did not commit: stop holding the change horizon back (best effort: a lease
        left behind is reaped when it expires)."""
        try:
            await changes.release(self._database, lease)
        except PyMongoError:
            log.warning("could not release change-marker lease %s; it expires on its own", lease.id)

    # -- writes (inside a transaction) ----------------------------------------------------------

    async def current_for_write(
        self, resource_type: str, resource_id: str, *, session: AsyncClientSession
    ) -> StoredResource | None:
        """The current version (tombstones included) for a write about to replace it.

        Callers decide access on it before writing: it never leaves the server as a response body
        without a decision.
        """
        found = await self._database[resource_type].find_one({doc.ID: resource_id}, session=session)
        return None if found is None else StoredResource.from_document(resource_type, found)

    async def claim_condition(
        self,
        resource_type: str,
        params: Sequence[tuple[str, str]],
        *,
        now: datetime,
        session: AsyncClientSession,
    ) -> None:
        """Claim a conditional write's condition in its transaction (storage/conditions.py): search
        for its matches only after this, and a concurrent claimant aborts or sees this write."""
        key = conditions.condition_key(resource_type, params)
        await conditions.claim(self._database, key, now=now, session=session)

    async def save(
        self,
        resource_type: str,
        resource: dict[str, Any],
        *,
        previous: StoredResource | None,
        now: datetime,
        session: AsyncClientSession,
        deleted: bool = False,
    ) -> StoredResource:
        """Write the next version of `resource` (create when `previous` is None) and its history entry."""
        version = 1 if previous is None else previous.version + 1
        body = dict(resource)
        meta = dict(body.get("meta") or {})
        meta["versionId"] = str(version)
        meta["lastUpdated"] = instant(now)
        body["meta"] = meta
        index = {} if deleted else self._extract(body)
        current = doc.to_document(body, version=version, last_updated=now, index=index, deleted=deleted)
        collection = self._database[resource_type]
        try:
            if previous is None:
                await collection.insert_one(current, session=session)
            else:
                replaced = await collection.replace_one(
                    {doc.ID: previous.id, doc.VERSION: previous.version}, current, session=session
                )
                if replaced.matched_count != 1:
                    raise conflict(f"{resource_type}/{previous.id} was changed by a concurrent write; retry")
        except DuplicateKeyError as error:
            if doc.IDENTITY in ((error.details or {}).get("keyPattern") or {}):
                raise FhirError.of(
                    409, "duplicate", "This INS already identifies another Patient; nothing was written"
                ) from error
            raise
        await self._database[doc.history_collection(resource_type)].insert_one(
            doc.to_history_document(current), session=session
        )
        written = self._written.get(id(session))
        if written is None:
            raise RuntimeError("save runs inside a transaction of in_transaction (change markers)")
        written.append(Written(resource_type, current[doc.ID], version))
        return StoredResource.from_document(resource_type, current)

    # -- guarded reads ------------------------------------------------------------------------

    async def read(
        self,
        resource_type: str,
        resource_id: str,
        *,
        access: GuardProvider,
        version: int | None = None,
        session: AsyncClientSession | None = None,
        observe: Callable[[StoredResource, Decision], None] | None = None,
    ) -> StoredResource:
        """The current (or given) version if the guard permits it: 404 when unknown or hidden, 410 deleted.

        `observe` sees every decision taken, refusals included, so that the AuditEvent can name it.
        """
        if version is None or resource_type in doc.UNVERSIONED_TYPES:
            found = await self._database[resource_type].find_one({doc.ID: resource_id}, session=session)
            if found is not None and version is not None and found[doc.VERSION] != version:
                found = None
        else:
            found = await self._database[doc.history_collection(resource_type)].find_one(
                {doc.ID: f"{resource_id}/{version}"}, session=session
            )
        if found is None:
            raise not_found(resource_type, resource_id)
        stored = StoredResource.from_document(resource_type, found)
        guard = await access.guard(resource_type, patients=stored.compartment)
        decision = guard.decide(stored)
        if observe is not None:
            observe(stored, decision)
        if not decision.permit:
            raise not_found(resource_type, resource_id)
        if stored.deleted and version is None:
            raise gone(resource_type, resource_id)
        return stored

    async def find(
        self,
        resource_type: str,
        query: Mapping[str, Any],
        *,
        guard: AccessGuard,
        sort: Sequence[tuple[str, int]] = (),
        limit: int = 0,
        session: AsyncClientSession | None = None,
    ) -> list[StoredResource]:
        """Live current versions matching `query` AND the guard's filter, each re-checked by `decide`."""
        criteria = guarded_filter(guard, resource_type, {"$and": [LIVE, query]} if query else LIVE)
        cursor = self._database[resource_type].find(
            criteria, sort=list(sort) or None, limit=limit, session=session
        )
        found = [StoredResource.from_document(resource_type, item) async for item in cursor]
        return [stored for stored in found if guard.decide(stored).permit]

    async def find_ids(
        self, resource_type: str, query: Mapping[str, Any], *, guard: AccessGuard
    ) -> list[str]:
        """Ids of permitted live resources matching `query` (chained parameters, `_has`)."""
        criteria = guarded_filter(guard, resource_type, {"$and": [LIVE, query]} if query else LIVE)
        cursor = self._database[resource_type].find(criteria)
        found = [StoredResource.from_document(resource_type, item) async for item in cursor]
        return [stored.id for stored in found if guard.decide(stored).permit]

    async def count(self, resource_type: str, query: Mapping[str, Any], *, guard: AccessGuard) -> int:
        criteria = guarded_filter(guard, resource_type, {"$and": [LIVE, query]} if query else LIVE)
        return int(await self._database[resource_type].count_documents(criteria))

    async def history(
        self,
        resource_type: str,
        *,
        guard: AccessGuard,
        resource_id: str | None = None,
        since: datetime | None = None,
        before: tuple[datetime, str] | None = None,
        limit: int = 0,
    ) -> list[StoredResource]:
        """Versions newest first (keyset on (lu, _id)), each version decided on its own."""
        unversioned = resource_type in doc.UNVERSIONED_TYPES
        conditions: list[Mapping[str, Any]] = []
        if resource_id is not None:
            conditions.append({doc.ID if unversioned else doc.RESOURCE_ID: resource_id})
        if since is not None:
            conditions.append({doc.LAST_UPDATED: {"$gte": since}})
        if before is not None:
            last_updated, key = before
            conditions.append(
                {
                    "$or": [
                        {doc.LAST_UPDATED: {"$lt": last_updated}},
                        {doc.LAST_UPDATED: last_updated, doc.ID: {"$lt": key}},
                    ]
                }
            )
        query: Mapping[str, Any] = {"$and": conditions} if conditions else {}
        criteria = guarded_filter(guard, resource_type, query)
        source = resource_type if unversioned else doc.history_collection(resource_type)
        cursor = self._database[source].find(
            criteria, sort=[(doc.LAST_UPDATED, DESCENDING), (doc.ID, DESCENDING)], limit=limit
        )
        found = [StoredResource.from_document(resource_type, item) async for item in cursor]
        return [stored for stored in found if guard.decide(stored).permit]

    async def changes(
        self,
        resource_type: str,
        *,
        guard: AccessGuard,
        until: int,
        after: int | None = None,
        before: int | None = None,
        since: datetime | None = None,
        descending: bool = False,
        limit: int = 0,
    ) -> list[tuple[int, StoredResource]]:
        """Versions with a change marker in (after, until] (and < before), in marker order, with their
        markers: the change feed (storage/changes.py). Each version is decided on its own."""
        marker: dict[str, Any] = {"$lte": until}
        if after is not None:
            marker["$gt"] = after
        if before is not None:
            marker["$lt"] = before
        conditions: list[Mapping[str, Any]] = [{doc.CHANGE: marker}]
        if since is not None:
            conditions.append({doc.CHANGE_TIME: {"$gte": since}})
        criteria = guarded_filter(guard, resource_type, {"$and": conditions})
        order = DESCENDING if descending else ASCENDING
        cursor = self._database[doc.history_collection(resource_type)].find(
            criteria, sort=[(doc.CHANGE, order)], limit=limit
        )
        found = [
            (item[doc.CHANGE], StoredResource.from_document(resource_type, item)) async for item in cursor
        ]
        return [(mark, stored) for mark, stored in found if guard.decide(stored).permit]

    async def visible_current(
        self, resource_type: str, resource_ids: Sequence[str], *, guard: AccessGuard
    ) -> set[str]:
        """Which of these resources the guard permits in their current version (tombstones included).

        History and the change feed show a version only when its resource's current version is
        visible too: a document masked or hidden today hides its earlier versions (docs/consent.md).
        """
        if not resource_ids:
            return set()
        criteria = guarded_filter(guard, resource_type, {doc.ID: {"$in": sorted(set(resource_ids))}})
        cursor = self._database[resource_type].find(criteria)
        found = [StoredResource.from_document(resource_type, item) async for item in cursor]
        return {stored.id for stored in found if guard.decide(stored).permit}

    async def scan(
        self, resource_type: str, query: Mapping[str, Any], *, guard: AccessGuard, batch_size: int = 1000
    ) -> AsyncIterator[StoredResource]:
        """Permitted live current versions matching `query`, streamed from one cursor (bulk export)."""
        criteria = guarded_filter(guard, resource_type, {"$and": [LIVE, query]} if query else LIVE)
        async for item in self._database[resource_type].find(criteria, batch_size=batch_size):
            stored = StoredResource.from_document(resource_type, item)
            if guard.decide(stored).permit:
                yield stored

    async def compartment_of(self, resource_type: str, resource_id: str) -> tuple[str, ...] | None:
        """The patient compartment of a resource (None when unknown): only to choose which consents apply."""
        found = await self._database[resource_type].find_one(
            {doc.ID: resource_id}, projection={doc.COMPARTMENT: 1}
        )
        return None if found is None else tuple(found.get(doc.COMPARTMENT) or ())

    async def compartments_where(self, resource_type: str, query: Mapping[str, Any]) -> list[tuple[str, ...]]:
        """The patient compartments of the live resources matching `query`: only to choose which
        consents apply (the DocumentReferences that give access to a Binary)."""
        cursor = self._database[resource_type].find(
            {"$and": [LIVE, query]}, projection={doc.COMPARTMENT: 1, doc.ID: 0}
        )
        return [tuple(item.get(doc.COMPARTMENT) or ()) async for item in cursor]

    async def labelled_ids(self, resource_type: str, *, patient: str, label: str) -> set[str]:
        """Ids of current versions in `patient`'s compartment that carry `label`: only so that the
        patient's view of her audit trail leaves out what she may not read (audit/views.py)."""
        cursor = self._database[resource_type].find(
            {doc.COMPARTMENT: patient, doc.SECURITY: label}, projection={doc.ID: 1}
        )
        return {str(item[doc.ID]) async for item in cursor}

    async def policy_documents(self, resource_type: str, query: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Resources the access policy itself reads (Consents, Groups) to decide; never sent to a client."""
        criteria = conjunction([LIVE, query])
        cursor = self._database[resource_type].find(criteria, projection={doc.RESOURCE: 1})
        return [item[doc.RESOURCE] async for item in cursor]

    # -- indexes ------------------------------------------------------------------------------

    async def ensure_indexes(
        self, resource_types: Sequence[str], index_keys: Callable[[str], list[list[tuple[str, int]]]]
    ) -> None:
        for resource_type in resource_types:
            current = self._database[resource_type]
            await current.create_index([(doc.COMPARTMENT, ASCENDING), (doc.LAST_UPDATED, DESCENDING)])
            await current.create_index([(doc.LAST_UPDATED, DESCENDING), (doc.ID, DESCENDING)])
            for keys in index_keys(resource_type):
                await current.create_index(keys)
            history = self._database[doc.history_collection(resource_type)]
            await history.create_index([(doc.RESOURCE_ID, ASCENDING), (doc.VERSION, DESCENDING)])
            await history.create_index([(doc.LAST_UPDATED, DESCENDING), (doc.ID, DESCENDING)])
            await history.create_index([(doc.CHANGE, ASCENDING)])
            await current.create_index([(doc.CHANGE_TIME, ASCENDING)])
        if PATIENT in resource_types:
            await self._ensure_identity_index()
        await changes.ensure_counter(self._database, now=now_utc())

    async def change_horizon(self, *, now: datetime) -> Horizon:
        """The change-feed position below which every change is committed (storage/changes.py)."""
        return await changes.horizon(self._database, now=now)

    async def estimated_count(self, resource_type: str) -> int:
        """The collection's size from its metadata, for progress estimates only (no documents read)."""
        return int(await self._database[resource_type].estimated_document_count())

    async def _ensure_identity_index(self) -> None:
        """The unique index that makes an INS identify at most one Patient, and the `ins` keys of
        Patients stored before it existed. Duplicates already stored cannot be keyed: they are
        logged, and any later write to them is refused until an identity manager resolves them."""
        patients = self._database[PATIENT]
        await patients.create_index(
            [(doc.IDENTITY, ASCENDING)],
            name=IDENTITY_INDEX,
            unique=True,
            partialFilterExpression={doc.IDENTITY: {"$exists": True}},
        )
        unkeyed = {doc.IDENTITY: {"$exists": False}, doc.DELETED: False}
        async for found in patients.find(unkeyed, projection={doc.RESOURCE: 1}):
            keys = doc.identity_keys(found.get(doc.RESOURCE) or {})
            if not keys:
                continue
            try:
                await patients.update_one({doc.ID: found[doc.ID]}, {"$set": {doc.IDENTITY: keys}})
            except DuplicateKeyError:
                log.error(
                    "Patient/%s shares an INS with another Patient; resolve the duplicate", found[doc.ID]
                )

    async def ping(self) -> bool:
        try:
            await self._database.command("ping")
        except PyMongoError:
            return False
        return True


def _refusal(error: PyMongoError, *, transient: bool) -> FhirError:
    """The answer to a transaction that could not be committed. Every one is a FhirError, so that
    the request is audited like any refused request (interactions/pipeline.py)."""
    if isinstance(error, AuditUnavailable):
        return unavailable("The audit trail of this record is busy; retry")
    if isinstance(error, DuplicateKeyError):
        return conflict("A concurrent write created the same resource; retry")
    if transient or _is_write_conflict(error):
        return conflict("A concurrent write changed this resource; retry")
    return unavailable("The database is unavailable")


def _is_write_conflict(error: PyMongoError) -> bool:
    return isinstance(error, OperationFailure) and error.code == 112
