"""The embedded MongoDB-wire-compatible database (SecantusDB), run as a child process (DESIGN §5).

SecantusDB is GPL-2.0: it is only ever started as a separate process and spoken to over the wire
protocol, never imported.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymongo import MongoClient
from pymongo.errors import PyMongoError

STARTUP_TIMEOUT_SECONDS = 60.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class EmbeddedDatabase:
    """A SecantusDB process bound to loopback; `uri` is ready to hand to the driver once started."""

    storage_path: Path
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        # retryWrites=false: DESIGN §5, the embedded server's insert rate collapses with them on.
        return f"mongodb://{self.host}:{self.port}/?directConnection=true&retryWrites=false"

    def start(self) -> EmbeddedDatabase:
        self.storage_path.mkdir(parents=True, exist_ok=True)
        log = (self.storage_path / "secantus.log").open("ab")
        command = [
            sys.executable, "-m", "secantus",
            "--host", self.host,
            "--port", str(self.port),
            "--storage-path", str(self.storage_path / "db"),
            "--log-level", "WARNING",
            "--sync-on-commit",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self._wait_until_ready()
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"embedded database exited with code {self.process.returncode}; "
                    f"see {self.storage_path / 'secantus.log'}"
                )
            with contextlib.suppress(PyMongoError):
                with MongoClient[dict[str, Any]](self.uri, serverSelectionTimeoutMS=500) as client:
                    client.admin.command("ping")
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"embedded database did not answer within {STARTUP_TIMEOUT_SECONDS:.0f}s")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> EmbeddedDatabase:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
