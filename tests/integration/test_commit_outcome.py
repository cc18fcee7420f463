"""A commit whose outcome is unknown is resolved, never rerun as a new write (storage/repository.py,
`_commit`): the request gets the answer matching what was committed and exactly one AuditEvent.

The outcome is made unknown by the database itself: a `failCommand` fail point on
`commitTransaction`, armed through `configureFailPoint` on an embedded database started with
`--enable-test-commands` (the server's own never has them).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from fhir_server.storage.repository import COMMIT_ATTEMPTS
from tests.integration.conftest import Server, patient_resource, start_server

pytestmark = pytest.mark.asyncio

WRITE_CONCERN_ERROR = {
    "code": 64,
    "codeName": "WriteConcernFailed",
    "errmsg": "injected: answer lost",
    "errInfo": {"wtimeout": True},
}
"""Applied, then answered with a write concern error: the driver labels it UnknownTransactionCommitResult."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def test_commands_uri() -> Iterator[str]:
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "secantus",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--storage-path",
            ":memory:",
            "--log-level",
            "WARNING",
            "--enable-test-commands",
            "--sync-on-commit",
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    uri = f"mongodb://127.0.0.1:{port}/?directConnection=true&retryWrites=false"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with MongoClient[dict[str, Any]](uri, serverSelectionTimeoutMS=500) as client:
                    client.admin.command("ping")
                break
            except PyMongoError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.1)
        yield uri
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
async def server(test_commands_uri: str, tmp_path: Path) -> AsyncIterator[Server]:
    async for running in start_server(test_commands_uri, tmp_path, f"it_{uuid.uuid4().hex[:10]}"):
        yield running


async def _arm(server: Server, times: int, data: dict[str, Any]) -> None:
    await server.database.client.admin.command(
        {
            "configureFailPoint": "failCommand",
            "mode": {"times": times},
            "data": {"failCommands": ["commitTransaction"], **data},
        }
    )


async def _create_events(server: Server) -> list[dict[str, Any]]:
    return [
        document["res"]
        async for document in server.database.AuditEvent.find({"res.action": "C"})
        if any(coding.get("code") == "create" for coding in document["res"].get("subtype", []))
    ]


@pytest.mark.parametrize(
    ("times", "data"),
    [
        pytest.param(1, {"writeConcernError": WRITE_CONCERN_ERROR}, id="committed-answer-lost"),
        pytest.param(1, {"closeConnection": True}, id="connection-closed-before-commit"),
        pytest.param(
            COMMIT_ATTEMPTS, {"writeConcernError": WRITE_CONCERN_ERROR}, id="every-answer-lost-looked-up"
        ),
    ],
)
async def test_an_unknown_commit_outcome_gives_one_create_and_one_audit_event(
    server: Server, times: int, data: dict[str, Any]
) -> None:
    patient = patient_resource()
    await _arm(server, times, data)
    response = await server.http.post("/fhir/Patient", json=patient, headers=server.as_system())
    assert response.status_code == 201, response.text
    assert await server.database.Patient.count_documents({}) == 1
    assert await server.database.Patient_history.count_documents({}) == 1
    [event] = await _create_events(server)
    assert event["outcome"] == "0"
    whats = {entity.get("what", {}).get("reference") for entity in event["entity"]}
    assert f"Patient/{response.json()['id']}" in whats


async def test_a_commit_that_never_happened_is_rerun_once(server: Server) -> None:
    """Every commit attempt fails before it reaches the database: the lease is still there, so the
    transaction did not commit; it is rerun, and the rerun commits."""
    await _arm(server, 2 * COMMIT_ATTEMPTS, {"closeConnection": True})
    response = await server.http.post("/fhir/Patient", json=patient_resource(), headers=server.as_system())
    assert response.status_code == 201, response.text
    assert await server.database.Patient.count_documents({}) == 1
    assert len(await _create_events(server)) == 1
