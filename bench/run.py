"""The request-path benchmark (issue 11): each interaction with consent and audit on, against baselines
measured in the same run, interleaved, with the database commands each request costs.

Data (insert_many of documents built by the real storage code: registry extraction, storage/documents.py):
`--patients` Patients, `--documents` DocumentReferences spread over them, and per patient one opt-in
Consent whose permit of the benchmark médecin carries a nested deny of laboratory reports (the DMP
"not my lab results" case). The server runs with FHIR_CONSENT_DEFAULT=deny, one process, as
`fhir-server serve` runs it (bench_server.py adds a command counter on its MongoDB client).

Interactions, each driven with `--concurrency` connections from a separate load process:
- GET Patient/{id} by a `system/` client;
- GET DocumentReference/{id} by the consented médecin (documents its consent permits);
- DocumentReference?patient=X&_count=20 by the médecin (consent filter in the query) and by the patient;
- POST DocumentReference by the médecin.
Baselines, in the same rounds: a minimal FastAPI app doing one `find_one` (minimal_app.py), and the raw
driver: `find_one` by `_id`, the indexed `find` the patient's search amounts to, `insert_one`.

Columns: throughput, p50, p99, database commands per request under load (the audit batch amortised)
and one request at a time, and the ratio to the interaction's reference with the issue's aim.
Runs on demand only, never in the test suite: .venv/bin/python bench/run.py [--documents 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pymongo import AsyncMongoClient, MongoClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_consent import G15, LAB, LOINC, PROFESSIONAL, document, insert, patient
from common import ROOT, Result, embedded_database

from fhir_server.auth.devkeys import mint_token
from fhir_server.search.registry import SearchRegistry
from fhir_server.storage.documents import now_utc, to_document
from fhir_server.storage.embedded import free_port

DATABASE = "fhir"
BENCH = Path(__file__).resolve().parent
IRCP = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]}
SERIAL_REQUESTS = 20

GET_PATIENT = "GET Patient/{id} (system)"
GET_DOCUMENT = "GET DocumentReference/{id} (médecin)"
SEARCH_PROFESSIONAL = "search ?patient= (médecin, nested deny)"
SEARCH_PATIENT = "search ?patient= (the patient)"
CREATE = "POST DocumentReference (médecin)"
MINIMAL = "baseline: FastAPI + find_one"
RAW_READ = "baseline: raw find_one by _id"
RAW_FIND = "baseline: raw indexed find"
RAW_INSERT = "baseline: raw insert_one"

REFERENCES: dict[str, tuple[str, float]] = {
    GET_PATIENT: (MINIMAL, 0.40),
    GET_DOCUMENT: (MINIMAL, 0.40),
    SEARCH_PROFESSIONAL: (SEARCH_PATIENT, 0.50),
    SEARCH_PATIENT: (RAW_FIND, 0.50),
    CREATE: (RAW_INSERT, 0.25),
    MINIMAL: (RAW_READ, 0.0),
}
"""Interaction -> (the reference its throughput is compared with, the issue's aim for that ratio)."""


# -- data -----------------------------------------------------------------------------------------


def opt_in_without_lab(index: int) -> dict[str, Any]:
    """Deny by default, permit the benchmark médecin, and inside that permit deny laboratory reports."""
    return {
        "resourceType": "Consent",
        "id": f"c{index}",
        "status": "active",
        "scope": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
            ]
        },
        "category": [{"coding": [{"system": LOINC, "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/p{index}"},
        "policyRule": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]
        },
        "provision": {
            "type": "deny",
            "provision": [
                {
                    "type": "permit",
                    "actor": [{"role": IRCP, "reference": {"reference": PROFESSIONAL}}],
                    "provision": [{"type": "deny", "code": [{"coding": [{"system": LOINC, "code": LAB}]}]}],
                }
            ],
        },
    }


def load_data(uri: str, documents: int, patients: int) -> None:
    registry = SearchRegistry.load()
    rng = random.Random(11)
    client: MongoClient[dict[str, Any]]
    with MongoClient(uri) as client:
        insert(client, registry, "Patient", [patient(index) for index in range(patients)])
        insert(client, registry, "Consent", [opt_in_without_lab(index) for index in range(patients)])
        for start in range(0, documents, 5_000):
            stop = min(documents, start + 5_000)
            resources = [document(i, patients, rng) for i in range(start, stop)]
            insert(client, registry, "DocumentReference", resources)


# -- processes ------------------------------------------------------------------------------------


@contextmanager
def process(arguments: list[str], health_url: str, env: dict[str, str] | None = None) -> Iterator[None]:
    """A child process, started and healthy; its output goes to a log file named on failure."""
    log = tempfile.NamedTemporaryFile("w+b", prefix="bench-", suffix=".log", delete=False)
    child = subprocess.Popen(
        [sys.executable, *arguments],
        env={**os.environ, **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(health_url, timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline or child.poll() is not None:
                    raise RuntimeError(f"{arguments[0]} did not start: see {log.name}") from None
                time.sleep(0.2)
        yield
    finally:
        child.terminate()
        child.wait(timeout=30)
        log.close()


# -- load (runs in its own process) ---------------------------------------------------------------


@dataclass
class Phase:
    name: str
    call: Callable[[int], Awaitable[bool]]
    counted: bool
    """A server interaction: its database commands are counted."""
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    requests: int = 0
    errors: int = 0
    commands: Counter[str] = field(default_factory=Counter)
    serial_commands: Counter[str] = field(default_factory=Counter)


async def run_phase(
    phase: Phase, *, concurrency: int, requests: int, max_seconds: float
) -> tuple[int, list[float], int, float]:
    """Up to `requests` calls with `concurrency` workers, stopping early after `max_seconds`."""
    counter = iter(range(requests))
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + max_seconds

    async def worker() -> None:
        nonlocal errors
        for index in counter:
            started = time.perf_counter()
            ok = await phase.call(index)
            latencies.append(time.perf_counter() - started)
            errors += not ok
            if started > deadline:
                return

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies), latencies, errors, time.perf_counter() - started


async def load(spec: dict[str, Any]) -> list[dict[str, Any]]:
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(spec["mongo_uri"], maxPoolSize=64)
    database = mongo[DATABASE]
    patients: list[str] = spec["patients"]
    patient_tokens: list[str] = spec["patient_tokens"]
    documents = [
        item["_id"]
        async for item in database.DocumentReference.find(
            {"res.type.coding.code": {"$ne": LAB}}, {"_id": 1}
        ).limit(5_000)
    ]
    system = {"Authorization": f"Bearer {spec['system_token']}"}
    professional = {
        "Authorization": f"Bearer {spec['professional_token']}",
        "Content-Type": "application/fhir+json",
    }
    concurrency: int = spec["concurrency"]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    server = httpx.AsyncClient(base_url=spec["server"], limits=limits, timeout=120)
    minimal = httpx.AsyncClient(base_url=spec["minimal"], limits=limits, timeout=120)
    rng = random.Random(7)

    def failed(response: httpx.Response, expected: int) -> bool:
        if response.status_code == expected:
            return False
        print(f"HTTP {response.status_code}: {response.text[:300]}", file=sys.stderr)
        return True

    async def get_patient(index: int) -> bool:
        response = await server.get(f"/fhir/Patient/{rng.choice(patients)}", headers=system)
        return not failed(response, 200)

    async def get_document(index: int) -> bool:
        response = await server.get(f"/fhir/DocumentReference/{rng.choice(documents)}", headers=professional)
        return not failed(response, 200)

    async def search(headers: dict[str, str], patient_index: int, *, no_lab: bool) -> bool:
        url = f"/fhir/DocumentReference?patient=p{patient_index}&_count=20"
        response = await server.get(url, headers=headers)
        if failed(response, 200):
            return False
        entries = response.json().get("entry") or []
        codes = {entry["resource"]["type"]["coding"][0]["code"] for entry in entries}
        return bool(entries) and not (no_lab and LAB in codes)

    async def search_professional(index: int) -> bool:
        return await search(professional, rng.randrange(len(patients)), no_lab=True)

    async def search_patient(index: int) -> bool:
        chosen = rng.randrange(len(patients))
        headers = {"Authorization": f"Bearer {patient_tokens[chosen]}"}
        return await search(headers, chosen, no_lab=False)

    async def create(index: int) -> bool:
        resource = document(10_000_000 + index, len(patients), rng)
        del resource["id"]
        resource["type"]["coding"][0]["code"] = "11488-4"
        resource["content"][0]["attachment"]["url"] = f"https://documents.example.org/{index}.pdf"
        response = await server.post("/fhir/DocumentReference", json=resource, headers=professional)
        return not failed(response, 201)

    async def minimal_read(index: int) -> bool:
        response = await minimal.get(f"/patient/{rng.choice(patients)}")
        return not failed(response, 200)

    async def raw_read(index: int) -> bool:
        return await database.Patient.find_one({"_id": rng.choice(patients)}) is not None

    async def raw_find(index: int) -> bool:
        query = {"idx.patient": f"Patient/p{rng.randrange(len(patients))}", "del": False}
        found = await database.DocumentReference.find(query, sort=[("_id", 1)], limit=21).to_list()
        return bool(found)

    registry = SearchRegistry.load()

    async def raw_insert(index: int) -> bool:
        resource = document(20_000_000 + index, len(patients), rng)
        now = now_utc()
        stored = to_document(resource, version=1, last_updated=now, index=registry.extract(resource))
        await database.RawDocumentReference.insert_one(stored)
        return True

    phases = [
        Phase(GET_PATIENT, get_patient, True),
        Phase(MINIMAL, minimal_read, False),
        Phase(GET_DOCUMENT, get_document, True),
        Phase(RAW_READ, raw_read, False),
        Phase(SEARCH_PROFESSIONAL, search_professional, True),
        Phase(SEARCH_PATIENT, search_patient, True),
        Phase(RAW_FIND, raw_find, False),
        Phase(CREATE, create, True),
        Phase(RAW_INSERT, raw_insert, False),
    ]

    async def commands() -> Counter[str]:
        response = await server.get("/_bench/commands")
        return Counter(response.json())

    for phase in phases:  # warm-up: connections, caches, the JIT-less paths' first calls
        await run_phase(phase, concurrency=concurrency, requests=concurrency, max_seconds=30)
    rounds: int = spec["rounds"]
    for _ in range(rounds):
        for phase in phases:
            before = await commands() if phase.counted else Counter()
            done, latencies, errors, seconds = await run_phase(
                phase,
                concurrency=concurrency,
                requests=spec["requests"] // rounds,
                max_seconds=spec["max_seconds"] / rounds,
            )
            if phase.counted:
                phase.commands += await commands() - before
            phase.requests += done
            phase.latencies.extend(latencies)
            phase.errors += errors
            phase.seconds += seconds
    for phase in phases:
        if phase.counted:
            before = await commands()
            await run_phase(phase, concurrency=1, requests=SERIAL_REQUESTS, max_seconds=60)
            phase.serial_commands = await commands() - before
    await server.aclose()
    await minimal.aclose()
    await mongo.close()
    return [
        {
            **Result(phase.name, phase.requests, phase.seconds, phase.latencies, phase.errors).to_json(),
            "commands": dict(phase.commands),
            "serial_commands": dict(phase.serial_commands),
        }
        for phase in phases
    ]


# -- report ---------------------------------------------------------------------------------------


def per_request(commands: dict[str, int], requests: int) -> str:
    total = sum(commands.values())
    if not requests:
        return "-"
    return f"{total / requests:.2f}"


def breakdown(commands: dict[str, int], requests: int) -> str:
    if not requests:
        return ""
    parts = sorted(commands.items(), key=lambda item: -item[1])
    return " ".join(f"{name} {count / requests:.2f}" for name, count in parts)


def report(rows: list[dict[str, Any]]) -> str:
    results = {row["name"]: Result.from_json(row) for row in rows}
    lines = [
        f"{'interaction':<40} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'cmd/req':>8} {'serial':>7}"
        f"  {'ratio (aim)':<40} errors",
    ]
    for row in rows:
        result = results[row["name"]]
        counted = bool(row["serial_commands"])
        ratio = ""
        if row["name"] in REFERENCES:
            reference, aim = REFERENCES[row["name"]]
            base = results[reference].throughput
            value = result.throughput / base * 100 if base else 0.0
            ratio = f"{value:5.1f} % of {reference.removeprefix('baseline: ')}"
            ratio += f" (>= {aim * 100:.0f} %)" if aim else ""
        lines.append(
            f"{row['name']:<40} {result.throughput:7.1f} {result.percentile(0.5):8.2f} "
            f"{result.percentile(0.99):8.2f} "
            f"{per_request(row['commands'], result.requests) if counted else '':>8} "
            f"{per_request(row['serial_commands'], SERIAL_REQUESTS) if counted else '':>7}"
            f"  {ratio:<40} {result.errors}"
        )
    lines.append("")
    lines.append(f"commands per request, one request at a time ({SERIAL_REQUESTS} requests):")
    for row in rows:
        if row["serial_commands"]:
            lines.append(f"  {row['name']:<40} {breakdown(row['serial_commands'], SERIAL_REQUESTS)}")
    return "\n".join(lines)


def main(options: argparse.Namespace) -> int:
    with embedded_database() as database, tempfile.TemporaryDirectory(prefix="fhir-bench-") as data_dir:
        server_port, minimal_port = free_port(), free_port()
        base_url = f"http://127.0.0.1:{server_port}/fhir"
        env = {
            "FHIR_MONGODB_URI": database.uri,
            "FHIR_DATABASE": DATABASE,
            "FHIR_DATA_DIR": data_dir,
            "FHIR_BASE_URL": base_url,
            "FHIR_CONSENT_DEFAULT": "deny",
        }
        minimal_command = [
            str(BENCH / "minimal_app.py"),
            *("--port", str(minimal_port), "--mongodb-uri", database.uri, "--database", DATABASE),
        ]
        server_command = [str(BENCH / "bench_server.py"), "--port", str(server_port)]
        with (
            process(minimal_command, f"http://127.0.0.1:{minimal_port}/health"),
            process(server_command, f"http://127.0.0.1:{server_port}/health", env),
        ):
            # Loaded once the server has created its indexes: building them over loaded collections can
            # outlast the client's socket timeout on a busy machine.
            print(
                f"loading {options.documents} DocumentReferences over {options.patients} patients,"
                " one Consent each ...",
                flush=True,
            )
            load_data(database.uri, options.documents, options.patients)
            directory = Path(data_dir)
            iua = {
                "subject_role": [{"system": G15, "code": "10"}],
                "purpose_of_use": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}
                ],
                "national_provider_identifier": "810002345678",
            }
            spec = {
                "mongo_uri": database.uri,
                "server": f"http://127.0.0.1:{server_port}",
                "minimal": f"http://127.0.0.1:{minimal_port}",
                "concurrency": options.concurrency,
                "requests": options.requests,
                "max_seconds": options.max_seconds,
                "rounds": options.rounds,
                "patients": [f"p{index}" for index in range(options.patients)],
                "system_token": mint_token(
                    directory, audience=base_url, subject="platform", scopes=["system/*.cruds"]
                ),
                "professional_token": mint_token(
                    directory,
                    audience=base_url,
                    subject="dr-bench",
                    scopes=["user/*.cruds"],
                    fhir_user=PROFESSIONAL,
                    iua=iua,
                ),
                "patient_tokens": [
                    mint_token(
                        directory,
                        audience=base_url,
                        subject=f"usager-p{index}",
                        scopes=["patient/*.cruds"],
                        fhir_user=f"Patient/p{index}",
                        patient=f"p{index}",
                    )
                    for index in range(options.patients)
                ],
            }
            with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="bench-run-") as file:
                json.dump(spec, file)
                file.flush()
                completed = subprocess.run(
                    [sys.executable, str(Path(__file__)), "--load", file.name],
                    check=True,
                    stdout=subprocess.PIPE,
                    text=True,
                    cwd=ROOT,
                )
    rows = json.loads(completed.stdout)
    print(report(rows))
    if options.json:
        Path(options.json).write_text(json.dumps(rows))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--load", help="internal: run the load generator with this spec file")
    parser.add_argument("--documents", type=int, default=10_000)
    parser.add_argument("--patients", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=2_000, help="per interaction, over all rounds")
    parser.add_argument("--max-seconds", type=float, default=40.0, help="per interaction, over all rounds")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--json", help="also write the raw results to this file")
    parsed = parser.parse_args()
    if parsed.load:
        print(json.dumps(asyncio.run(load(json.loads(Path(parsed.load).read_text())))))
    else:
        sys.exit(main(parsed))
