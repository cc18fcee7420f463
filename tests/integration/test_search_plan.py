"""Common searches are served by an index: the query plan shows IXSCAN, not COLLSCAN.

Covers: issue 3 (indexes created at start-up from the declared parameters; query-plan tests for
patient+status, patient+type+date and identifier on DocumentReference), docs/architecture.md (compound
indexes that make the matching set small). The plan is taken for the compiled search criteria
with the live-document condition, merged flat as `search.compile.conjunction` builds them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from fhir_server.search.compile import compile_filter, conjunction
from fhir_server.search.parse import parse_search
from fhir_server.search.registry import SearchRegistry
from tests.integration.conftest import BASE_URL, Server, document_resource, patient_resource

pytestmark = pytest.mark.asyncio

REGISTRY = SearchRegistry.load()


async def _no_chain(resource_type: str, query: Mapping[str, Any], *, field: str = "_id") -> list[str]:
    raise AssertionError("these searches have no chain")


async def _plan(server: Server, query: str) -> str:
    params = [(name, value) for name, _, value in (item.partition("=") for item in query.split("&"))]
    request = parse_search("DocumentReference", params, registry=REGISTRY, strict=True, base_url=BASE_URL)
    criteria = conjunction([await compile_filter(request, resolve=_no_chain), {"del": False}])
    explained = await server.database["DocumentReference"].find(criteria, sort=[("_id", 1)]).explain()
    return str(explained["queryPlanner"]["winningPlan"])


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("patient={p}&status=current", "idx.patient"),
        ("patient={p}&type=http://loinc.org|11488-4&date=ge2026-01-01", "idx.patient"),
        ("identifier=urn:ietf:rfc:3986|urn:oid:1.2.3", "idx.identifier"),
        ("patient={p}", "idx.patient"),
    ],
)
async def test_common_searches_use_an_index(server: Server, query: str, field: str) -> None:
    created = await server.http.post("/fhir/Patient", json=patient_resource(), headers=server.as_doctor())
    patient_id = created.json()["id"]
    for _ in range(3):
        document = document_resource(patient_id)
        await server.http.post("/fhir/DocumentReference", json=document, headers=server.as_doctor())
    plan = await _plan(server, query.format(p=patient_id))
    assert "IXSCAN" in plan and "COLLSCAN" not in plan, plan
    assert f"'keyPattern': {{'{field}': 1" in plan, plan
