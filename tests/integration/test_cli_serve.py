"""`fhir-server serve`, `audit verify` and `token` as real processes on the embedded database.

The data directory belongs to one server at a time (a second `serve` is refused in one line naming the
owner's pid, a lock left by a killed server is taken over), the running database's URI is published in
the data directory for `audit verify`, a stop by SIGINT/SIGTERM is quick and releases everything, and
`token` mints for the served base URL by default. Every wait is bounded.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from fhir_server.auth.devkeys import mint_token
from fhir_server.storage.embedded import free_port
from tests.integration.conftest import patient_resource

STARTUP_SECONDS = 120.0
STOP_SECONDS = 8.0
"""A stop by signal: the server closes its connections, then the embedded database (~2 s) stops."""
COMMAND_SECONDS = 60.0


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    @property
    def storage(self) -> Path:
        return self.data_dir / "embedded-db"

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def token(self, *scopes: str, audience: str | None = None) -> str:
        return mint_token(
            self.data_dir, audience=audience or self.base_url, subject="cli-test", scopes=list(scopes)
        )


def server_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FHIR_")}
    env.update({"FHIR_DATA_DIR": str(data_dir), "FHIR_CONSENT_DEFAULT": "deny", **extra})
    return env


def start(data_dir: Path, *arguments: str, env: dict[str, str] | None = None) -> Served:
    """`fhir-server serve` in a session of its own (so a test can signal it as a terminal would)."""
    port = free_port()
    log = data_dir.parent / f"{data_dir.name}-{port}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "fhir_server.cli", "serve", "--port", str(port), *arguments],
            env=env or server_env(data_dir),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Served(process, port, data_dir, log)


def wait_healthy(served: Served) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        exited = served.process.poll()
        assert exited is None, f"serve exited {exited}:\n{served.log_text()}"
        try:
            if httpx.get(f"http://127.0.0.1:{served.port}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"serve did not become healthy:\n{served.log_text()}")


def stop(served: Served, signum: int = signal.SIGTERM) -> float:
    """Signal the server's process group (a terminal's Ctrl+C); the seconds it took to exit."""
    started = time.monotonic()
    os.killpg(served.process.pid, signum)
    try:
        served.process.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        served.process.kill()
        served.process.wait()
        raise AssertionError(f"serve did not stop within {STOP_SECONDS} s:\n{served.log_text()}") from None
    return time.monotonic() - started


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":  # exited, waiting for its (dead) parent's reaper
            return True
        time.sleep(0.1)
    return False


def cli(*arguments: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fhir_server.cli", *arguments],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=COMMAND_SECONDS,
    )


def claims_of(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def assert_one_line_error(result: subprocess.CompletedProcess[str], fragments: Sequence[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], result.stderr


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = start(tmp_path_factory.mktemp("cli-serve") / "data")
    try:
        wait_healthy(served)
        yield served
    finally:
        if served.process.poll() is None:
            stop(served)


def test_a_second_serve_on_the_same_data_directory_is_refused_in_one_line(running: Served) -> None:
    port = free_port()
    result = cli("serve", "--port", str(port), env=server_env(running.data_dir))
    assert result.returncode == 1
    assert_one_line_error(result, ["is in use by", f"pid {running.process.pid}", "FHIR_DATA_DIR"])
    assert running.process.poll() is None


def test_the_running_database_uri_is_published_and_audit_verify_uses_it(running: Served) -> None:
    uri = (running.storage / "mongodb.uri").read_text().strip()
    assert uri.startswith("mongodb://127.0.0.1:")
    assert (running.storage / "owner.pid").read_text().strip() == str(running.process.pid)
    patient = httpx.post(
        f"{running.base_url}/Patient",
        json=patient_resource(),
        headers={"Authorization": f"Bearer {running.token('system/*.cruds')}"},
        timeout=30,
    )
    assert patient.status_code == 201, patient.text

    result = cli("audit", "verify", env=server_env(running.data_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"using the database of the running server (pid {running.process.pid}): {uri}" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_token_for_another_audience_is_told_which_audience_the_server_expects(running: Served) -> None:
    token = running.token("system/*.rs", audience="http://127.0.0.1:1/fhir")
    response = httpx.get(
        f"{running.base_url}/Patient", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert response.status_code == 401
    assert f"its aud must be '{running.base_url}'" in response.text


def test_token_defaults_its_audience_to_the_served_base_url_and_says_so(tmp_path: Path) -> None:
    env = server_env(tmp_path)
    by_port = cli("token", "--sub", "me", "--port", "18099", env=env)
    assert by_port.returncode == 0, by_port.stderr
    assert claims_of(by_port.stdout.strip())["aud"] == "http://127.0.0.1:18099/fhir"
    assert "audience: http://127.0.0.1:18099/fhir" in by_port.stderr

    configured = cli("token", "--sub", "me", env={**env, "FHIR_BASE_URL": "https://fhir.example.org/fhir/"})
    assert claims_of(configured.stdout.strip())["aud"] == "https://fhir.example.org/fhir"
    assert "audience: https://fhir.example.org/fhir" in configured.stderr


def test_serve_help_describes_every_option_with_its_default() -> None:
    result = cli("serve", "--help", env=dict(os.environ))
    assert result.returncode == 0
    for option, default in (
        ("--host", "127.0.0.1"),
        ("--port", "8080"),
        ("--workers", "1"),
        ("--shutdown-timeout", "10.0"),
    ):
        assert option in result.stdout
        assert f"(default: {default})" in result.stdout
    assert "FHIR_MONGODB_URI" in result.stdout


def test_workers_on_the_embedded_database_exit_2_with_a_clear_error(tmp_path: Path) -> None:
    result = cli("serve", "--workers", "2", "--port", str(free_port()), env=server_env(tmp_path))
    assert result.returncode == 2
    assert_one_line_error(result, ["--workers needs FHIR_MONGODB_URI"])


def test_ctrl_c_stops_quickly_and_releases_the_data_directory(tmp_path: Path) -> None:
    served = start(tmp_path / "data")
    wait_healthy(served)
    database_pids = children(served.process.pid)
    assert len(database_pids) == 1
    # A write opens driver sessions: closing them used to wait 30 s for a database Ctrl+C had killed.
    created = httpx.post(
        f"{served.base_url}/Patient",
        json=patient_resource(),
        headers={"Authorization": f"Bearer {served.token('system/*.cruds')}"},
        timeout=30,
    )
    assert created.status_code == 201, created.text

    elapsed = stop(served, signal.SIGINT)

    assert served.process.returncode == 0, served.log_text()
    assert elapsed < STOP_SECONDS
    assert gone(database_pids[0], within=1.0)
    assert not (served.storage / "mongodb.uri").exists()
    assert (served.storage / "owner.pid").read_text() == ""
    assert "Traceback" not in served.log_text()

    again = start(tmp_path / "data")
    wait_healthy(again)
    assert "no longer running" not in again.log_text()
    stop(again, signal.SIGTERM)
    assert again.process.returncode == 0, again.log_text()


def test_a_lock_left_by_a_killed_server_is_taken_over(tmp_path: Path) -> None:
    killed = start(tmp_path / "data")
    wait_healthy(killed)
    database_pid = children(killed.process.pid)[0]
    killed.process.kill()
    killed.process.wait(timeout=COMMAND_SECONDS)
    assert (killed.storage / "owner.pid").read_text().strip() == str(killed.process.pid)
    assert gone(database_pid, within=STOP_SECONDS), "the embedded database outlived its killed server"

    verify = cli("audit", "verify", env=server_env(tmp_path / "data"))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert f"left by pid {killed.process.pid}, which is no longer running" in verify.stderr
    assert (killed.storage / "owner.pid").read_text() == ""
    assert not (killed.storage / "mongodb.uri").exists()


def test_workers_serve_several_processes_on_mongodb(mongo_uri: str, tmp_path: Path) -> None:
    env = server_env(tmp_path, FHIR_MONGODB_URI=mongo_uri, FHIR_DATABASE=f"workers_{uuid.uuid4().hex[:10]}")
    served = start(tmp_path, "--workers", "2", env=env)
    try:
        wait_healthy(served)
        assert len(children(served.process.pid)) >= 2
        token = served.token("system/*.cruds")
        for _ in range(4):
            response = httpx.post(
                f"{served.base_url}/Patient",
                json=patient_resource(),
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
            assert response.status_code == 201, response.text
    finally:
        if served.process.poll() is None:
            stop(served)
    assert served.process.returncode == 0, served.log_text()
