"""Bulk export benchmark (issue 8): `$export` through the server against a raw MongoDB cursor scan.

Loads `--resources` resources (one Patient for nine DocumentReferences; stored documents built by the
storage code path, with change markers, inserted with insert_many, no search index: the export does
not need it), then in the same run: the raw driver scanning both collections with one cursor each
(every document decoded), and a system-level `$export` through `fhir-server serve` (kick-off to
completion manifest: every resource decided by the consent guard, serialized and written to GridFS),
sampling the server process's RSS every 20 ms. Downloading the files is timed apart.
Prints resources/s of both, the ratio, and the server's RSS before and at peak.
Aim: >= 50 % of the raw scan rate, RSS growth under 100 MB.
Run: .venv/bin/python bench/bench_export.py [--resources 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from pymongo import AsyncMongoClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import embedded_database, server_process

from fhir_server.auth.devkeys import mint_token
from fhir_server.fhir.instants import instant, now_utc
from fhir_server.record import documents as doc
from fhir_server.record.documents import to_document

DATABASE = "fhir"
BATCH = 5_000
DOCUMENTS_PER_PATIENT = 9


def patient(patient_id: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": patient_id,
        "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": patient_id[:15]}],
        "name": [{"family": "Martin", "given": ["Claire"]}],
        "gender": "female",
        "birthDate": "1984-03-12",
    }


def document(document_id: str, patient_id: str) -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "id": document_id,
        "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{document_id}"},
        "status": "current",
        "type": {
            "coding": [{"system": "http://loinc.org", "code": "11488-4", "display": "Consultation note"}]
        },
        "subject": {"reference": f"Patient/{patient_id}"},
        "date": "2026-10-01T09:30:00+02:00",
        "author": [{"reference": "Practitioner/dr-bench"}],
        "content": [{"attachment": {"contentType": "application/pdf", "url": f"Binary/{document_id}"}}],
    }


def stored(resource: dict[str, Any], marker: int) -> dict[str, Any]:
    now = now_utc()
    resource["meta"] = {"versionId": "1", "lastUpdated": instant(now)}
    current = to_document(resource, version=1, last_updated=now, index={})
    current[doc.CHANGE] = marker
    current[doc.CHANGE_TIME] = now
    return current


async def load(uri: str, resources: int) -> dict[str, int]:
    client: AsyncMongoClient = AsyncMongoClient(uri, tz_aware=True)
    database = client[DATABASE]
    counts = {"Patient": 0, "DocumentReference": 0}
    batches: dict[str, list[dict[str, Any]]] = {"Patient": [], "DocumentReference": []}
    patient_id = ""
    for index in range(resources):
        if index % (DOCUMENTS_PER_PATIENT + 1) == 0:
            patient_id = str(uuid.uuid4())
            resource_type, resource = "Patient", patient(patient_id)
        else:
            resource_type, resource = "DocumentReference", document(str(uuid.uuid4()), patient_id)
        batches[resource_type].append(stored(resource, index + 1))
        counts[resource_type] += 1
        if len(batches[resource_type]) == BATCH:
            await database[resource_type].insert_many(batches[resource_type], ordered=False)
            batches[resource_type] = []
    for resource_type, batch in batches.items():
        if batch:
            await database[resource_type].insert_many(batch, ordered=False)
    await client.close()
    return counts


async def raw_scan(uri: str) -> tuple[int, float]:
    """Every document of both collections through one cursor each, decoded: the storage floor."""
    client: AsyncMongoClient = AsyncMongoClient(uri, tz_aware=True)
    started = time.perf_counter()
    count = 0
    for resource_type in ("Patient", "DocumentReference"):
        async for _ in client[DATABASE][resource_type].find({}, batch_size=1000):
            count += 1
    seconds = time.perf_counter() - started
    await client.close()
    return count, seconds


def server_pid(port: str) -> int:
    """The `fhir-server serve --port <port>` child of this process."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == os.getpid() and b"serve" in command and port.encode() in command:
            return int(entry.name)
    raise RuntimeError("server process not found")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_mb(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb(self.pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def run_export(base_url: str, token: str, sampler: RssSampler) -> tuple[dict[str, Any], float, float, float]:
    """The manifest, the seconds until every file was written (`X-Progress`: all types done; the
    per-patient AuditEvents follow), the seconds until the manifest, and the peak RSS (MB) while the
    files were written."""
    headers = {"Authorization": f"Bearer {token}"}
    files_written = files_peak = 0.0
    with httpx.Client(timeout=120) as client:
        started = time.perf_counter()
        kicked = client.get(f"{base_url}/$export", headers={**headers, "Prefer": "respond-async"})
        kicked.raise_for_status()
        while True:
            polled = client.get(kicked.headers["Content-Location"], headers=headers)
            if polled.status_code == 200:
                return (
                    polled.json(),
                    files_written or time.perf_counter() - started,
                    time.perf_counter() - started,
                    files_peak or sampler.peak,
                )
            if polled.status_code != 202:
                raise RuntimeError(f"export failed: {polled.status_code} {polled.text}")
            done = re.search(r"(\d+)/(\d+) types done", polled.headers.get("X-Progress", ""))
            if not files_written and done and done.group(1) == done.group(2):
                files_written, files_peak = time.perf_counter() - started, sampler.peak
            time.sleep(0.1)


def download(manifest: dict[str, Any], token: str) -> tuple[int, int, float]:
    headers = {"Authorization": f"Bearer {token}"}
    lines = size = 0
    started = time.perf_counter()
    with httpx.Client(timeout=120) as client:
        for item in manifest["output"]:
            with client.stream("GET", item["url"], headers=headers) as response:
                response.raise_for_status()
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    lines += chunk.count(b"\n")
    return lines, size, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resources", type=int, default=200_000)
    arguments = parser.parse_args()
    with embedded_database() as database:
        # The server first: it creates its indexes on empty collections, then the load maintains them.
        with server_process(database.uri) as (base_url, data_dir):
            pid = server_pid(base_url.rsplit(":", 1)[1].split("/")[0])
            started = time.perf_counter()
            counts = asyncio.run(load(database.uri, arguments.resources))
            print(f"loaded {counts} in {time.perf_counter() - started:.0f} s")
            token = mint_token(
                data_dir, audience=base_url, subject="bench", scopes=["system/*.rs"], client_id="bench"
            )
            raw_count, raw_seconds = asyncio.run(raw_scan(database.uri))
            before = rss_mb(pid)
            with RssSampler(pid) as sampler:
                manifest, written, seconds, files_peak = run_export(base_url, token, sampler)
            exported = sum(item["count"] for item in manifest["output"])
            lines, size, download_seconds = download(manifest, token)
            raw_rate, rate, total_rate = raw_count / raw_seconds, exported / written, exported / seconds
            files = len(manifest["output"])
            print(f"raw cursor scan        {raw_count:>8} documents   {raw_rate:9.0f} /s")
            print(f"$export files written  {exported:>8} resources   {rate:9.0f} /s   {files} files")
            print(f"export / raw           {rate / raw_rate * 100:6.1f} %   (aim >= 50 %)")
            print(f"$export to manifest    {exported:>8} resources   {total_rate:9.0f} /s   (with the audit)")
            print(
                f"download               {lines:>8} lines {size / 2**20:7.1f} MB in {download_seconds:.1f} s"
            )
            print(
                f"server RSS             {before:.0f} MB before, {files_peak:.0f} MB peak writing the files, "
                f"{sampler.peak:.0f} MB peak with the audit: growth {files_peak - before:.0f} MB / "
                f"{sampler.peak - before:.0f} MB   (aim < 100 MB)"
            )
            assert exported == lines == raw_count, "every resource exported once"


if __name__ == "__main__":
    main()
