"""Pooled connections the embedded database dropped while idle never fail the next request.

The embedded database closes a connection idle for 300 s; the driver retires its pooled connections
after MAX_IDLE_TIME_MS (storage/client.py), before that. Waiting 300 s is not a test: here the
database runs with a 2 s idle limit and the pool limit is scaled by the same factor. The control
shows the fault is real: with a pool limit above the database's, the first write after the idle
period fails on a connection the database has closed.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import AutoReconnect, PyMongoError

from fhir_server.storage import client as client_module
from fhir_server.storage.client import open_client
from fhir_server.storage.embedded import free_port
from tests.integration.conftest import Server, patient_resource, start_server

EMBEDDED_IDLE_SECONDS = 300.0
"""SecantusDB's per-connection idle timeout (not configurable from its command line)."""
SHORT_IDLE_SECONDS = 2.0
SCALED_POOL_IDLE_MS = int(client_module.MAX_IDLE_TIME_MS * SHORT_IDLE_SECONDS / EMBEDDED_IDLE_SECONDS)
IDLE_PAUSE_SECONDS = SHORT_IDLE_SECONDS + 1.5

_SHORT_IDLE_DATABASE = """
import functools, sys
import secantus.cli
from secantus.server import SecantusDBServer
idle = float(sys.argv.pop(1))
secantus.cli.SecantusDBServer = functools.partial(SecantusDBServer, client_idle_timeout_s=idle)
sys.exit(secantus.cli.main())
"""
"""SecantusDB's own command line, with its idle limit (a constructor argument only) set."""


@pytest.fixture(scope="module")
def short_idle_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    storage = tmp_path_factory.mktemp("short-idle")
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _SHORT_IDLE_DATABASE,
            str(SHORT_IDLE_SECONDS),
            "--port",
            str(port),
            "--storage-path",
            str(storage / "db"),
            "--log-level",
            "WARNING",
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    uri = f"mongodb://127.0.0.1:{port}/?directConnection=true&retryWrites=false"
    try:
        with MongoClient[dict[str, Any]](uri, serverSelectionTimeoutMS=60_000) as probe:
            probe.admin.command("ping")
        yield uri
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_pool_retires_connections_before_the_embedded_database_drops_them() -> None:
    assert 0 < client_module.MAX_IDLE_TIME_MS < EMBEDDED_IDLE_SECONDS * 1000


async def _write_after_idle(uri: str) -> None:
    """Fill the pool with several connections, leave them idle past the database's limit, write."""
    client = open_client(uri)
    collection = client["idle_control"]["things"]
    try:
        await asyncio.gather(*(collection.insert_one({"n": n}) for n in range(6)))
        await asyncio.sleep(IDLE_PAUSE_SECONDS)
        await collection.insert_one({"after": "idle"})
    finally:
        await client.close()


async def test_control_a_pool_limit_above_the_databases_fails_the_first_write_after_idle(
    short_idle_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "MAX_IDLE_TIME_MS", int(SHORT_IDLE_SECONDS * 1000 * 10))
    with pytest.raises(AutoReconnect):
        await _write_after_idle(short_idle_uri)


async def test_the_scaled_pool_limit_keeps_the_first_write_after_idle_working(
    short_idle_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "MAX_IDLE_TIME_MS", SCALED_POOL_IDLE_MS)
    try:
        await _write_after_idle(short_idle_uri)
    except PyMongoError as error:
        pytest.fail(f"the first write after idle failed: {error!r}")


@pytest.fixture
async def idle_server(
    short_idle_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Server]:
    monkeypatch.setattr(client_module, "MAX_IDLE_TIME_MS", SCALED_POOL_IDLE_MS)
    async for running in start_server(short_idle_uri, tmp_path, f"idle_{uuid.uuid4().hex[:10]}"):
        yield running


async def _warm_then_idle(server: Server) -> None:
    """Several pooled connections in use at once, then all of them idle past the database's limit."""
    headers = server.as_system()
    answers = await asyncio.gather(
        *(server.http.post("/fhir/Patient", json=patient_resource(), headers=headers) for _ in range(6))
    )
    assert {answer.status_code for answer in answers} == {201}
    await asyncio.sleep(IDLE_PAUSE_SECONDS)


async def test_after_idle_the_first_requests_are_served_normally(idle_server: Server) -> None:
    """An unauthenticated request (its first operation is the AuditEvent's write), a create and an
    `$export` kick-off, each the first request after the pool sat idle past the database's limit."""
    await _warm_then_idle(idle_server)
    unauthenticated = await idle_server.http.get("/fhir/Patient")
    assert unauthenticated.status_code == 401, unauthenticated.text

    await _warm_then_idle(idle_server)
    created = await idle_server.http.post(
        "/fhir/Patient", json=patient_resource(), headers=idle_server.as_system()
    )
    assert created.status_code == 201, created.text

    await _warm_then_idle(idle_server)
    exporter = idle_server.token(scopes=["system/*.rs"], sub="exporter", client_id="exporter")
    kicked_off = await idle_server.http.get(
        "/fhir/$export",
        headers={
            "Authorization": f"Bearer {exporter}",
            "Prefer": "respond-async",
            "Accept": "application/fhir+json",
        },
    )
    assert kicked_off.status_code == 202, kicked_off.text
