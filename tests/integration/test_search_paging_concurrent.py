"""Keyset paging under concurrent writes: walking every page returns each match exactly once.

Covers: issue 3 (keyset cursors, no offset; stable while writes happen), R4 http.html#paging
(opaque next/previous links), STANDARDS.md §7 (searchset links).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from tests.integration.conftest import Server, document_resource, patient_resource

pytestmark = pytest.mark.asyncio


async def _create(server: Server, resource: dict[str, Any]) -> str:
    response = await server.http.post(
        f"/fhir/{resource['resourceType']}", json=resource, headers=server.as_doctor()
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def _walk(server: Server, url: str) -> list[str]:
    seen: list[str] = []
    while url:
        response = await server.http.get(url, headers=server.as_doctor())
        assert response.status_code == 200, response.text
        bundle = response.json()
        seen.extend(entry["resource"]["id"] for entry in bundle.get("entry", []))
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), "")
        await asyncio.sleep(0)
    return seen


@pytest.mark.parametrize("order", ["", "&_sort=-date", "&_sort=date,-_lastUpdated"])
async def test_walking_pages_while_inserting_returns_each_existing_match_once(
    server: Server, order: str
) -> None:
    patient_id = await _create(server, patient_resource())
    days = [f"2026-0{1 + n % 3}-1{n % 5}T08:00:00Z" for n in range(30)]
    existing = [await _create(server, document_resource(patient_id) | {"date": day}) for day in days]

    async def insert_more() -> list[str]:
        added = []
        for n in range(20):
            added.append(await _create(server, document_resource(patient_id) | {"date": days[n % len(days)]}))
            await asyncio.sleep(0)
        return added

    walked, added = await asyncio.gather(
        _walk(server, f"/fhir/DocumentReference?patient={patient_id}&_count=4{order}"), insert_more()
    )
    counts = Counter(walked)
    assert all(counts[item] == 1 for item in existing)
    assert max(counts.values()) == 1
    assert set(walked) <= set(existing) | set(added)


async def test_previous_links_walk_back_to_the_first_page(server: Server) -> None:
    patient_id = await _create(server, patient_resource())
    for n in range(9):
        await _create(server, document_resource(patient_id) | {"date": f"2026-05-0{n + 1}T08:00:00Z"})
    url = f"/fhir/DocumentReference?patient={patient_id}&_count=4&_sort=date"
    pages = []
    while url:
        bundle = (await server.http.get(url, headers=server.as_doctor())).json()
        pages.append([entry["resource"]["id"] for entry in bundle["entry"]])
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), "")
    assert [len(page) for page in pages] == [4, 4, 1]
    url = next(link["url"] for link in bundle["link"] if link["relation"] == "previous")
    backwards = []
    while url:
        bundle = (await server.http.get(url, headers=server.as_doctor())).json()
        backwards.append([entry["resource"]["id"] for entry in bundle["entry"]])
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "previous"), "")
    assert backwards == [pages[1], pages[0]]


async def test_tampered_cursor_is_400(server: Server) -> None:
    response = await server.http.get("/fhir/Patient?_cursor=garbage", headers=server.as_doctor())
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["_cursor"]
