"""The one MongoDB client of a server process, with timeouts sized to fail fast and honestly.

- Server selection and connection: a few seconds, so a request answers 503 soon after the database
  goes away instead of after the driver's 30 s default.
- Socket: a bounded wait for any one command, so a frozen database cannot hold requests forever.
- Pooled connections are retired before the embedded database drops idle ones (300 s): a request
  never starts on a connection the server has already closed.
Production settings in the URI (`w`, `journal`, `readPreference`...) are the operator's and win.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.monitoring import CommandListener

SERVER_SELECTION_TIMEOUT_MS = 3_000
CONNECT_TIMEOUT_MS = 3_000
SOCKET_TIMEOUT_MS = 20_000
MAX_IDLE_TIME_MS = 60_000


def open_client(
    uri: str, *, event_listeners: Sequence[CommandListener] = ()
) -> AsyncMongoClient[dict[str, Any]]:
    """`event_listeners`: command monitors (the query-budget test and the benchmark count commands)."""
    return AsyncMongoClient(
        uri,
        event_listeners=list(event_listeners),
        tz_aware=True,
        serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS,
        connectTimeoutMS=CONNECT_TIMEOUT_MS,
        socketTimeoutMS=SOCKET_TIMEOUT_MS,
        maxIdleTimeMS=MAX_IDLE_TIME_MS,
    )
