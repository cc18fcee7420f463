"""The change marker: an order of committed versions, for history as a change feed and `_since`.

https://hl7.org/fhir/R4/http.html#history, https://hl7.org/fhir/uv/bulkdata/export.html (`_since`)

Why. `lu` (meta.lastUpdated) is taken when a request starts; its transaction may commit much later
(validation, retries of a contended transaction). A reader paging by `lu` can pass a version before
it commits and never see it. So every version also gets, in its own write transaction:

    chg  the change marker, an int from the counter document `_changes/feed` (`seq`)
    cht  the change time: the counter's `at` when the marker was taken, set to
         max(writer clock, previous `at` + 1 ms), so `cht` grows with every transaction along `chg`

How, without making writers contend. A counter updated inside every write transaction would make
any two overlapping write transactions conflict (snapshot isolation: the later one aborts), so the
markers are taken outside the transaction, under a pending lease:
1. before the transaction starts (so that its snapshot sees it): read the counter `(s0, a0)` and
   insert a pending document `{floor: s0 + 1, at: a0, until}`;
2. once the transaction has written, take its markers with one atomic `$inc` on the counter,
   outside the transaction: every marker taken is above `s0`, and its `cht` is at least `a0`;
3. in the transaction: delete the pending document (it must still be there: a reaped lease aborts
   the transaction, which is rerun under a new lease), stamp the versions, commit.
A pending document disappears exactly when its transaction commits (or, failed, when the writer
releases it, or, the writer dead, when a reader reaps it past `until`).

The horizon a reader computes: read the counter `(seq, at)`, then every pending document, and take
`seq' = min(seq, floor - 1)` and `resume = min(at, pending at) + 1 ms`. Then:
- every version with `chg <= seq'` is committed (any marker up to `seq` was taken after its pending
  document was inserted, so that document is either still pending, which puts `seq'` below the
  marker, or gone with its commit), or will never commit (reaped: its transaction aborts);
- a version has `cht < resume` exactly when `chg <= seq'` (`cht` grows strictly along `chg`).
A reader that pages with `chg <= seq'` never passes an uncommitted version, and a client that
resumes with `_since = resume` (versions with `cht >= _since`) gets exactly what it has not seen.

Cost: three small operations outside the transaction and a few inside it per write transaction,
and no conflict between writers; the counter is one document updated atomically by every writer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import uuid4

from pymongo import ReturnDocument, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from fhir_server.record import documents as doc

COUNTER_COLLECTION = "_changes"
PENDING_COLLECTION = "_changes_pending"
COUNTER_ID = "feed"
SEQ = "seq"
AT = "at"
FLOOR = "floor"
UNTIL = "until"
LEASE = timedelta(seconds=60)
"""How long a pending marker may hold the horizon back when its writer died."""
TRANSIENT = "TransientTransactionError"
TICK = timedelta(milliseconds=1)
TICK_MS = 1
"""BSON dates have millisecond precision: consecutive change times differ by at least this."""


@dataclass(frozen=True)
class Written:
    """One version written by a transaction, to stamp before commit."""

    resource_type: str
    resource_id: str
    version: int


@dataclass(frozen=True)
class Lease:
    """A pending document: markers taken under it are at least `floor`, with `cht` at least `at`."""

    id: str
    floor: int
    at: datetime
    until: datetime
    """After this, a reader may reap the lease (its writer presumed dead)."""


@dataclass(frozen=True)
class Horizon:
    """Every version with `chg <= seq` is committed; every later one has `cht >= resume`."""

    seq: int
    resume: datetime


async def ensure_counter(database: AsyncDatabase[dict[str, Any]], *, now: datetime) -> None:
    """Create the counter once (concurrent starts are harmless: the upsert is on one `_id`)."""
    await database[COUNTER_COLLECTION].update_one(
        {doc.ID: COUNTER_ID}, {"$setOnInsert": {SEQ: 0, AT: now}}, upsert=True
    )
    await database[PENDING_COLLECTION].create_index([(FLOOR, 1)])


async def open_lease(database: AsyncDatabase[dict[str, Any]], *, now: datetime) -> Lease:
    """Step 1 of the module docstring, before the transaction starts."""
    current: Mapping[str, Any] = await database[COUNTER_COLLECTION].find_one({doc.ID: COUNTER_ID}) or {}
    lease = Lease(uuid4().hex, int(current.get(SEQ) or 0) + 1, current.get(AT) or now, now + LEASE)
    await database[PENDING_COLLECTION].insert_one(
        {doc.ID: lease.id, FLOOR: lease.floor, AT: lease.at, UNTIL: lease.until}
    )
    return lease


async def release(database: AsyncDatabase[dict[str, Any]], lease: Lease) -> None:
    """The transaction did not commit: stop holding the horizon back."""
    await database[PENDING_COLLECTION].delete_one({doc.ID: lease.id})


async def settle(database: AsyncDatabase[dict[str, Any]], lease: Lease, *, now: datetime) -> bool | None:
    """Whether the transaction of `lease`, whose commit outcome was lost, did NOT commit.

    Its transaction deletes the pending document (step 3), so the document is gone once it committed.
    Deleting it here settles the question: True, it was still there, so the transaction did not
    commit and now never will (its own delete would conflict); False, it was gone: committed. None
    once the lease may have been reaped by a reader (its `until` passed): then nobody can tell.
    """
    if now >= lease.until:
        return None
    ended = await database[PENDING_COLLECTION].delete_one({doc.ID: lease.id})
    return ended.deleted_count == 1


async def stamp(
    database: AsyncDatabase[dict[str, Any]],
    lease: Lease,
    written: Sequence[Written],
    *,
    now: datetime,
    session: AsyncClientSession,
) -> None:
    """Steps 2 and 3: take markers for `written` (in write order), end the lease and stamp, in `session`."""
    first, at = 0, now
    if written:
        step = {
            SEQ: {"$add": [f"${SEQ}", len(written)]},
            AT: {"$max": [now, {"$add": [f"${AT}", TICK_MS]}]},
        }
        taken = await database[COUNTER_COLLECTION].find_one_and_update(
            {doc.ID: COUNTER_ID}, [{"$set": step}], return_document=ReturnDocument.AFTER
        )
        if taken is None:
            raise RuntimeError("the change counter is created at start-up (ensure_counter)")
        first, at = int(taken[SEQ]) - len(written) + 1, taken[AT]
    ended = await database[PENDING_COLLECTION].delete_one({doc.ID: lease.id}, session=session)
    if ended.deleted_count != 1:
        message = "the change-marker lease was reaped: rerun the transaction"
        raise PyMongoError(message, error_labels=[TRANSIENT])
    current: dict[str, list[UpdateOne]] = {}
    history: dict[str, list[UpdateOne]] = {}
    for offset, version in enumerate(written):
        marks = {"$set": {doc.CHANGE: first + offset, doc.CHANGE_TIME: at}}
        current.setdefault(version.resource_type, []).append(UpdateOne({doc.ID: version.resource_id}, marks))
        history.setdefault(doc.history_collection(version.resource_type), []).append(
            UpdateOne({doc.ID: f"{version.resource_id}/{version.version}"}, marks)
        )
    # A resource written twice in one transaction keeps the marker of its last version.
    for collection, operations in [*current.items(), *history.items()]:
        await database[collection].bulk_write(operations, ordered=True, session=session)


async def horizon(database: AsyncDatabase[dict[str, Any]], *, now: datetime) -> Horizon:
    """The reader's horizon (module docstring): reap dead leases, read the counter, then the pending."""
    pending = database[PENDING_COLLECTION]
    await pending.delete_many({UNTIL: {"$lt": now}})
    counter: Mapping[str, Any] = await database[COUNTER_COLLECTION].find_one({doc.ID: COUNTER_ID}) or {}
    seq = int(counter.get(SEQ) or 0)
    resume: datetime = counter.get(AT) or now
    async for lease in pending.find({}, projection={FLOOR: 1, AT: 1}):
        seq = min(seq, int(lease[FLOOR]) - 1)
        resume = min(resume, lease[AT])
    return Horizon(seq, resume + TICK)


__all__ = [
    "COUNTER_COLLECTION",
    "PENDING_COLLECTION",
    "Horizon",
    "Lease",
    "Written",
    "ensure_counter",
    "horizon",
    "open_lease",
    "release",
    "settle",
    "stamp",
]
