"""Audit benchmark (issue 5): the cost of persisting an IHE BALP AuditEvent for every request.

Two servers on the same embedded database, each started by bench_audit_server.py: one with the real
audit sink (MongoDB, hash-chained, group commit), one whose sink discards the events (selectable only by
this benchmark, never by configuration). A separate load process drives `GET /fhir/Patient/{id}` and
`GET /fhir/DocumentReference?patient=X&_count=20` ("DocRef?patient=X") with 32 concurrent connections
against each, in alternating rounds of the same run, then prints throughput, p50, p99 and the
audited/null-sink ratio, and checks that the audited server stored exactly one AuditEvent per request
it served.
Aim: auditing keeps >= 70 % of the throughput.   Run: .venv/bin/python bench/bench_audit.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from pymongo import MongoClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import ROOT, Result, drive, embedded_database, run_load_process

from fhir_server.auth.devkeys import ensure_private_key, mint_token
from fhir_server.fhir.instants import now_utc
from fhir_server.record.documents import to_document
from fhir_server.search.registry import SearchRegistry
from fhir_server.storage.embedded import free_port

PATIENTS = 1_000
DOCUMENTS_PER_PATIENT = 5
CONCURRENCY = 32
REQUESTS = 800
"""Requests per round; each workload runs ROUNDS rounds on each server, alternating."""
ROUNDS = 3
WARM_UP = 50
DATABASE = "fhir"
AUDIENCE = "http://bench.invalid/fhir"
AUDITED = "audited"
DISCARDED = "null sink"
WORKLOADS = ("GET Patient/{id}", "DocRef?patient=X")
MEDECIN = "https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante"
LAUNCHER = Path(__file__).resolve().parent / "bench_audit_server.py"


def patient(index: int, identifier: str) -> dict[str, Any]:
    body = f"2{index:012d}"
    return {
        "resourceType": "Patient",
        "id": identifier,
        "identifier": [
            {"system": "urn:oid:1.2.250.1.213.1.4.10", "value": f"{body}{97 - int(body) % 97:02d}"}
        ],
        "name": [{"family": f"Bench{index}", "given": ["Claire"]}],
        "gender": "female",
        "birthDate": "1984-03-12",
    }


def document(patient_id: str, index: int) -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "id": str(uuid.uuid4()),
        "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:oid:1.2.250.1.999.{index}"},
        "status": "current",
        "type": {"coding": [{"system": "http://loinc.org", "code": "11488-4"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "date": "2026-10-01T09:30:00+02:00",
        "content": [{"attachment": {"contentType": "application/pdf", "url": "Binary/example"}}],
    }


def load_data(uri: str) -> list[str]:
    """Patients and their DocumentReferences, stored by the real extraction and document layout."""
    registry = SearchRegistry.load()
    now = now_utc()
    ids = [str(uuid.uuid4()) for _ in range(PATIENTS)]
    resources = [patient(index, identifier) for index, identifier in enumerate(ids)]
    resources += [
        document(identifier, index * DOCUMENTS_PER_PATIENT + number)
        for index, identifier in enumerate(ids)
        for number in range(DOCUMENTS_PER_PATIENT)
    ]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for resource in resources:
        resource["meta"] = {"versionId": "1", "lastUpdated": now.isoformat()}
        stored = to_document(resource, version=1, last_updated=now, index=registry.extract(resource))
        by_type.setdefault(resource["resourceType"], []).append(stored)
    with MongoClient(uri) as client:
        for resource_type, documents in by_type.items():
            client[DATABASE][resource_type].insert_many(documents)
    return ids


@contextmanager
def bench_server(mongo_uri: str, data_dir: Path, *, discard_audit: bool) -> Iterator[str]:
    """bench_audit_server.py on a free port; yields its root URL once /health answers."""
    port = free_port()
    command = [
        sys.executable,
        str(LAUNCHER),
        "--port",
        str(port),
        "--mongodb-uri",
        mongo_uri,
        "--database",
        DATABASE,
        "--data-dir",
        str(data_dir),
        "--audience",
        AUDIENCE,
    ]
    if discard_audit:
        command.append("--discard-audit")
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{root}/health", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the benchmark server did not start") from None
                time.sleep(0.2)
        yield root
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def merge(name: str, results: list[Result]) -> Result:
    return Result(
        name,
        sum(result.requests for result in results),
        sum(result.seconds for result in results),
        [latency for result in results for latency in result.latencies],
        sum(result.errors for result in results),
    )


async def load(arguments: dict[str, Any]) -> list[dict[str, Any]]:
    """The load process: warm-up, then alternating rounds on both servers, merged per server and workload.

    Warm-up results are reported too (named `warm-up ...`): every request sent counts in the audit check.
    """
    ids: list[str] = arguments["ids"]
    headers = {"Authorization": f"Bearer {arguments['token']}", "Accept": "application/fhir+json"}
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    rounds: dict[str, list[Result]] = {}
    clients = {
        variant: httpx.AsyncClient(base_url=arguments["roots"][variant], limits=limits, timeout=120)
        for variant in (AUDITED, DISCARDED)
    }

    def call(variant: str, workload: str) -> Callable[[int], Awaitable[bool]]:
        http = clients[variant]

        async def read(index: int) -> bool:
            response = await http.get(f"/fhir/Patient/{random.choice(ids)}", headers=headers)
            return response.status_code == 200

        async def search(index: int) -> bool:
            path = f"/fhir/DocumentReference?patient={random.choice(ids)}&_count=20"
            response = await http.get(path, headers=headers)
            return (
                response.status_code == 200 and len(response.json().get("entry", [])) == DOCUMENTS_PER_PATIENT
            )

        return read if workload == WORKLOADS[0] else search

    try:
        for variant in (AUDITED, DISCARDED):
            for workload in WORKLOADS:
                name = f"warm-up {variant} {workload}"
                result = await drive(name, call(variant, workload), concurrency=CONCURRENCY, total=WARM_UP)
                rounds[name] = [result]
        for workload in WORKLOADS:
            for _ in range(ROUNDS):
                for variant in (AUDITED, DISCARDED):
                    name = f"{variant} {workload}"
                    result = await drive(
                        name, call(variant, workload), concurrency=CONCURRENCY, total=REQUESTS
                    )
                    rounds.setdefault(name, []).append(result)
    finally:
        for client in clients.values():
            await client.aclose()
    return [merge(name, parts).to_json() for name, parts in rounds.items()]


def main() -> int:
    with (
        embedded_database() as database,
        tempfile.TemporaryDirectory(prefix="fhir-bench-audit-") as directory,
    ):
        data_dir = Path(directory)
        total = PATIENTS * DOCUMENTS_PER_PATIENT
        print(f"loading {PATIENTS} Patients and {total} DocumentReferences ...", flush=True)
        ids = load_data(database.uri)
        ensure_private_key(data_dir)
        with (
            bench_server(database.uri, data_dir, discard_audit=False) as audited,
            bench_server(database.uri, data_dir, discard_audit=True) as discarded,
        ):
            token = mint_token(
                data_dir,
                audience=AUDIENCE,
                subject="dr-bench",
                scopes=["user/Patient.rs", "user/DocumentReference.rs"],
                fhir_user="Practitioner/dr-bench",
                iua={
                    "subject_name": "Dr Bench",
                    "subject_role": [{"system": MEDECIN, "code": "10"}],
                    "purpose_of_use": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}
                    ],
                },
                lifetime_seconds=3600,
            )
            print("servers up; driving the load ...", flush=True)
            with MongoClient(database.uri) as client:
                before = client[DATABASE].AuditEvent.count_documents({})
                arguments = {"ids": ids, "token": token, "roots": {AUDITED: audited, DISCARDED: discarded}}
                results = run_load_process(Path(__file__), arguments)
                stored = client[DATABASE].AuditEvent.count_documents({}) - before
    by_name = {result.name: result for result in results}
    served = sum(result.requests for result in results if AUDITED in result.name)
    print(f"{CONCURRENCY} concurrent connections, {ROUNDS} alternating rounds of {REQUESTS} requests each")
    for result in results:
        if not result.name.startswith("warm-up"):
            print(result.line())
    ok = True
    for workload in WORKLOADS:
        kept = by_name[f"{AUDITED} {workload}"].throughput / by_name[f"{DISCARDED} {workload}"].throughput
        print(f"{workload:<34} audited keeps {kept * 100:6.1f} % of the throughput (aim >= 70 %)")
    print(f"AuditEvents stored by the audited server: {stored}; requests it served: {served}")
    if stored != served:
        print("MISMATCH: one AuditEvent per request is not what was stored")
        ok = False
    errors = sum(result.errors for result in results)
    if errors:
        print(f"{errors} request(s) failed")
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--load", help="internal: run the load generator with these JSON arguments")
    options = parser.parse_args()
    if options.load:
        print(json.dumps(asyncio.run(load(json.loads(options.load)))))
    else:
        sys.exit(main())
