"""Fault injection: a real `fhir-server serve` with its own embedded database, in a process group of
its own so a test can kill (SIGKILL) or freeze (SIGSTOP) the server and its database together."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from fhir_server.auth.devkeys import mint_token

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

    def signal_group(self, number: signal.Signals) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, number)

    def kill(self) -> None:
        """SIGKILL to the server and its embedded database at once, as a power cut would."""
        self.signal_group(signal.SIGKILL)
        assert self.process is not None
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
