"""Consent benchmark (issue 4): the same searches by a permitted professional and by the patient itself.

Loads DocumentReferences over patients (default 20,000 over 1,000), each patient with 2 active Consents
(an opt-in permit of the benchmark médecin, and a deny of laboratory reports for everyone), all with
insert_many of documents built by the real storage code path (registry extraction + record/documents.py,
history documents included). Then, on a server with FHIR_CONSENT_DEFAULT=deny, drives
`DocumentReference?patient=X&status=current&_count=20` with 32 concurrent connections from a separate load
process: by the professional (consents loaded and evaluated, filter in the query, post-check) and by the
patient of X with a `patient/` token (no consent evaluation), alternating rounds in the same run.
Prints throughput, p50, p99 and the professional/patient ratio. Aim: >= 80 %.
Run: .venv/bin/python bench/bench_consent.py [--documents 20000 --patients 1000 --requests 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from pymongo import MongoClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import Result, drive, embedded_database, ratio_line, run_load_process, server_process

from fhir_server.auth.devkeys import mint_token
from fhir_server.fhir.instants import instant, now_utc
from fhir_server.record.documents import to_document, to_history_document
from fhir_server.search.registry import SearchRegistry

CONCURRENCY = 32
ROUNDS = 2
DATABASE = "fhir"
BATCH = 5_000
LOINC = "http://loinc.org"
LAB = "11502-2"
TYPES = ["11488-4", "18842-5", LAB, "34133-9", "11506-3", "57133-1"]
G15 = "https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante"
IRCP = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]}
PROFESSIONAL = "Practitioner/dr-bench"


def patient(index: int) -> dict[str, Any]:
    body = f"2{index:012d}"
    return {
        "resourceType": "Patient",
        "id": f"p{index}",
        "identifier": [
            {"system": "urn:oid:1.2.250.1.213.1.4.10", "value": f"{body}{97 - int(body) % 97:02d}"}
        ],
        "name": [{"family": f"Bench{index}", "given": ["Claire"]}],
        "gender": "female",
        "birthDate": "1984-03-12",
    }


def document(index: int, patients: int, rng: random.Random) -> dict[str, Any]:
    day = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(minutes=rng.randrange(7 * 365 * 24 * 60))
    return {
        "resourceType": "DocumentReference",
        "id": str(uuid.uuid4()),
        "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:oid:1.2.250.1.999.{index}"},
        "status": "current" if rng.random() < 0.8 else "superseded",
        "type": {"coding": [{"system": LOINC, "code": rng.choice(TYPES)}]},
        "category": [{"coding": [{"system": LOINC, "code": "11369-6"}]}],
        "subject": {"reference": f"Patient/p{index % patients}"},
        "date": instant(day),
        "author": [{"reference": f"Practitioner/pr{index % 300}"}],
        "content": [{"attachment": {"contentType": "application/pdf", "url": f"Binary/b{index}"}}],
    }


def consents(index: int) -> list[dict[str, Any]]:
    """Opt-in for the benchmark médecin, and laboratory reports denied to every professional."""
    common = {
        "resourceType": "Consent",
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
    }
    opt_in = common | {
        "id": f"c{index}-optin",
        "provision": {
            "type": "deny",
            "provision": [
                {"type": "permit", "actor": [{"role": IRCP, "reference": {"reference": PROFESSIONAL}}]}
            ],
        },
    }
    no_lab = common | {
        "id": f"c{index}-nolab",
        "provision": {"type": "deny", "code": [{"coding": [{"system": LOINC, "code": LAB}]}]},
    }
    return [opt_in, no_lab]


def insert(
    client: MongoClient, registry: SearchRegistry, resource_type: str, resources: list[dict[str, Any]]
) -> None:
    now = now_utc()
    current, history = [], []
    for resource in resources:
        resource["meta"] = {"versionId": "1", "lastUpdated": instant(now)}
        document_ = to_document(resource, version=1, last_updated=now, index=registry.extract(resource))
        current.append(document_)
        history.append(to_history_document(document_))
    for start in range(0, len(current), BATCH):
        client[DATABASE][resource_type].insert_many(current[start : start + BATCH], ordered=False)
        client[DATABASE][f"{resource_type}_history"].insert_many(
            history[start : start + BATCH], ordered=False
        )


def load_data(uri: str, documents: int, patients: int) -> None:
    registry = SearchRegistry.load()
    rng = random.Random(4)
    with MongoClient(uri) as client:
        insert(client, registry, "Patient", [patient(index) for index in range(patients)])
        insert(client, registry, "Consent", [c for index in range(patients) for c in consents(index)])
        for start in range(0, documents, BATCH):
            stop = min(documents, start + BATCH)
            insert(
                client,
                registry,
                "DocumentReference",
                [document(i, patients, rng) for i in range(start, stop)],
            )


def merged(name: str, parts: list[Result]) -> Result:
    return Result(
        name,
        sum(part.requests for part in parts),
        sum(part.seconds for part in parts),
        [latency for part in parts for latency in part.latencies],
        sum(part.errors for part in parts),
    )


async def load(arguments: dict[str, Any]) -> list[dict[str, Any]]:
    spec = json.loads(Path(arguments["spec"]).read_text())
    professional = {"Authorization": f"Bearer {spec['professional']}"}
    patient_tokens: list[str] = spec["patients"]
    requests: int = spec["requests"]
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    by_mode: dict[str, list[Result]] = {"professional": [], "patient": []}
    async with httpx.AsyncClient(base_url=spec["base_url"], limits=limits, timeout=120) as http:

        async def search(index: int, headers: dict[str, str], *, professional_view: bool) -> bool:
            try:
                response = await http.get(
                    f"/fhir/DocumentReference?patient=p{index}&status=current&_count=20", headers=headers
                )
            except httpx.HTTPError as error:
                print(f"{type(error).__name__}: {error}", file=sys.stderr)
                return False
            if response.status_code != 200:
                print(f"HTTP {response.status_code}: {response.text[:300]}", file=sys.stderr)
                return False
            codes = {e["resource"]["type"]["coding"][0]["code"] for e in response.json().get("entry") or []}
            return not (professional_view and LAB in codes)

        async def as_professional(call: int) -> bool:
            return await search(random.randrange(len(patient_tokens)), professional, professional_view=True)

        async def as_patient(call: int) -> bool:
            index = random.randrange(len(patient_tokens))
            headers = {"Authorization": f"Bearer {patient_tokens[index]}"}
            return await search(index, headers, professional_view=False)

        await drive("warm-up", as_professional, concurrency=CONCURRENCY, total=CONCURRENCY)
        await drive("warm-up", as_patient, concurrency=CONCURRENCY, total=CONCURRENCY)
        for _ in range(ROUNDS):
            by_mode["professional"].append(
                await drive("p", as_professional, concurrency=CONCURRENCY, total=requests // ROUNDS)
            )
            by_mode["patient"].append(
                await drive("s", as_patient, concurrency=CONCURRENCY, total=requests // ROUNDS)
            )
    results = [
        merged("professional (consent-filtered)", by_mode["professional"]),
        merged("patient itself (no consent)", by_mode["patient"]),
    ]
    return [result.to_json() for result in results]


def main(documents: int, patients: int, requests: int) -> int:
    with embedded_database() as database:
        print(f"loading {documents} DocumentReferences over {patients} patients, 2 Consents each ...")
        load_data(database.uri, documents, patients)
        with server_process(database.uri, extra_env={"FHIR_CONSENT_DEFAULT": "deny"}) as (base_url, data_dir):
            professional = mint_token(
                data_dir,
                audience=base_url,
                subject="dr-bench",
                scopes=["user/*.cruds"],
                fhir_user=PROFESSIONAL,
                iua={
                    "subject_role": [{"system": G15, "code": "10"}],
                    "purpose_of_use": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}
                    ],
                    "national_provider_identifier": "810002345678",
                },
            )
            tokens = [
                mint_token(
                    data_dir,
                    audience=base_url,
                    subject=f"usager-p{index}",
                    scopes=["patient/*.cruds"],
                    fhir_user=f"Patient/p{index}",
                    patient=f"p{index}",
                )
                for index in range(patients)
            ]
            with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="bench-consent-") as spec:
                json.dump(
                    {
                        "professional": professional,
                        "patients": tokens,
                        "requests": requests,
                        "base_url": base_url.removesuffix("/fhir"),
                    },
                    spec,
                )
                spec.flush()
                results = run_load_process(Path(__file__), {"spec": spec.name})
    by_name = {result.name: result for result in results}
    for result in results:
        print(result.line())
    print(
        ratio_line(
            "consent-filtered (aim >= 80 %)",
            by_name["professional (consent-filtered)"],
            by_name["patient itself (no consent)"],
        ).replace("of raw throughput", "of the patient's own throughput")
    )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--load", help="internal: run the load generator with these JSON arguments")
    parser.add_argument("--documents", type=int, default=20_000)
    parser.add_argument("--patients", type=int, default=1_000)
    parser.add_argument("--requests", type=int, default=1_000, help="searches per mode")
    options = parser.parse_args()
    if options.load:
        print(json.dumps(asyncio.run(load(json.loads(options.load)))))
    else:
        sys.exit(main(options.documents, options.patients, options.requests))
