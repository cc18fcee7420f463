"""Shared fixtures: a real MongoDB wire-protocol server over TCP, never a mock.

`FHIR_MONGODB_URI` set: tests use that server (a replica set or sharded cluster), each test session
in a database of its own. Unset: the embedded database (SecantusDB) is started for the session.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from fhir_server.storage.embedded import EmbeddedDatabase


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("FHIR_MONGODB_URI")
    if external:
        yield external
        return
    with EmbeddedDatabase(Path(tmp_path_factory.mktemp("secantus"))) as database:
        yield database.uri


@pytest.fixture
async def mongo_db(mongo_uri: str) -> AsyncIterator[AsyncDatabase]:
    """A fresh, empty database for one test, dropped afterwards."""
    client: AsyncMongoClient = AsyncMongoClient(mongo_uri, tz_aware=True)
    name = f"test_{uuid.uuid4().hex[:12]}"
    try:
        yield client[name]
    finally:
        await client.drop_database(name)
        await client.close()
