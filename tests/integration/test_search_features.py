"""Search features end to end on the embedded database, through the HTTP API.

Covers: R4 search.html (string, token, date, reference, uri matching and modifiers; chaining, `_has`,
AND by repetition / OR by comma; `_include`, `_revinclude` with `:iterate`; `_sort`, `_count`,
`_total`, `_summary`, `_elements`; unknown parameters with `Prefer: handling`), STANDARDS.md §7
(searchset Bundle: self link, entry.search.mode, fullUrl), MHD ITI-67 parameters.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.conftest import BASE_URL, Server, document_resource, patient_resource, unique

pytestmark = pytest.mark.asyncio


async def create(server: Server, resource: dict[str, Any]) -> dict[str, Any]:
    response = await server.http.post(
        f"/fhir/{resource['resourceType']}", json=resource, headers=server.as_doctor()
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def search(server: Server, query: str, *, status: int = 200, **headers: str) -> dict[str, Any]:
    response = await server.http.get(f"/fhir/{query}", headers=server.as_doctor(**headers))
    assert response.status_code == status, response.text
    return dict(response.json())


def matches(bundle: dict[str, Any]) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"}


def included(bundle: dict[str, Any]) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "include"}


async def patient_with_documents(
    server: Server, documents: list[dict[str, Any]], **kwargs: Any
) -> tuple[str, list[str]]:
    patient = await create(server, patient_resource(**kwargs))
    ids = []
    for extra in documents:
        document = document_resource(patient["id"]) | extra
        ids.append((await create(server, document))["id"])
    return patient["id"], ids


# -- string ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("query", "hit"),
    [
        ("family={f}", True),
        ("family={f_lower_prefix}", True),
        ("family:exact={f}", True),
        ("family:exact={f_lower}", False),
        ("family:contains={f_middle}", True),
        ("family={f_middle}", False),
        ("given=elo", True),
        ("given=ÉLO", True),
        ("name=elodie", True),
        ("name:missing=false", True),
    ],
)
async def test_string_matching(server: Server, query: str, hit: bool) -> None:
    family = "Zeb" + unique()
    patient = await create(server, patient_resource(family=family, given="Élodie"))
    values = {
        "f": family,
        "f_lower": family.lower(),
        "f_lower_prefix": family.lower()[:8],
        "f_middle": family[3:9],
    }
    bundle = await search(server, f"Patient?_id={patient['id']}&" + query.format(**values))
    assert (patient["id"] in matches(bundle)) is hit


# -- token ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("query", "hit"),
    [
        ("type=11488-4", True),
        ("type=http://loinc.org|11488-4", True),
        ("type=http://loinc.org|", True),
        ("type=|11488-4", False),
        ("type=http://snomed.info/sct|11488-4", False),
        ("type:not=11488-4", False),
        ("type:not=34133-9", True),
        ("type:text=consult", True),
        ("type:text=discharge", False),
        ("status=current,superseded", True),
        ("status=superseded", False),
        ("identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|FILL|{v}", True),
        ("identifier=urn:sys:{u}|{v}", True),
        ("identifier=urn:other|{v}", False),
        ("category:missing=true", True),
        ("security-label:missing=false", False),
    ],
)
async def test_token_matching(server: Server, query: str, hit: bool) -> None:
    u, v = unique(), unique()
    identifier = {
        "system": f"urn:sys:{u}",
        "value": v,
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "FILL"}]},
    }
    patient_id, (document_id,) = await patient_with_documents(server, [{"identifier": [identifier]}])
    bundle = await search(server, f"DocumentReference?patient={patient_id}&" + query.format(u=u, v=v))
    assert (document_id in matches(bundle)) is hit


async def test_boolean_and_contact_point_tokens(server: Server) -> None:
    email = f"{unique()}@example.fr"
    patient = await create(
        server, patient_resource() | {"active": True, "telecom": [{"system": "email", "value": email}]}
    )
    assert patient["id"] in matches(await search(server, f"Patient?email={email}&active=true"))
    assert patient["id"] not in matches(await search(server, f"Patient?email={email}&active=false"))
    assert patient["id"] not in matches(await search(server, f"Patient?phone={email}"))


# -- date -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("query", "hit"),
    [
        ("date=2026-10-01", True),
        ("date=2026-10", True),
        ("date=2026", True),
        ("date=2026-10-02", False),
        ("date=ne2026-10-01", False),
        ("date=ne2025", True),
        ("date=gt2026-09-30", True),
        ("date=gt2026-10-01", False),
        ("date=ge2026-10-01", True),
        ("date=lt2026-10-02", True),
        ("date=lt2026-10-01", False),
        ("date=le2026-10-01", True),
        ("date=sa2026-09", True),
        ("date=sa2026-10", False),
        ("date=eb2026-11", True),
        ("date=eb2026-10-01", False),
        ("date=ap2026-10-01", True),
        ("date=2026-10-01T07:30:00Z", True),
        ("date=ge2026-01-01&date=lt2027-01-01", True),
        ("date=ge2027-01-01&date=lt2028-01-01", False),
        ("period=2026-06", False),
        ("period=le2026-06&period=ge2026-06", True),
        ("period=lt2025", False),
        ("period=ge2030", True),
        ("creation=2026-09-15", True),
        ("creation=gt2026-09-15", False),
    ],
)
async def test_date_matching(server: Server, query: str, hit: bool) -> None:
    document = {
        "context": {"period": {"start": "2026-01-01"}},
        "content": [
            {
                "attachment": {
                    "contentType": "application/pdf",
                    "url": "https://documents.example.org/x.pdf",
                    "creation": "2026-09-15",
                }
            }
        ],
    }
    patient_id, (document_id,) = await patient_with_documents(server, [document])
    bundle = await search(server, f"DocumentReference?patient={patient_id}&{query}")
    assert (document_id in matches(bundle)) is hit


@pytest.mark.parametrize("query", ["date=2026-13", "date=xx2026", "date=yesterday"])
async def test_malformed_date_is_400_naming_the_parameter(server: Server, query: str) -> None:
    outcome = await search(server, f"DocumentReference?{query}", status=400)
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == ["date"]


async def test_last_updated_searches_the_stored_instant(server: Server) -> None:
    patient = await create(server, patient_resource())
    when = patient["meta"]["lastUpdated"]
    assert patient["id"] in matches(await search(server, f"Patient?_id={patient['id']}&_lastUpdated={when}"))
    assert patient["id"] in matches(
        await search(server, f"Patient?_id={patient['id']}&_lastUpdated=ge{when[:10]}")
    )
    assert patient["id"] not in matches(
        await search(server, f"Patient?_id={patient['id']}&_lastUpdated=lt{when[:10]}")
    )


# -- reference ------------------------------------------------------------------------------------
async def test_reference_forms(server: Server) -> None:
    rpps = unique()
    document = {
        "author": [{"reference": "Practitioner/pr-1", "identifier": {"system": "urn:rpps", "value": rpps}}]
    }
    patient_id, (document_id,) = await patient_with_documents(server, [document])
    for query in (
        f"patient={patient_id}",
        f"patient=Patient/{patient_id}",
        f"patient={BASE_URL}/Patient/{patient_id}",
        f"subject:Patient={patient_id}",
        f"subject=Patient/{patient_id}&author:identifier=urn:rpps|{rpps}",
        f"patient={patient_id}&author=Practitioner/pr-1",
    ):
        assert document_id in matches(await search(server, f"DocumentReference?{query}")), query
    assert not matches(await search(server, f"DocumentReference?subject:Group={patient_id}"))


async def test_chained_and_reverse_chained_parameters(server: Server) -> None:
    family = "Chn" + unique()
    nir = None
    patient = await create(server, patient_resource(family=family))
    nir = patient["identifier"][0]["value"]
    linked = await create(
        server,
        patient_resource()
        | {"link": [{"other": {"reference": f"Patient/{patient['id']}"}, "type": "seealso"}]},
    )
    document = await create(server, document_resource(patient["id"]))
    other = await create(server, document_resource(linked["id"], loinc="34133-9"))
    system = "urn:oid:1.2.250.1.213.1.4.10"
    assert matches(
        await search(server, f"DocumentReference?patient.identifier={system}|{nir}&status=current")
    ) == {document["id"]}
    assert matches(await search(server, f"DocumentReference?subject:Patient.family={family}")) == {
        document["id"]
    }
    assert matches(await search(server, f"DocumentReference?patient.link:Patient.family={family}")) == {
        other["id"]
    }
    assert matches(
        await search(
            server, f"Patient?_has:DocumentReference:patient:type=34133-9&_id={linked['id']},{patient['id']}"
        )
    ) == {linked["id"]}
    outcome = await search(server, "DocumentReference?patient.nothing=1", status=400)
    assert outcome["issue"][0]["expression"] == ["patient.nothing"]


# -- uri ------------------------------------------------------------------------------------------
async def test_uri_matching(server: Server) -> None:
    profile = f"http://example.org/fhir/StructureDefinition/{unique()}"
    patient = await create(server, patient_resource() | {"meta": {"profile": [profile]}})
    assert patient["id"] in matches(await search(server, f"Patient?_profile={profile}"))
    assert patient["id"] in matches(await search(server, f"Patient?_profile:below={profile[:-4]}"))
    assert patient["id"] in matches(
        await search(server, f"Patient?_profile:above={profile}/x/y&_id={patient['id']}")
    )
    assert patient["id"] not in matches(await search(server, f"Patient?_profile={profile[:-1]}"))


# -- result controls ------------------------------------------------------------------------------
async def test_include_revinclude_and_iterate(server: Server) -> None:
    patient = await create(server, patient_resource())
    document = await create(server, document_resource(patient["id"]))
    replacement = await create(
        server,
        document_resource(patient["id"])
        | {
            "relatesTo": [
                {"code": "replaces", "target": {"reference": f"DocumentReference/{document['id']}"}}
            ]
        },
    )
    bundle = await search(
        server, f"DocumentReference?_id={replacement['id']}&_include=DocumentReference:patient"
    )
    assert matches(bundle) == {replacement["id"]} and included(bundle) == {patient["id"]}
    bundle = await search(server, f"Patient?_id={patient['id']}&_revinclude=DocumentReference:patient")
    assert included(bundle) == {document["id"], replacement["id"]}
    bundle = await search(
        server,
        f"DocumentReference?_id={replacement['id']}&_include=DocumentReference:relatesto"
        "&_include:iterate=DocumentReference:patient",
    )
    assert included(bundle) == {document["id"], patient["id"]}


async def test_sort_count_total_and_links(server: Server) -> None:
    dates = ["2026-01-05", "2026-03-01", "2026-02-10"]
    patient_id, ids = await patient_with_documents(server, [{"date": f"{d}T10:00:00Z"} for d in dates])
    bundle = await search(server, f"DocumentReference?patient={patient_id}&_sort=-date&_count=2")
    assert "total" not in bundle, "no count query unless _total=accurate: the page does not show the total"
    counted = await search(
        server, f"DocumentReference?patient={patient_id}&_sort=-date&_count=2&_total=accurate"
    )
    assert counted["total"] == 3
    assert (await search(server, f"DocumentReference?patient={patient_id}&_count=5"))["total"] == 3, (
        "a first page without a next one shows the total exactly"
    )
    assert [e["resource"]["date"][:10] for e in bundle["entry"]] == ["2026-03-01", "2026-02-10"]
    links = {link["relation"]: link["url"] for link in bundle["link"]}
    assert links["self"] == f"{BASE_URL}/DocumentReference?patient={patient_id}&_sort=-date&_count=2"
    second = (await server.http.get(links["next"], headers=server.as_doctor())).json()
    assert [e["resource"]["date"][:10] for e in second["entry"]] == ["2026-01-05"]
    assert "next" not in {link["relation"] for link in second["link"]}
    back = {link["relation"]: link["url"] for link in second["link"]}["previous"]
    first_again = (await server.http.get(back, headers=server.as_doctor())).json()
    assert [e["resource"]["id"] for e in first_again["entry"]] == [
        e["resource"]["id"] for e in bundle["entry"]
    ]
    assert "total" not in await search(server, f"DocumentReference?patient={patient_id}&_total=none")
    for entry in bundle["entry"]:
        assert entry["fullUrl"] == f"{BASE_URL}/DocumentReference/{entry['resource']['id']}"
    assert set(ids) >= {e["resource"]["id"] for e in bundle["entry"]}


async def test_summary_and_elements(server: Server) -> None:
    patient_id, (document_id,) = await patient_with_documents(
        server,
        [{"text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'}}],
    )
    counted = await search(server, f"DocumentReference?patient={patient_id}&_summary=count")
    assert counted["total"] == 1 and not counted.get("entry")
    data = (await search(server, f"DocumentReference?patient={patient_id}&_summary=data"))["entry"][0][
        "resource"
    ]
    assert (
        "text" not in data
        and {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}
        in data["meta"]["tag"]
    )
    elements = (await search(server, f"DocumentReference?patient={patient_id}&_elements=type"))["entry"][0][
        "resource"
    ]
    assert set(elements) == {"resourceType", "id", "meta", "type", "status", "content"}
    summary = (await search(server, f"DocumentReference?patient={patient_id}&_summary=true"))["entry"][0][
        "resource"
    ]
    assert "text" not in summary and summary["id"] == document_id and "type" in summary


async def test_unknown_parameter_is_a_warning_or_400_when_strict(server: Server) -> None:
    bundle = await search(server, "Patient?_id=nobody&unknown=1")
    (outcome,) = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome["resource"]["issue"][0]["severity"] == "warning"
    assert "unknown" not in bundle["link"][0]["url"]
    strict = await search(server, "Patient?_id=nobody&unknown=1", status=400, Prefer="handling=strict")
    assert strict["issue"][0]["expression"] == ["unknown"]


async def test_post_search_with_form_parameters(server: Server) -> None:
    family = "Frm" + unique()
    patient = await create(server, patient_resource(family=family))
    headers = server.as_doctor() | {"Content-Type": "application/x-www-form-urlencoded"}
    response = await server.http.post("/fhir/Patient/_search", content=f"family={family}", headers=headers)
    assert response.status_code == 200, response.text
    assert matches(response.json()) == {patient["id"]}


async def test_or_and_and_combine(server: Server) -> None:
    patient_id, ids = await patient_with_documents(
        server,
        [
            {"type": {"coding": [{"system": "http://loinc.org", "code": code}]}}
            for code in ("1-1", "2-2", "3-3")
        ],
    )
    assert matches(await search(server, f"DocumentReference?patient={patient_id}&type=1-1,2-2")) == set(
        ids[:2]
    )
    assert matches(
        await search(server, f"DocumentReference?patient={patient_id}&type=1-1,2-2&type=2-2,3-3")
    ) == {ids[1]}
    assert matches(
        await search(server, f"DocumentReference?patient={patient_id}&type:not=1-1&type:not=3-3")
    ) == {ids[1]}
