"""Persisting AuditEvents: the one-method `AuditSink` seam and its MongoDB implementation.

docs/architecture.md I2, docs/audit.md: an AuditEvent is stored before the response leaves; for a write,
inside the
data change's transaction, so both commit or neither does. Any failure raises `AuditUnavailable`,
which the pipeline answers with 503.

Stored layout: the `AuditEvent` collection, one document per event in the layout of
storage/documents.py (`_id, vid=1, lu, del, res, idx, pat, sec`) plus `chain`, the event's
`ChainLink` (chain.py), kept outside `res` so the resource served is the one that was hashed.
The collection `AuditEvent_chain` holds one head per chain: `{_id: key, seq, prev, hash}` = the
chain's last link. AuditEvents have a single version: no `AuditEvent_history` documents.

Concurrency: appends to one chain must not take the same seq. Two guards, both in the transaction
that inserts the records: the unique index (chain.key, chain.seq), and the head, replaced only if it
still holds the link the new records were chained to (a conditional update; a new chain inserts its
head, so a second creator fails on `_id`). A lost race therefore shows as a duplicate key, a stale
head or a MongoDB write conflict, and the transaction aborts with nothing written:
- without a caller session, the sink retries on its own: it reloads the heads and links again;
- inside the caller's transaction it cannot retry alone (the transaction is already aborted), so it
  raises `AuditChainConflict`, which carries MongoDB's `TransientTransactionError` label: the
  transaction runners that honour the label (pymongo's `with_transaction`, the repository's
  `in_transaction`) rerun the whole transaction, and any other caller sees an `AuditUnavailable`.

Group commit: calls without a transaction are queued; one writer task per sink takes everything
queued, links it chain by chain and stores it with one `insert_many` and one head `bulk_write` in
one short transaction, then wakes each caller. Under load a batch holds the records that arrived
while the previous one was written; when idle a record is written at once. Chain heads are cached
(LRU), for the group writer and inside callers' transactions alike, so an append costs no read; a
stale cache only costs a retry (a rerun of the caller's transaction, inside one).
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from pymongo import ASCENDING, InsertOne, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, ConnectionFailure, DuplicateKeyError, PyMongoError

from fhir_server.audit.chain import ChainLink, chain_key, link
from fhir_server.fhir.resources import AUDIT_EVENT
from fhir_server.storage.documents import instant, now_utc, to_document

log = logging.getLogger("fhir_server.audit")

CHAIN_FIELD = "chain"
HEADS_COLLECTION = f"{AUDIT_EVENT}_chain"
CHAIN_INDEX = "audit_chain_key_seq"
DUPLICATE_KEY = 11000
TRANSIENT_TRANSACTION_ERROR = "TransientTransactionError"
UNKNOWN_COMMIT_RESULT = "UnknownTransactionCommitResult"

Extractor = Callable[[Mapping[str, Any]], Mapping[str, list[Any]]]
"""Search index values of a resource, keyed by SearchParameter code (search/registry.py)."""


class AuditUnavailable(Exception):
    """The AuditEvent could not be persisted: the request must fail (503) and write nothing."""


class AuditChainConflict(AuditUnavailable, PyMongoError):
    """A concurrent append took the chain position inside the caller's transaction: rerun it."""

    def __init__(self, message: str) -> None:
        PyMongoError.__init__(self, message, error_labels=[TRANSIENT_TRANSACTION_ERROR])


class AuditSink(Protocol):
    async def record(
        self, events: Sequence[Mapping[str, Any]], *, session: AsyncClientSession | None = None
    ) -> list[str]:
        """Persist `events` (AuditEvent JSON without id); return their assigned ids, in order.

        With a `session` in a transaction, the events commit or abort with it.
        """
        ...


class _StaleHead(Exception):
    """A chain head changed since it was read: another writer appended."""


@dataclass(frozen=True)
class _Prepared:
    """One event made ready to store: id and meta assigned, index values extracted, chain known."""

    id: str
    key: str
    resource: dict[str, Any]
    index: Mapping[str, list[Any]]
    last_updated: datetime


def _contended(error: BaseException) -> bool:
    """Whether `error` means another writer took the chain position (retry), not a broken store."""
    if isinstance(error, _StaleHead | DuplicateKeyError):
        return True
    if isinstance(error, BulkWriteError):
        codes = [item.get("code") for item in error.details.get("writeErrors", [])]
        return bool(codes) and all(code == DUPLICATE_KEY for code in codes)
    if isinstance(error, ConnectionFailure):
        return False  # labelled transient in a transaction, but an unreachable store is not contention
    return isinstance(error, PyMongoError) and error.has_error_label(TRANSIENT_TRANSACTION_ERROR)


def _unavailable(message: str, cause: BaseException) -> AuditUnavailable:
    error = AuditUnavailable(message)
    error.__cause__ = cause
    return error


@dataclass
class _Waiting:
    records: list[_Prepared]
    done: asyncio.Future[None]


class MongoAuditSink:
    def __init__(
        self,
        database: AsyncDatabase[dict[str, Any]],
        extract: Extractor,
        *,
        batch_limit: int = 500,
        head_cache_size: int = 100_000,
        attempts: int = 12,
    ) -> None:
        self._database = database
        self._events = database[AUDIT_EVENT]
        self._heads = database[HEADS_COLLECTION]
        self._extract = extract
        self._batch_limit = batch_limit
        self._head_cache_size = head_cache_size
        self._attempts = attempts
        self._cache: OrderedDict[str, ChainLink] = OrderedDict()
        self._queue: deque[_Waiting] = deque()
        self._writer: asyncio.Task[None] | None = None

    async def ensure_indexes(self) -> None:
        try:
            await self._events.create_index(
                [(f"{CHAIN_FIELD}.key", ASCENDING), (f"{CHAIN_FIELD}.seq", ASCENDING)],
                name=CHAIN_INDEX,
                unique=True,
            )
        except PyMongoError as error:
            raise AuditUnavailable(f"cannot create the audit chain index: {error}") from error

    async def record(
        self, events: Sequence[Mapping[str, Any]], *, session: AsyncClientSession | None = None
    ) -> list[str]:
        if not events:
            return []
        records = [self._prepare(event) for event in events]
        if session is not None and session.in_transaction:
            await self._append_in_transaction(records, session)
        else:
            await self._append_grouped(records)
        return [record.id for record in records]

    def _prepare(self, event: Mapping[str, Any]) -> _Prepared:
        last_updated = now_utc()
        record_id = str(uuid.uuid4())
        meta = {**(event.get("meta") or {}), "versionId": "1", "lastUpdated": instant(last_updated)}
        resource: dict[str, Any] = {"resourceType": AUDIT_EVENT, "id": record_id, "meta": meta}
        resource.update({key: value for key, value in event.items() if key not in resource})
        try:
            index = self._extract(resource)
        except Exception as error:
            raise AuditUnavailable(f"cannot index the AuditEvent: {error}") from error
        return _Prepared(record_id, chain_key(resource), resource, index, last_updated)

    # -- inside the caller's transaction ----------------------------------------------------------

    async def _append_in_transaction(self, records: list[_Prepared], session: AsyncClientSession) -> None:
        keys = list(dict.fromkeys(record.key for record in records))
        try:
            heads = await self._heads_for(keys, session)
            new_heads = await self._store(records, heads, session)
        except (_StaleHead, PyMongoError) as error:
            self._forget(keys)
            if _contended(error):
                raise AuditChainConflict(f"audit chain contention: {error}") from error
            raise AuditUnavailable(f"cannot store the AuditEvent: {error}") from error
        # Remembered before the caller commits: if its transaction aborts, the next append finds the
        # head moved (its conditional update matches nothing) and reloads, as after any stale cache.
        for key, head in new_heads.items():
            self._remember(key, head)

    # -- group commit -----------------------------------------------------------------------------

    async def _append_grouped(self, records: list[_Prepared]) -> None:
        waiting = _Waiting(records, asyncio.get_running_loop().create_future())
        self._queue.append(waiting)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_queued())
        await waiting.done

    async def _write_queued(self) -> None:
        while self._queue:
            batch: list[_Waiting] = []
            size = 0
            while self._queue and (not batch or size + len(self._queue[0].records) <= self._batch_limit):
                waiting = self._queue.popleft()
                batch.append(waiting)
                size += len(waiting.records)
            try:
                await self._write_batch([record for waiting in batch for record in waiting.records])
            except Exception as error:
                self._fail(batch, error)
            except BaseException as error:
                self._fail([*batch, *self._queue], error)
                self._queue.clear()
                raise
            else:
                for waiting in batch:
                    if not waiting.done.done():
                        waiting.done.set_result(None)

    @staticmethod
    def _fail(batch: list[_Waiting], error: BaseException) -> None:
        message = str(error) if isinstance(error, AuditUnavailable) else f"audit writer failed: {error!r}"
        for waiting in batch:
            if not waiting.done.done():
                waiting.done.set_exception(_unavailable(message, error))

    async def _write_batch(self, records: list[_Prepared]) -> None:
        keys = list(dict.fromkeys(record.key for record in records))
        for attempt in range(self._attempts):
            try:
                heads = await self._write_batch_once(records, keys)
            except (_StaleHead, PyMongoError) as error:
                self._forget(keys)
                if not _contended(error):
                    raise AuditUnavailable(f"cannot store the AuditEvents: {error}") from error
                log.debug("audit chain contention (attempt %d): %s", attempt + 1, error)
            else:
                for key, head in heads.items():
                    self._remember(key, head)
                return
            await asyncio.sleep(random.uniform(0, 0.002 * 2 ** min(attempt, 6)))
        raise AuditUnavailable(f"audit chains still contended after {self._attempts} attempts")

    async def _write_batch_once(self, records: list[_Prepared], keys: list[str]) -> dict[str, ChainLink]:
        async with self._database.client.start_session() as session:
            await session.start_transaction()
            heads = await self._heads_for(keys, session)
            new_heads = await self._store(records, heads, session)
            await self._commit(session)
            return new_heads

    async def _commit(self, session: AsyncClientSession) -> None:
        """Commit, retrying only the commit when its result is unknown (never re-inserting)."""
        for attempt in range(3):
            try:
                await session.commit_transaction()
                return
            except PyMongoError as error:
                if not error.has_error_label(UNKNOWN_COMMIT_RESULT) or attempt == 2:
                    raise

    def _remember(self, key: str, head: ChainLink) -> None:
        self._cache[key] = head
        self._cache.move_to_end(key)
        while len(self._cache) > self._head_cache_size:
            self._cache.popitem(last=False)

    def _forget(self, keys: list[str]) -> None:
        for key in keys:
            self._cache.pop(key, None)

    # -- shared -----------------------------------------------------------------------------------

    async def _heads_for(self, keys: list[str], session: AsyncClientSession) -> dict[str, ChainLink | None]:
        """The chain heads, from the cache where it has them (a stale one only costs a retry)."""
        heads: dict[str, ChainLink | None] = {key: self._cache[key] for key in keys if key in self._cache}
        missing = [key for key in keys if key not in heads]
        if missing:
            heads.update(await self._load_heads(missing, session))
        return heads

    async def _load_heads(self, keys: list[str], session: AsyncClientSession) -> dict[str, ChainLink | None]:
        heads: dict[str, ChainLink | None] = dict.fromkeys(keys)
        async for document in self._heads.find({"_id": {"$in": keys}}, session=session):
            heads[document["_id"]] = ChainLink.from_document({**document, "key": document["_id"]})
        return heads

    async def _store(
        self,
        records: list[_Prepared],
        heads: Mapping[str, ChainLink | None],
        session: AsyncClientSession,
    ) -> dict[str, ChainLink]:
        """Link `records` after `heads`, insert them and move the heads, in `session`'s transaction."""
        tips = dict(heads)
        documents = []
        for record in records:
            record_link = link(tips[record.key], record.resource)
            tips[record.key] = record_link
            document = to_document(
                record.resource, version=1, last_updated=record.last_updated, index=record.index
            )
            document[CHAIN_FIELD] = record_link.to_document()
            documents.append(document)
        new_heads = {key: tip for key, tip in tips.items() if tip is not None}
        operations: list[InsertOne[dict[str, Any]] | UpdateOne] = []
        for key, tip in new_heads.items():
            head = {"seq": tip.seq, "prev": tip.prev, "hash": tip.hash}
            previous = heads[key]
            if previous is None:
                operations.append(InsertOne({"_id": key, **head}))
            else:
                expected = {"_id": key, "seq": previous.seq, "hash": previous.hash}
                operations.append(UpdateOne(expected, {"$set": head}))
        await self._events.insert_many(documents, ordered=True, session=session)
        result = await self._heads.bulk_write(operations, ordered=True, session=session)
        updates = sum(1 for operation in operations if isinstance(operation, UpdateOne))
        if result.matched_count != updates:
            raise _StaleHead(f"{updates - result.matched_count} chain head(s) moved")
        return new_heads


__all__ = [
    "CHAIN_FIELD",
    "HEADS_COLLECTION",
    "AuditChainConflict",
    "AuditSink",
    "AuditUnavailable",
    "Extractor",
    "MongoAuditSink",
]
