"""Claims that make conditional writes atomic: conditional create (`If-None-Exist`), conditional
update and a transaction entry's `ifNoneExist`. https://hl7.org/fhir/R4/http.html#ccreate

Why. A conditional write searches, then writes what the search found (or did not). Two concurrent
requests with the same condition both search before either writes, both find nothing, and both
create: duplicates, after which every later conditional request matches several and answers 412.

How. Each conditional write that reaches the database writes one claim document, keyed by its
condition, in its own transaction, and only then searches again. Snapshot isolation does the rest:
of two transactions that overlap and write the same claim document, only one commits (the other
aborts on a write conflict and is rerun by the repository). So when a transaction holding the claim
commits, every other conditional write on that condition committed before its snapshot, and the
search after the claim saw it: the loser's rerun finds the winner's resource.

The key. A condition is normalised before it is hashed: its `name=value` pairs, decoded, sorted, so
that the same search written in another order or encoding takes the same claim. Two different
searches that happen to match the same resource take different claims and are not serialised
against each other. The key is a hash: the claim holds no search value (an INS is personal data).
Claims are kept (one small document per condition ever used) so that the write is one upsert.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from fhir_server.record import documents as doc

CLAIMS_COLLECTION = "_conditions"
CLAIMED_AT = "at"
CLAIMS = "n"


def condition_key(resource_type: str, params: Sequence[tuple[str, str]]) -> str:
    """The claim key of a condition: the type and its decoded `name=value` pairs, sorted, hashed."""
    normalised = f"{resource_type}?{urlencode(sorted(params))}"
    return hashlib.sha256(normalised.encode()).hexdigest()


async def claim(
    database: AsyncDatabase[dict[str, Any]], key: str, *, now: datetime, session: AsyncClientSession
) -> None:
    """Write the claim of `key` in `session`'s transaction: a concurrent claimant conflicts with it."""
    await database[CLAIMS_COLLECTION].update_one(
        {doc.ID: key}, {"$set": {CLAIMED_AT: now}, "$inc": {CLAIMS: 1}}, upsert=True, session=session
    )


__all__ = ["CLAIMS_COLLECTION", "claim", "condition_key"]
