"""Slow, idle and vanishing clients over a real uvicorn socket, with the server's own HTTP protocol
(api/connections.py, deadlines shortened for the test): cut off in bounded time, other clients still
served, and a client that goes away audited as a client error, never as a server error."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from pymongo import AsyncMongoClient

from fhir_server.api import connections
from fhir_server.app import create_app
from fhir_server.auth.devkeys import mint_token
from fhir_server.interactions.pipeline import CLIENT_DISCONNECTED
from fhir_server.settings import Settings
from tests.integration.conftest import patient_resource

DEADLINE = 1.0
KEEP_ALIVE = 1


class Live:
    def __init__(self, port: int, database: Any, token: str) -> None:
        self.port = port
        self.database = database
        self.token = token

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def events(self, request_id: str, *, expected: int = 1) -> list[dict[str, Any]]:
        """The AuditEvents of one request, waited for (a disconnected request is audited after)."""
        query = {"res.entity.what.identifier.value": request_id}
        for _ in range(100):
            found = [document["res"] async for document in self.database["AuditEvent"].find(query)]
            if len(found) >= expected:
                return found
            await asyncio.sleep(0.05)
        return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
async def live(mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Live]:
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}/fhir"
    name = f"conn_{uuid.uuid4().hex[:10]}"
    data_dir = tmp_path_factory.mktemp("connections")
    app = create_app(Settings(mongodb_uri=mongo_uri, database=name, data_dir=data_dir, base_url=base_url))
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        lifespan="off",
        log_level="warning",
        http=connections.DeadlineProtocol,
        timeout_keep_alive=KEEP_ALIVE,
    )
    server = uvicorn.Server(config)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    token = mint_token(
        data_dir, audience=base_url, subject="platform", scopes=["system/*.cruds"], client_id="p"
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(connections, "HEAD_SECONDS", DEADLINE)
        patch.setattr(connections, "BODY_WINDOW_SECONDS", DEADLINE)
        async with app.router.lifespan_context(app):
            serving = asyncio.create_task(server.serve())
            while not server.started:
                await asyncio.sleep(0.02)
            try:
                yield Live(port, client[name], token)
            finally:
                server.should_exit = True
                await serving
                await client.drop_database(name)
                await client.close()


async def _read_until_closed(reader: asyncio.StreamReader, *, limit: float = 10.0) -> bytes:
    received = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            chunk = await asyncio.wait_for(reader.read(4096), timeout=0.2)
        except TimeoutError:
            continue
        except ConnectionError:
            return received
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"the connection was still open after {limit} s: {received[:200]!r}")


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def _trickle(writer: asyncio.StreamWriter, data: bytes, *, every: float = 0.2) -> None:
    """Send `data` a byte at a time until it is all sent or the server closes the connection."""
    for position in range(len(data)):
        try:
            writer.write(data[position : position + 1])
            await writer.drain()
        except ConnectionError:
            return
        await asyncio.sleep(every)


async def test_a_connection_that_sends_nothing_is_answered_408_and_closed(live: Live) -> None:
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
    received = await _read_until_closed(reader)
    await _close(writer)
    assert received.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < DEADLINE + 2


async def test_an_idle_keep_alive_connection_is_closed(live: Live) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
    await writer.drain()
    started = time.monotonic()
    received = await _read_until_closed(reader)
    await _close(writer)
    assert received.startswith(b"HTTP/1.1 200 ")
    assert time.monotonic() - started < KEEP_ALIVE + 2


async def test_a_slowloris_head_is_cut_off_while_other_clients_are_served(live: Live) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
    started = time.monotonic()
    trickling = asyncio.create_task(
        _trickle(writer, b"GET /fhir/metadata HTTP/1.1\r\nHost: test\r\nX-Slow: " + b"a" * 200)
    )
    async with httpx.AsyncClient(base_url=live.origin, timeout=10) as http:
        for _ in range(3):
            assert (await http.get("/fhir/metadata")).status_code == 200
    received = await _read_until_closed(reader)
    cut_after = time.monotonic() - started
    await trickling
    await _close(writer)
    assert received.startswith(b"HTTP/1.1 408 ")
    assert cut_after < DEADLINE + 2, f"cut after {cut_after:.1f} s"


async def test_a_slow_body_is_cut_off_and_audited_as_a_client_disconnect(live: Live) -> None:
    request_id = f"slow-body-{uuid.uuid4()}"
    head = (
        "POST /fhir/Patient HTTP/1.1\r\nHost: test\r\n"
        f"Authorization: Bearer {live.token}\r\nContent-Type: application/fhir+json\r\n"
        f"X-Request-Id: {request_id}\r\nContent-Length: 2000\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
    writer.write(head)
    await writer.drain()
    started = time.monotonic()
    trickling = asyncio.create_task(_trickle(writer, b'{"resourceType": "Patient"' + b" " * 1974))
    received = await _read_until_closed(reader)
    cut_after = time.monotonic() - started
    await trickling
    await _close(writer)
    assert received.startswith(b"HTTP/1.1 408 ")
    assert cut_after < 2 * DEADLINE + 2, f"cut after {cut_after:.1f} s"
    events = await live.events(request_id)
    assert [(event["outcome"], event.get("outcomeDesc")) for event in events] == [("4", CLIENT_DISCONNECTED)]


async def test_clients_that_disconnect_mid_body_are_audited_as_client_disconnects(live: Live) -> None:
    request_ids = [f"gone-{uuid.uuid4()}" for _ in range(10)]
    for request_id in request_ids:
        reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
        writer.write(
            (
                "POST /fhir/Patient HTTP/1.1\r\nHost: test\r\n"
                f"Authorization: Bearer {live.token}\r\nContent-Type: application/fhir+json\r\n"
                f"X-Request-Id: {request_id}\r\nContent-Length: 5000\r\n\r\n"
                '{"resourceType": "Patient", "name": ['
            ).encode()
        )
        await writer.drain()
        await asyncio.sleep(0.05)
        await _close(writer)
    outcomes = [
        (event["outcome"], event.get("outcomeDesc"))
        for request_id in request_ids
        for event in await live.events(request_id)
    ]
    assert outcomes == [("4", CLIENT_DISCONNECTED)] * len(request_ids)


async def test_head_is_answered_with_the_headers_of_get_and_no_body(live: Live) -> None:
    headers = {"Authorization": f"Bearer {live.token}"}
    async with httpx.AsyncClient(base_url=live.origin, timeout=10) as http:
        created = await http.post("/fhir/Patient", json=patient_resource(), headers=headers)
        assert created.status_code == 201
        path = f"/fhir/Patient/{created.json()['id']}"
        got, head = await http.get(path, headers=headers), await http.head(path, headers=headers)
        metadata = await http.head("/fhir/metadata")
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["etag"] == got.headers["etag"]
    assert (metadata.status_code, metadata.content) == (200, b"")


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", b"family=Martin"),
        ("multipart/form-data; boundary=xyz", b"--xyz\r\nnot a part header\r\n\r\njunk"),
        ("multipart/form-data; boundary=xyz", b"\x00\xff\xfe junk without any boundary"),
    ],
)
async def test_an_unreadable_form_search_is_a_400_operation_outcome(
    live: Live, content_type: str, body: bytes
) -> None:
    headers = {"Authorization": f"Bearer {live.token}", "Content-Type": content_type}
    async with httpx.AsyncClient(base_url=live.origin, timeout=10) as http:
        response = await http.post("/fhir/Patient/_search", content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert response.json()["resourceType"] == "OperationOutcome"
