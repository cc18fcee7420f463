"""Every acknowledged write survives `kill -9` of the server and its embedded database mid-load.

The embedded database commits with `--sync-on-commit`; a 201 is sent only after the commit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx

from tests.faults.conftest import ServerProcess
from tests.integration.conftest import patient_resource

CLIENTS = 6
LOAD_SECONDS = 3.0


def _create_until(stop: threading.Event, server: ServerProcess, token: str, acknowledged: list[str]) -> None:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    with httpx.Client(base_url=server.origin, timeout=10) as http:
        while not stop.is_set():
            try:
                response = http.post("/fhir/Patient", json=patient_resource(), headers=headers)
            except httpx.HTTPError:
                return
            if response.status_code == 201:
                acknowledged.append(response.json()["id"])


def test_acknowledged_creates_survive_kill_9_of_server_and_database(
    server_process: ServerProcess, measured: Callable[[str], str]
) -> None:
    server_process.start()
    token = server_process.system_token()
    acknowledged: list[str] = []
    stop = threading.Event()
    clients = [
        threading.Thread(target=_create_until, args=(stop, server_process, token, acknowledged))
        for _ in range(CLIENTS)
    ]
    for client in clients:
        client.start()
    time.sleep(LOAD_SECONDS)
    server_process.kill()
    stop.set()
    for client in clients:
        client.join(timeout=15)
    assert len(acknowledged) > 20, "the load did not get going"

    server_process.start()
    headers = {"Authorization": f"Bearer {server_process.system_token()}"}
    with httpx.Client(base_url=server_process.origin, timeout=30) as http:
        missing = [
            patient_id
            for patient_id in acknowledged
            if http.get(f"/fhir/Patient/{patient_id}", headers=headers).status_code != 200
        ]
    server_process.stop()
    counts = measured(
        f"kill -9 server and database: {len(acknowledged) - len(missing)} present "
        f"of {len(acknowledged)} acknowledged"
    )
    assert missing == [], counts
