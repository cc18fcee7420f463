"""Fault injection: a real `fhir-server serve` with its own embedded database, each in a session of
its own, so a test can kill (SIGKILL) or freeze (SIGSTOP) the server, its database, or both; and a
load of concurrent creates that records every answer and when it came."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import MongoClient

from fhir_server.auth.devkeys import mint_token
from tests.integration.conftest import patient_resource

MEASUREMENTS: list[str] = []
"""What the fault tests measured, shown at the end of the run (`measured` fixture)."""

SERVER_VARIABLES = ("FHIR_MONGODB_URI", "FHIR_DATABASE", "FHIR_DATA_DIR", "FHIR_BASE_URL", "FHIR_AUTH_JWKS")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class ServerProcess:
    data_dir: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}/fhir"

    def start(self, *, timeout: float = 120.0) -> None:
        env = {key: value for key, value in os.environ.items() if key not in SERVER_VARIABLES}
        env["FHIR_DATA_DIR"] = str(self.data_dir)
        log = (self.data_dir / "server.log").open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fhir_server.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {(self.data_dir / 'server.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.origin}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server did not become healthy")

    @property
    def storage(self) -> Path:
        return self.data_dir / "embedded-db"

    def database_pid(self) -> int:
        return int((self.storage / "database.pid").read_text())

    def database_uri(self) -> str:
        return (self.storage / "mongodb.uri").read_text().strip()

    def log_text(self) -> str:
        return (self.data_dir / "server.log").read_text(errors="replace")

    def signal_group(self, number: signal.Signals) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, number)

    def kill(self) -> None:
        """SIGKILL to the server and its embedded database at once, as a power cut would."""
        database = self.database_pid()
        self.signal_group(signal.SIGKILL)
        os.kill(database, signal.SIGKILL)
        assert self.process is not None
        self.process.wait()
        self.process = None

    def kill_server(self) -> None:
        """SIGKILL to the server alone: its database is left to notice."""
        assert self.process is not None
        self.signal_group(signal.SIGKILL)
        self.process.wait()
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        with_group = self.process.pid
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(with_group, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def system_token(self) -> str:
        return mint_token(
            self.data_dir,
            audience=self.base_url,
            subject="platform",
            scopes=["system/*.cruds"],
            client_id="p",
        )


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[ServerProcess]:
    running = ServerProcess(tmp_path / "data", _free_port())
    running.data_dir.mkdir()
    try:
        yield running
    finally:
        if running.process is not None and running.process.poll() is None:
            os.killpg(running.process.pid, signal.SIGKILL)
            running.process.wait()
        left = running.storage / "database.pid"
        if left.exists() and running_pid(int(left.read_text())):
            os.kill(int(left.read_text()), signal.SIGKILL)


def running_pid(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie, dead but not yet reaped, is not)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return status.rsplit(")", 1)[1].split()[0] != "Z"


def gone_within(pid: int, seconds: float) -> float | None:
    """How long `pid` took to exit, None if it still runs after `seconds`."""
    started = time.monotonic()
    while running_pid(pid):
        if time.monotonic() - started > seconds:
            return None
        time.sleep(0.05)
    return time.monotonic() - started


@dataclass(frozen=True)
class Answer:
    started: float
    ended: float
    status: int | None
    """None: no HTTP answer (connection refused or reset, or the client's timeout)."""
    patient_id: str | None

    @property
    def seconds(self) -> float:
        return self.ended - self.started


@dataclass
class CreateLoad:
    """CLIENTS threads creating Patients without pause, each answer recorded with its times."""

    server: ServerProcess
    clients: int = 4
    timeout: float = 30.0
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> CreateLoad:
        token = self.server.system_token()
        self._threads = [threading.Thread(target=self._create, args=(token,)) for _ in range(self.clients)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 5)

    def _create(self, token: str) -> None:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
        with httpx.Client(base_url=self.server.origin, timeout=self.timeout) as http:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    response = http.post("/fhir/Patient", json=patient_resource(), headers=headers)
                except httpx.HTTPError:
                    self.answers.append(Answer(started, time.monotonic(), None, None))
                    time.sleep(0.05)
                    continue
                created = response.json()["id"] if response.status_code == 201 else None
                self.answers.append(Answer(started, time.monotonic(), response.status_code, created))
                if response.status_code != 201:
                    time.sleep(0.05)  # as a client would before retrying

    @property
    def acknowledged(self) -> list[str]:
        return [answer.patient_id for answer in self.answers if answer.patient_id is not None]

    def first(self, status: int, *, ended_after: float = 0.0, started_after: float = 0.0) -> Answer | None:
        matching = [
            answer
            for answer in list(self.answers)
            if answer.status == status and answer.ended > ended_after and answer.started > started_after
        ]
        return min(matching, key=lambda answer: answer.ended, default=None)

    def wait_for(self, status: int, *, within: float, **after: float) -> Answer | None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            found = self.first(status, **after)
            if found is not None:
                return found
            time.sleep(0.05)
        return None


def assert_all_present_and_audited(server: ServerProcess, patient_ids: list[str]) -> None:
    """Every acknowledged create is readable, and its creation's AuditEvent is stored."""
    headers = {"Authorization": f"Bearer {server.system_token()}"}
    with httpx.Client(base_url=server.origin, timeout=30) as http:
        missing = [
            patient_id
            for patient_id in patient_ids
            if http.get(f"/fhir/Patient/{patient_id}", headers=headers).status_code != 200
        ]
    assert missing == [], f"{len(missing)} of {len(patient_ids)} acknowledged creates were lost"
    with MongoClient[dict[str, Any]](server.database_uri()) as client:
        audited = {
            reference.removeprefix("Patient/").split("/")[0]
            for event in client["fhir"]["AuditEvent"].find(
                {"res.action": "C", "res.entity.what.reference": {"$regex": "^Patient/"}},
                {"res.entity.what.reference": 1},
            )
            for entity in event["res"]["entity"]
            if (reference := entity.get("what", {}).get("reference", "")).startswith("Patient/")
        }
    unaudited = sorted(set(patient_ids) - audited)
    assert unaudited == [], f"{len(unaudited)} acknowledged creates have no AuditEvent: {unaudited[:5]}"


@pytest.fixture
def measured(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Records a measurement for the run's summary and returns it, for assertion messages."""

    def note(line: str) -> str:
        MEASUREMENTS.append(f"{request.node.name}: {line}")
        return line

    return note


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if MEASUREMENTS:
        terminalreporter.section("fault measurements")
        for line in MEASUREMENTS:
            terminalreporter.write_line(line)
