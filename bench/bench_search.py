"""Search benchmark (issue 3): DocumentReference searches through the server against the raw driver.

Loads DocumentReferences over 5,000 patients with insert_many (documents built by the real storage
code path: registry extraction + record/documents.py), then, at 10 % and at 100 % of the load,
drives `DocumentReference?patient=X&status=current&_count=20` and
`DocumentReference?type=...&date=ge...&_count=20` with 32 concurrent connections from a separate
load process, and in the same run the raw driver doing the equivalent indexed `find` (same filter
fields, same sort, same limit). Prints throughput, p50, p99, the server/raw ratio and the p50 growth
from 10,000 to 100,000 documents. Aim: >= 40 % of raw; p50 grows less than 1.5x.
Run: .venv/bin/python bench/bench_search.py [--documents 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from pymongo import AsyncMongoClient, MongoClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import Result, drive, embedded_database, ratio_line, run_load_process, server_process

from fhir_server.auth.devkeys import mint_token
from fhir_server.fhir.instants import instant, now_utc
from fhir_server.record.documents import to_document
from fhir_server.search.registry import SearchRegistry

PATIENTS = 5_000
CONCURRENCY = 32
REQUESTS = 2_000
DATABASE = "fhir"
BATCH = 5_000
LOINC = "http://loinc.org"
TYPES = [
    "11488-4",
    "34133-9",
    "18842-5",
    "11506-3",
    "57133-1",
    "60591-5",
    "11502-2",
    "28570-0",
    "34117-2",
    "47420-5",
]
SINCE = "2026-01-01"
MEDECIN = "https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante"


def document(index: int, rng: random.Random) -> dict[str, Any]:
    day = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(minutes=rng.randrange(7 * 365 * 24 * 60))
    return {
        "resourceType": "DocumentReference",
        "id": str(uuid.uuid4()),
        "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:oid:1.2.250.1.999.{index}"},
        "status": "current" if rng.random() < 0.8 else "superseded",
        "type": {"coding": [{"system": LOINC, "code": rng.choice(TYPES)}]},
        "category": [{"coding": [{"system": LOINC, "code": "11369-6"}]}],
        "subject": {"reference": f"Patient/p{index % PATIENTS}"},
        "date": instant(day),
        "author": [{"reference": f"Practitioner/pr{index % 300}"}],
        "content": [{"attachment": {"contentType": "application/pdf", "url": f"Binary/b{index}"}}],
    }


def load_documents(uri: str, start: int, stop: int) -> None:
    registry = SearchRegistry.load()
    rng = random.Random(start)
    now = now_utc()
    with MongoClient(uri) as client:
        collection = client[DATABASE].DocumentReference
        batch = []
        for index in range(start, stop):
            resource = document(index, rng)
            resource["meta"] = {"versionId": "1", "lastUpdated": instant(now)}
            batch.append(to_document(resource, version=1, last_updated=now, index=registry.extract(resource)))
            if len(batch) == BATCH:
                collection.insert_many(batch, ordered=False)
                batch = []
        if batch:
            collection.insert_many(batch, ordered=False)


async def load(arguments: dict[str, Any]) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {arguments['token']}"}
    label = arguments["label"]
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    since = datetime.fromisoformat(SINCE).replace(tzinfo=UTC)
    results = []
    async with httpx.AsyncClient(base_url=arguments["base_url"], limits=limits, timeout=120) as http:

        async def by_patient(index: int) -> bool:
            patient = f"p{random.randrange(PATIENTS)}"
            response = await http.get(
                f"/fhir/DocumentReference?patient={patient}&status=current&_count=20", headers=headers
            )
            return response.status_code == 200

        async def by_type(index: int) -> bool:
            code = random.choice(TYPES)
            response = await http.get(
                f"/fhir/DocumentReference?type={LOINC}|{code}&date=ge{SINCE}&_count=20", headers=headers
            )
            return response.status_code == 200

        await drive("warm-up", by_patient, concurrency=CONCURRENCY, total=100)
        results.append(
            await drive(f"{label} server patient+status", by_patient, concurrency=CONCURRENCY, total=REQUESTS)
        )
        results.append(
            await drive(f"{label} server type+date", by_type, concurrency=CONCURRENCY, total=REQUESTS // 4)
        )

    client: AsyncMongoClient = AsyncMongoClient(
        arguments["mongo_uri"], maxPoolSize=CONCURRENCY, tz_aware=True
    )
    collection = client[DATABASE].DocumentReference

    async def raw_patient(index: int) -> bool:
        query = {
            "idx.patient": f"Patient/p{random.randrange(PATIENTS)}",
            "idx.status": "current",
            "del": False,
        }
        await collection.find(query, sort=[("_id", 1)], limit=21).to_list()
        return True

    async def raw_type(index: int) -> bool:
        query = {"idx.type": f"{LOINC}|{random.choice(TYPES)}", "idx.date:hi": {"$gte": since}, "del": False}
        await collection.find(query, sort=[("_id", 1)], limit=21).to_list()
        return True

    results.append(
        await drive(f"{label} raw patient+status", raw_patient, concurrency=CONCURRENCY, total=REQUESTS)
    )
    results.append(
        await drive(f"{label} raw type+date", raw_type, concurrency=CONCURRENCY, total=REQUESTS // 4)
    )
    await client.close()
    return [result.to_json() for result in results]


def main(documents: int) -> int:
    checkpoint = documents // 10
    results: dict[str, Result] = {}
    with embedded_database() as database, server_process(database.uri) as (base_url, data_dir):
        iua = {
            "subject_name": "Dr Bench",
            "subject_role": [{"system": MEDECIN, "code": "10"}],
            "purpose_of_use": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}
            ],
        }
        token = mint_token(
            data_dir,
            audience=base_url,
            subject="bench",
            scopes=["user/*.cruds"],
            fhir_user="Practitioner/bench",
            iua=iua,
        )
        loaded = 0
        for label, target in (("10k", checkpoint), ("100k", documents)):
            print(f"loading DocumentReferences {loaded} -> {target} ...", flush=True)
            load_documents(database.uri, loaded, target)
            loaded = target
            arguments = {
                "token": token,
                "base_url": base_url.removesuffix("/fhir"),
                "mongo_uri": database.uri,
                "label": label,
            }
            for result in run_load_process(Path(__file__), arguments):
                results[result.name] = result
                print(result.line(), flush=True)
    for label in ("10k", "100k"):
        for query in ("patient+status", "type+date"):
            server, raw = results[f"{label} server {query}"], results[f"{label} raw {query}"]
            print(ratio_line(f"{label} {query} (aim >= 40 %)", server, raw))
    for query in ("patient+status", "type+date"):
        small, large = results[f"10k server {query}"], results[f"100k server {query}"]
        growth = large.percentile(0.5) / small.percentile(0.5) if small.percentile(0.5) else 0.0
        print(f"p50 growth 10k -> 100k, {query:<16} {growth:5.2f}x (aim < 1.5x)")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--load", help="internal: run the load generator with these JSON arguments")
    parser.add_argument("--documents", type=int, default=100_000)
    options = parser.parse_args()
    if options.load:
        print(json.dumps(asyncio.run(load(json.loads(options.load)))))
    else:
        sys.exit(main(options.documents))
