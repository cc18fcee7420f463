"""IHE MHD ITI-65 benchmark (issue 6): Provide Document Bundles against the raw driver.

Each bundle is a SubmissionSet List, 10 DocumentReferences and their 10 Binaries of 20 kB (with
size and hash), for one of 200 Patients; 16 concurrent clients from a separate load process. In the
same run, on the same database, the raw driver inserts the same resources (List, DocumentReferences,
Binaries with their base64 content) in one multi-document transaction per bundle, 16 concurrently.
Prints throughput (bundles/s), p50, p99 and the server/raw ratio. Aim: >= 30 % of raw.
Run: .venv/bin/python bench/bench_mhd.py
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import random
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
from pymongo import AsyncMongoClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import drive, embedded_database, ratio_line, run_load_process, server_process

from fhir_server.auth.devkeys import mint_token

PATIENTS = 200
DOCUMENTS = 10
CONTENT_BYTES = 20 * 1024
CONCURRENCY = 16
BUNDLES = 300
DATABASE = "fhir"
MHD_LIST_TYPES = "https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes"
SOURCE_ID = "https://profiles.ihe.net/ITI/MHD/StructureDefinition/ihe-sourceId"
PROFILE = "https://profiles.ihe.net/ITI/MHD/StructureDefinition/IHE.MHD.Minimal.ProvideBundle"


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


def resources(patient_id: str) -> list[tuple[str, dict[str, Any]]]:
    """(fullUrl, resource) of one submission: SubmissionSet, then each DocumentReference and Binary."""
    subject = {"reference": f"Patient/{patient_id}"}
    pairs: list[tuple[str, dict[str, Any]]] = []
    items = []
    for _ in range(DOCUMENTS):
        content = random.randbytes(CONTENT_BYTES)
        binary_url, reference_url = f"urn:uuid:{uuid.uuid4()}", f"urn:uuid:{uuid.uuid4()}"
        items.append({"item": {"reference": reference_url}})
        document = {
            "resourceType": "DocumentReference",
            "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{uuid.uuid4()}"},
            "status": "current",
            "type": {"coding": [{"system": "http://loinc.org", "code": "11488-4"}]},
            "subject": subject,
            "date": "2026-10-02T11:15:00+02:00",
            "author": [{"identifier": {"system": "urn:oid:1.2.250.1.71.4.2.1", "value": "810002345678"}}],
            "content": [
                {
                    "attachment": {
                        "contentType": "application/pdf",
                        "url": binary_url,
                        "size": len(content),
                        "hash": base64.b64encode(hashlib.sha1(content).digest()).decode(),
                    }
                }
            ],
        }
        binary = {
            "resourceType": "Binary",
            "contentType": "application/pdf",
            "data": base64.b64encode(content).decode(),
        }
        pairs.extend([(reference_url, document), (binary_url, binary)])
    submission = {
        "resourceType": "List",
        "extension": [{"url": SOURCE_ID, "valueIdentifier": {"value": "urn:oid:1.2.250.1.999.7.1"}}],
        "status": "current",
        "mode": "working",
        "code": {"coding": [{"system": MHD_LIST_TYPES, "code": "submissionset"}]},
        "subject": subject,
        "date": "2026-10-02T11:20:00+02:00",
        "entry": items,
    }
    return [(f"urn:uuid:{uuid.uuid4()}", submission), *pairs]


def provide_bundle(patient_id: str) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "meta": {"profile": [PROFILE]},
        "type": "transaction",
        "entry": [
            {
                "fullUrl": url,
                "resource": resource,
                "request": {"method": "POST", "url": resource["resourceType"]},
            }
            for url, resource in resources(patient_id)
        ],
    }


async def load(arguments: dict[str, Any]) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {arguments['token']}", "Content-Type": "application/fhir+json"}
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    results = []
    async with httpx.AsyncClient(base_url=arguments["base_url"], limits=limits, timeout=120) as http:
        patients = []
        for index in range(PATIENTS):
            response = await http.post("/fhir/Patient", json=patient(index), headers=headers)
            patients.append(response.json()["id"])
        bundles = [provide_bundle(random.choice(patients)) for _ in range(BUNDLES + 20)]

        async def provide(index: int) -> bool:
            response = await http.post("/fhir", json=bundles[index], headers=headers)
            return response.status_code == 200

        await drive("warm-up", lambda index: provide(BUNDLES + index), concurrency=CONCURRENCY, total=20)
        results.append(
            await drive("server ITI-65 (10 docs)", provide, concurrency=CONCURRENCY, total=BUNDLES)
        )

    client: AsyncMongoClient = AsyncMongoClient(arguments["mongo_uri"], maxPoolSize=CONCURRENCY)
    database = client[DATABASE]
    raw_bundles = [resources(random.choice(patients)) for _ in range(BUNDLES)]

    async def raw_insert(index: int) -> bool:
        by_type: dict[str, list[dict[str, Any]]] = {}
        for _, resource in raw_bundles[index]:
            identity = str(uuid.uuid4())
            by_type.setdefault(f"Raw{resource['resourceType']}", []).append(
                {"_id": identity, "vid": 1, "res": resource | {"id": identity}}
            )

        async def insert(session: Any) -> None:
            for name, documents in by_type.items():
                await database[name].insert_many(documents, session=session)

        async with client.start_session() as session:
            await session.with_transaction(insert)
        return True

    for name in ("RawList", "RawDocumentReference", "RawBinary"):
        await database.create_collection(name)

    results.append(
        await drive("raw insert_many in a transaction", raw_insert, concurrency=CONCURRENCY, total=BUNDLES)
    )
    await client.close()
    return [result.to_json() for result in results]


def main() -> int:
    with embedded_database() as database:
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
        ratio_line(
            "ITI-65 (aim >= 30 %)",
            by_name["server ITI-65 (10 docs)"],
            by_name["raw insert_many in a transaction"],
        )
    )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--load", help="internal: run the load generator with these JSON arguments")
    options = parser.parse_args()
    if options.load:
        print(json.dumps(asyncio.run(load(json.loads(options.load)))))
    else:
        sys.exit(main())
