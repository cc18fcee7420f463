"""`fhir-server export` against a live `fhir-server serve` (a real HTTP server on the embedded database).

Covers the Bulk Data client of fhir_server/exporter.py (https://hl7.org/fhir/uv/bulkdata/export.html):
kick-off, polling with the progress bar on stderr, download of every file of the manifest, a token
minted with the development key, and the refusal path (exit code 1, nothing downloaded).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fhir_server.auth.devkeys import mint_token
from fhir_server.cli import main
from fhir_server.exporter import progress_line
from fhir_server.storage.embedded import free_port
from tests.integration.conftest import document_resource, patient_resource

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def live(mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    port = free_port()
    data_dir = tmp_path_factory.mktemp("export-cli")
    base_url = f"http://127.0.0.1:{port}/fhir"
    env = dict(os.environ)
    env.update(
        {
            "FHIR_MONGODB_URI": mongo_uri,
            "FHIR_DATABASE": f"cli_{uuid.uuid4().hex[:10]}",
            "FHIR_DATA_DIR": str(data_dir),
            "FHIR_BASE_URL": base_url,
            "FHIR_CONSENT_DEFAULT": "permit",
        }
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "fhir_server.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                    break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        yield base_url, data_dir
    finally:
        process.terminate()
        process.wait(timeout=60)


def seed(base_url: str, data_dir: Path) -> list[str]:
    token = mint_token(
        data_dir, audience=base_url, subject="seed", scopes=["system/*.cruds"], client_id="seed"
    )
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    with httpx.Client(timeout=30) as client:
        patient = client.post(f"{base_url}/Patient", json=patient_resource(), headers=headers).json()["id"]
        ids = [patient]
        for _ in range(3):
            response = client.post(
                f"{base_url}/DocumentReference", json=document_resource(patient), headers=headers
            )
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
    return ids


def test_export_command_downloads_every_file_of_the_manifest(
    live: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base_url, data_dir = live
    made = seed(base_url, data_dir)
    output = tmp_path / "out"
    code = main(["export", "--base-url", base_url, "--data-dir", str(data_dir), "--output", str(output)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    manifest = json.loads((output / "manifest.json").read_text())
    exported = set()
    for item in manifest["output"]:
        path = output / item["url"].rsplit("/", 1)[-1]
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(lines) == item["count"]
        exported |= {line["id"] for line in lines}
        assert f"{path}\t{item['type']}\t{item['count']}" in captured.out
    assert set(made) <= exported
    assert "transactionTime" in captured.err and "#" * 30 in captured.err


def test_export_command_reports_a_refused_kick_off(
    live: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base_url, data_dir = live
    output = tmp_path / "out"
    arguments = ["export", "--base-url", base_url, "--data-dir", str(data_dir), "--output", str(output)]
    assert main([*arguments, "--type", "AuditEvent"]) == 1
    assert "kick-off refused: 400" in capsys.readouterr().err
    assert not output.exists()


@pytest.mark.parametrize(
    ("progress", "hashes"),
    [("0% queued", 0), ("50% (10 resources)", 15), ("100% done", 30), ("", 0), ("250% odd", 30)],
)
def test_progress_bar_fills_with_the_percentage(progress: str, hashes: int) -> None:
    assert progress_line(progress).count("#") == hashes
