"""Shared benchmark machinery: a server process on a fresh embedded database, a load process, stats.

Benchmarks run on demand (`python bench/<name>.py`), never in the test suite. Every figure is
printed next to a baseline measured in the same run on the same database, as a ratio.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fhir_server.storage.embedded import EmbeddedDatabase, free_port

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    name: str
    requests: int
    seconds: float
    latencies: list[float]
    errors: int

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return 0.0
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000

    def line(self) -> str:
        return (
            f"{self.name:<34} {self.throughput:9.0f} req/s   p50 {self.percentile(0.5):7.2f} ms   "
            f"p99 {self.percentile(0.99):7.2f} ms   errors {self.errors}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "requests": self.requests,
            "seconds": self.seconds,
            "latencies": self.latencies,
            "errors": self.errors,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Result:
        return cls(data["name"], data["requests"], data["seconds"], data["latencies"], data["errors"])


async def drive(name: str, call: Callable[[int], Awaitable[bool]], *, concurrency: int, total: int) -> Result:
    """Run `total` calls with `concurrency` workers; each call returns True on success."""
    counter = iter(range(total))
    latencies: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        for index in counter:
            started = time.perf_counter()
            ok = await call(index)
            latencies.append(time.perf_counter() - started)
            if not ok:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Result(name, total, time.perf_counter() - started, latencies, errors)


def ratio_line(label: str, server: Result, raw: Result) -> str:
    ratio = server.throughput / raw.throughput if raw.throughput else 0.0
    return f"{label:<34} {ratio * 100:6.1f} % of raw throughput"


@contextmanager
def embedded_database() -> Iterator[EmbeddedDatabase]:
    with tempfile.TemporaryDirectory(prefix="fhir-bench-db-") as directory:
        with EmbeddedDatabase(Path(directory)) as database:
            yield database


@contextmanager
def server_process(mongo_uri: str, *, extra_env: dict[str, str] | None = None) -> Iterator[tuple[str, Path]]:
    """`fhir-server serve` on a free port against `mongo_uri`; yields (base URL, data dir)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="fhir-bench-data-") as data_dir:
        base_url = f"http://127.0.0.1:{port}/fhir"
        env = dict(os.environ)
        env.update(
            {
                "FHIR_MONGODB_URI": mongo_uri,
                "FHIR_DATA_DIR": data_dir,
                "FHIR_BASE_URL": base_url,
                "FHIR_CONSENT_DEFAULT": "permit",
            }
        )
        env.update(extra_env or {})
        process = subprocess.Popen(
            [sys.executable, "-m", "fhir_server.cli", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                        if response.status == 200:
                            break
                except OSError:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise RuntimeError("the server did not start") from None
                    time.sleep(0.2)
            yield base_url, Path(data_dir)
        finally:
            process.terminate()
            process.wait(timeout=30)


def run_load_process(script: Path, arguments: dict[str, Any]) -> list[Result]:
    """Run a load generator in its own process (so the client is not the server's bottleneck)."""
    completed = subprocess.run(
        [sys.executable, str(script), "--load", json.dumps(arguments)],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return [Result.from_json(item) for item in json.loads(completed.stdout)]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0
