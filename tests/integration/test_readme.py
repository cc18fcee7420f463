"""The README's shell examples, run as written against a live `fhir-server serve` (default opt-in policy).

Every ```sh block of README.md is run with bash, in a directory laid out like a checkout after
`make run`: `.venv/bin/fhir-server` (this interpreter's CLI), `examples/`, and the server's data in
`.fhir-data`. The only rewrite is the origin: `http://127.0.0.1:8080` becomes the test server's, and
FHIR_BASE_URL names it for the commands whose defaults follow the served base URL (`token`, `import`).
Blocks that need `make` (a checkout's venv) or an external tool run elsewhere (`make test` itself, the
conformance suite) are listed, so that a new kind of block is not skipped silently.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from fhir_server.storage.embedded import free_port

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
README_ORIGIN = "http://127.0.0.1:8080"
BLOCK = re.compile(r"^```sh\n(?P<body>.*?)^```", re.MULTILINE | re.DOTALL)
RUN_ELSEWHERE = ("make ", "pytest")
"""Blocks naming these are the ones `make test` and the conformance suite run themselves."""
EXPECTED_ELSEWHERE = 3
STARTUP_SECONDS = 120.0
BLOCK_SECONDS = 300.0


@dataclass(frozen=True)
class Checkout:
    directory: Path
    origin: str


def readme_blocks() -> list[str]:
    return [match["body"] for match in BLOCK.finditer(README.read_text(encoding="utf-8"))]


def served_blocks() -> list[str]:
    return [block for block in readme_blocks() if not any(word in block for word in RUN_ELSEWHERE)]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Checkout]:
    directory = tmp_path_factory.mktemp("readme")
    bin_dir = directory / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    shim = bin_dir / "fhir-server"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m fhir_server.cli "$@"\n', encoding="utf-8")
    shim.chmod(0o755)
    (directory / "examples").symlink_to(ROOT / "examples")
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("FHIR_")}
    log = directory / "server.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            [str(shim), "serve", "--port", str(port)],
            cwd=directory,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    origin = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            assert server.poll() is None, log.read_text(errors="replace")
            try:
                if httpx.get(f"{origin}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.2)
        yield Checkout(directory, origin)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def run_block(checkout: Checkout, block: str) -> str:
    script = block.replace(README_ORIGIN, checkout.origin)
    env = {key: value for key, value in os.environ.items() if not key.startswith("FHIR_")}
    env["FHIR_BASE_URL"] = f"{checkout.origin}/fhir"
    result = subprocess.run(
        ["bash", "-eu", "-c", script],
        cwd=checkout.directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=BLOCK_SECONDS,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"README block exited {result.returncode}:\n{block}\n---\n{output}"
    assert '"severity":"error"' not in result.stdout, f"README block met an error:\n{block}\n---\n{output}"
    return result.stdout


def test_every_shell_block_is_run_here_or_by_make_test() -> None:
    assert len(readme_blocks()) - len(served_blocks()) == EXPECTED_ELSEWHERE
    assert shutil.which("curl") is not None, "the README's examples use curl"


@pytest.mark.slow
def test_the_readme_examples_work_as_written(checkout: Checkout) -> None:
    outputs = [run_block(checkout, block) for block in served_blocks()]
    text = "\n".join(outputs)
    assert '"resourceType":"CapabilityStatement"' in text
    assert '"family":"Martin"' in text
    assert '"total":1' in text  # the exact identifier search finds the Patient just created
    assert "All 23 steps went as expected." in text
    imports = re.findall(r"^refused: (\d+)$", text, re.MULTILINE)
    assert imports and set(imports) == {"0"}, text
    assert "created: 5 (Binary 2, DocumentReference 2, List 1)" in text
