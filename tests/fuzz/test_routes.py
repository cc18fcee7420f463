"""Fuzzing every route of the table of interactions (interactions/dispatch.py ROUTES): no 5xx.

The app has no OpenAPI document of its FHIR routes (one catch-all door), so requests are generated
from the table itself: a route, its path with declared types and ids that exist (or do not, or are
junk), the search parameters of capability/search-parameters.json with random modifiers, prefixes
and values, and bodies that are valid resources mutated by hypothesis, random JSON, or random bytes
under a random content type; tokens of a platform, a patient, none, or junk. Bounded by a wall-clock
budget as well as an example count; the statuses seen are collected and asserted to be varied, so
the pass cannot succeed by sending only requests the server refuses at the door.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo import AsyncMongoClient

from fhir_server.app import create_app
from fhir_server.fhir.resources import SUPPORTED_TYPES
from fhir_server.interactions.dispatch import ROUTES
from fhir_server.settings import Settings
from tests.integration.conftest import BASE_URL, Server, document_resource, patient_resource

BUDGET_SECONDS = 60.0
EXAMPLES = 1500
SEARCH_PARAMETERS = Path(__file__).parents[2] / "capability" / "search-parameters.json"
EXAMPLES_DIRECTORY = Path(__file__).parents[2] / "examples"
MEDIA_TYPES = (
    "application/fhir+json",
    "application/json",
    "application/json-patch+json",
    "application/x-www-form-urlencoded",
    "multipart/form-data",
    "multipart/form-data; boundary=b",
    "text/plain",
    "application/pdf",
    "",
)
SPECIAL_PARAMETERS = (
    "_count",
    "_sort",
    "_include",
    "_revinclude",
    "_elements",
    "_summary",
    "_total",
    "_since",
    "_at",
    "_format",
    "_type",
    "_has:DocumentReference:patient:status",
    "subject.name",
    "patient.identifier",
    "_outputFormat",
    "_typeFilter",
    "page",
)
MODIFIERS = (
    "",
    ":missing",
    ":not",
    ":exact",
    ":contains",
    ":text",
    ":below",
    ":above",
    ":identifier",
    ":bogus",
)
PREFIXES = ("", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap", "zz")

STATUSES: Counter[int] = Counter()
"""Every status answered during the pass (logged: `-o log_cli=true --log-cli-level=INFO` shows it)."""
log = logging.getLogger(__name__)


def _parameters() -> dict[str, list[str]]:
    by_type: dict[str, list[str]] = {name: [] for name in SUPPORTED_TYPES}
    for entry in json.loads(SEARCH_PARAMETERS.read_text())["entry"]:
        resource = entry["resource"]
        for base in resource["base"]:
            for name in SUPPORTED_TYPES if base == "Resource" else [base]:
                by_type.setdefault(name, []).append(resource["code"])
    return by_type


PARAMETERS = _parameters()
EXAMPLES_BY_TYPE: dict[str, dict[str, Any]] = {
    example["resourceType"]: example
    for example in (
        json.loads((EXAMPLES_DIRECTORY / name).read_text())
        for name in ("consents/consent-grant-gp.json", "documents/binary-lab-report.json")
    )
}


@pytest.fixture(scope="module")
async def fuzzed(mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    name = f"fuzz_{uuid.uuid4().hex[:10]}"
    data_dir = tmp_path_factory.mktemp("fuzz")
    settings = Settings(
        mongodb_uri=mongo_uri, database=name, data_dir=data_dir, base_url=BASE_URL, consent_default="permit"
    )
    app = create_app(settings)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 50000))
            async with httpx.AsyncClient(
                transport=transport, base_url=BASE_URL.removesuffix("/fhir")
            ) as http:
                yield Server(app, http, client[name], data_dir)
    finally:
        await client.drop_database(name)
        await client.close()


@pytest.fixture(scope="module")
async def known(fuzzed: Server) -> dict[str, Any]:
    """Resources that exist, so that generated paths and bodies also reach the data."""
    headers = fuzzed.as_system()
    patient = (await fuzzed.http.post("/fhir/Patient", json=patient_resource(), headers=headers)).json()
    document_body = document_resource(patient["id"])
    document_body["content"] = [{"attachment": {"contentType": "text/plain", "data": "aGVsbG8="}}]
    document = (await fuzzed.http.post("/fhir/DocumentReference", json=document_body, headers=headers)).json()
    return {
        "ids": [patient["id"], document["id"]],
        "resources": {"Patient": patient, "DocumentReference": document},
        "tokens": {
            "system": headers["Authorization"],
            "patient": "Bearer "
            + fuzzed.token(scopes=["patient/*.cruds"], sub=patient["id"], patient=patient["id"]),
            "junk": "Bearer not.a.token",
        },
    }


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
SEGMENT = st.text(st.characters(codec="utf-8", exclude_characters="/?#"), min_size=1, max_size=12)


@st.composite
def _mutated(draw: st.DrawFn, resource: dict[str, Any]) -> dict[str, Any]:
    """`resource` with a few elements removed, replaced by random JSON, or added."""
    mutated = json.loads(json.dumps(resource))
    for _ in range(draw(st.integers(0, 3))):
        node: Any = mutated
        while isinstance(node, dict | list) and node and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
            if not isinstance(node[key], dict | list) or not node[key]:
                break
            node = node[key]
        if isinstance(node, dict) and node:
            key = draw(st.sampled_from(sorted(node)))
            action = draw(st.sampled_from(["drop", "replace", "add"]))
            if action == "drop":
                del node[key]
            elif action == "replace":
                node[key] = draw(JSON)
            else:
                node[draw(st.text(max_size=12))] = draw(JSON)
    return mutated


@st.composite
def _request(draw: st.DrawFn, known: dict[str, Any]) -> dict[str, Any]:
    route = draw(st.sampled_from(ROUTES))
    known_type = draw(st.integers(0, 9)) > 0
    resource_type = draw(st.sampled_from(SUPPORTED_TYPES) if known_type else SEGMENT)
    segments = []
    for segment in route.shape:
        if segment == "{type}":
            segments.append(resource_type)
        elif segment == "{id}":
            segments.append(draw(st.sampled_from(known["ids"]) | SEGMENT))
        elif segment.startswith("{"):
            segments.append(draw(st.sampled_from(["1", "missing"]) | SEGMENT))
        else:
            segments.append(segment)
    method = draw(st.sampled_from(sorted(route.methods | ({"HEAD"} if "GET" in route.methods else set()))))
    names = [*PARAMETERS.get(resource_type, PARAMETERS["Patient"]), *SPECIAL_PARAMETERS]
    query = [
        (
            draw(st.sampled_from(names)) + draw(st.sampled_from(MODIFIERS)),
            draw(st.sampled_from(PREFIXES)) + draw(st.text(max_size=30)),
        )
        for _ in range(draw(st.integers(0, 3)))
    ]
    base = known["resources"].get(resource_type) or EXAMPLES_BY_TYPE.get(resource_type) or patient_resource()
    body_kind = draw(st.sampled_from(["none", "mutated", "json", "bytes"]))
    body: bytes | None = None
    if method in ("POST", "PUT", "PATCH") and body_kind != "none":
        if body_kind == "mutated":
            body = json.dumps(draw(_mutated(base))).encode()
        elif body_kind == "json":
            body = json.dumps(draw(JSON)).encode()
        else:
            body = draw(st.binary(max_size=200))
    headers = {"Content-Type": draw(st.sampled_from(MEDIA_TYPES[:1] * len(MEDIA_TYPES) + MEDIA_TYPES))}
    token = draw(st.sampled_from(["system", "system", "system", "patient", "junk", "none"]))
    if token != "none":
        headers["Authorization"] = known["tokens"][token]
    if draw(st.booleans()):
        headers["Prefer"] = draw(
            st.sampled_from(["respond-async", "return=representation", "handling=strict"])
        )
    return {
        "method": method,
        "url": "/fhir/" + "/".join(quote(segment, safe="$") for segment in segments),
        "params": query,
        "content": body,
        "headers": headers,
    }


@pytest.mark.slow
async def test_no_route_answers_5xx_to_generated_requests(fuzzed: Server, known: dict[str, Any]) -> None:
    stop_at = time.monotonic() + BUDGET_SECONDS
    failures: list[str] = []
    loop = asyncio.get_running_loop()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(data=st.data())
    def one(data: st.DataObject) -> None:
        if time.monotonic() > stop_at:
            return
        request = data.draw(_request(known))
        # Hypothesis drives from a thread; each request runs on the app's event loop.
        response = asyncio.run_coroutine_threadsafe(fuzzed.http.request(**request, timeout=60), loop).result()
        STATUSES[response.status_code] += 1
        if response.status_code >= 500:
            failures.append(f"{response.status_code} {request!r}: {response.text[:300]}")
        assert response.status_code < 500, failures[-1]

    await asyncio.to_thread(one)
    log.info("fuzzing: %d requests, statuses %s", sum(STATUSES.values()), dict(sorted(STATUSES.items())))
    assert failures == []
    assert sum(STATUSES.values()) >= 300
    assert {200, 201} & STATUSES.keys() and {400, 404} & STATUSES.keys() and 401 in STATUSES
