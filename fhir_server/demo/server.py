"""A server of the demo's own: `fhir-server serve` on the embedded database in a temporary directory.

The conformance launcher (conformance_tests/run_live.py) reuses it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

SERVER_VARIABLES = (
    "FHIR_MONGODB_URI",
    "FHIR_BASE_URL",
    "FHIR_AUTH_JWKS",
    "FHIR_AUTH_ISSUER",
    "FHIR_AUTH_AUDIENCE",
    "FHIR_CONSENT_DEFAULT",
)


@dataclass(frozen=True)
class LocalServer:
    base_url: str
    data_dir: Path
    log: Path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def local_server(
    *, consent_default: str = "deny", log_dir: Path | None = None, startup_timeout: float = 180.0
) -> Iterator[LocalServer]:
    """`fhir-server serve` on a free port, on the embedded database in a temporary FHIR_DATA_DIR; stopped
    (and its files removed) on exit. Its log goes to `log_dir/server.log` (default: the temporary dir)."""
    with tempfile.TemporaryDirectory(prefix="fhir-server-") as temporary:
        data_dir = Path(temporary) / "data"
        port = _free_port()
        env = {key: value for key, value in os.environ.items() if key not in SERVER_VARIABLES}
        env.update({"FHIR_DATA_DIR": str(data_dir), "FHIR_CONSENT_DEFAULT": consent_default})
        log = (log_dir or Path(temporary)) / "server.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as output:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fhir_server.cli",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
            try:
                origin = f"http://127.0.0.1:{port}"
                wait_healthy(origin, process, log, startup_timeout)
                yield LocalServer(f"{origin}/fhir", data_dir, log)
            finally:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def wait_healthy(origin: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"fhir-server serve exited with {process.returncode}:\n{_tail(log)}")
        try:
            if httpx.get(f"{origin}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"fhir-server did not become healthy within {timeout:.0f} s:\n{_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(encoding="utf-8", errors="replace")[-3000:]
