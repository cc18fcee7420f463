"""REST core benchmark (issue 2): GET /fhir/Patient/{id} and POST /fhir/Patient against the raw driver.

Loads 10,000 Patients, then drives the server with 32 concurrent connections from a separate load
process, and in the same run the raw driver baseline (find_one by _id, insert_one) with the same
concurrency on the same database. Prints throughput, p50, p99 and the server/raw ratios.
Aim: read >= 50 %, create >= 35 % of raw.   Run: .venv/bin/python bench/bench_rest.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
from pymongo import AsyncMongoClient, MongoClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import drive, embedded_database, ratio_line, run_load_process, server_process

from fhir_server.auth.devkeys import mint_token
from fhir_server.fhir.instants import now_utc
from fhir_server.record.documents import to_document, to_history_document
from fhir_server.search.registry import SearchRegistry

PATIENTS = 10_000
CONCURRENCY = 32
REQUESTS = 4_000
DATABASE = "fhir"


def patient(index: int) -> dict[str, Any]:
    body = f"2{index:012d}"
    return {
        "resourceType": "Patient",
        "identifier": [
            {"system": "urn:oid:1.2.250.1.213.1.4.10", "value": f"{body}{97 - int(body) % 97:02d}"}
        ],
        "name": [{"family": f"Bench{index}", "given": ["Claire"]}],
        "gender": "female",
        "birthDate": "1984-03-12",
    }


def load_patients(uri: str) -> None:
    registry = SearchRegistry.load()
    now = now_utc()
    current, history = [], []
    for index in range(PATIENTS):
        resource = patient(index) | {"id": str(uuid.uuid4())}
        resource["meta"] = {"versionId": "1", "lastUpdated": now.isoformat()}
        document = to_document(resource, version=1, last_updated=now, index=registry.extract(resource))
        current.append(document)
        history.append(to_history_document(document))
    with MongoClient(uri) as client:
        client[DATABASE].Patient.insert_many(current)
        client[DATABASE].Patient_history.insert_many(history)


async def load(arguments: dict[str, Any]) -> list[dict[str, Any]]:
    client: AsyncMongoClient = AsyncMongoClient(arguments["mongo_uri"], maxPoolSize=CONCURRENCY)
    ids: list[str] = [str(value) for value in await client[DATABASE].Patient.distinct("_id")]
    headers = {"Authorization": f"Bearer {arguments['token']}", "Content-Type": "application/fhir+json"}
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    results = []
    async with httpx.AsyncClient(base_url=arguments["base_url"], limits=limits, timeout=60) as http:

        async def read(index: int) -> bool:
            response = await http.get(f"/fhir/Patient/{random.choice(ids)}", headers=headers)
            return response.status_code == 200

        async def create(index: int) -> bool:
            response = await http.post("/fhir/Patient", json=patient(PATIENTS + index), headers=headers)
            return response.status_code == 201

        await drive("warm-up", read, concurrency=CONCURRENCY, total=200)
        results.append(await drive("server GET Patient/{id}", read, concurrency=CONCURRENCY, total=REQUESTS))
        results.append(
            await drive("server POST Patient", create, concurrency=CONCURRENCY, total=REQUESTS // 2)
        )

    collection = client[DATABASE].Patient

    async def raw_read(index: int) -> bool:
        return await collection.find_one({"_id": random.choice(ids)}) is not None

    async def raw_insert(index: int) -> bool:
        document = {"_id": str(uuid.uuid4()), "res": patient(index), "vid": 1}
        await client[DATABASE].RawPatient.insert_one(document)
        return True

    results.append(await drive("raw find_one by _id", raw_read, concurrency=CONCURRENCY, total=REQUESTS))
    results.append(await drive("raw insert_one", raw_insert, concurrency=CONCURRENCY, total=REQUESTS // 2))
    await client.close()
    return [result.to_json() for result in results]


def main() -> int:
    with embedded_database() as database:
        print(f"loading {PATIENTS} Patients ...")
        load_patients(database.uri)
        with server_process(database.uri) as (base_url, data_dir):
            token = mint_token(
                data_dir, audience=base_url, subject="bench", scopes=["system/*.cruds", "user/*.cruds"]
            )
            arguments = {
                "token": token,
                "base_url": base_url.removesuffix("/fhir"),
                "mongo_uri": database.uri,
            }
            results = run_load_process(Path(__file__), arguments)
    by_name = {result.name: result for result in results}
    for result in results:
        print(result.line())
    print(
        ratio_line("read (aim >= 50 %)", by_name["server GET Patient/{id}"], by_name["raw find_one by _id"])
    )
    print(ratio_line("create (aim >= 35 %)", by_name["server POST Patient"], by_name["raw insert_one"]))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--load", help="internal: run the load generator with these JSON arguments")
    options = parser.parse_args()
    if options.load:
        print(json.dumps(asyncio.run(load(json.loads(options.load)))))
    else:
        sys.exit(main())
