"""Search semantics seen from outside: string prefix and case folding, tokens with systems, date prefixes
and precision, AND/OR, paging links, `_summary=count`.

FHIR R4 search.html (STANDARDS §7), docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from conformance_harness import (
    INS_NIR_TEST,
    Fhir,
    Record,
    entries,
    ids,
    nir_test_value,
    patient_resource,
    unique,
)


@dataclass(frozen=True)
class Family:
    """Three Patients of one unique family name, born in 1950, 1984 and 2001."""

    name: str
    ids: tuple[str, str, str]
    nirs: tuple[str, str, str]


BIRTH_DATES = ("1950-05-01", "1984-03-12", "2001-12-31")


@pytest.fixture(scope="module")
def family(fhir: Fhir) -> Iterator[Family]:
    name = f"Éluard{unique()}"
    made: list[str] = []
    nirs: list[str] = []
    for given, birth in zip(("Anne", "Béatrice", "Chloé"), BIRTH_DATES, strict=True):
        nir = nir_test_value()
        resource = {**patient_resource(family=name, given=given, nir=nir), "birthDate": birth}
        response = fhir.post("Patient", resource, who="system")
        assert response.status_code == 201, response.text[:300]
        made.append(response.json()["id"])
        nirs.append(nir)
    yield Family(name, (made[0], made[1], made[2]), (nirs[0], nirs[1], nirs[2]))


def _ids(fhir: Fhir, params: list[tuple[str, str]]) -> set[str]:
    return ids(fhir.search("Patient", params, who="system"))


@pytest.mark.parametrize(
    ("transform", "expected"),
    [
        (lambda name: name, 3),
        (lambda name: name[:7], 3),
        (lambda name: name.lower(), 3),
        (lambda name: name.upper().replace("É", "E"), 3),
        (lambda name: name[1:], 0),
    ],
    ids=["whole", "prefix", "lower-case", "accent-folded", "not-a-prefix"],
)
def test_string_search_matches_case_and_accent_insensitive_prefixes(
    fhir: Fhir, family: Family, transform: Callable[[str], str], expected: int
) -> None:
    """string: matches when the field equals or starts with the value, ignoring case and accents."""
    found = _ids(fhir, [("family", transform(family.name)), ("_count", "50")])
    assert len(found & set(family.ids)) == expected


def test_string_exact_modifier_is_case_sensitive_equality(fhir: Fhir, family: Family) -> None:
    """string `:exact`: full, case- and accent-sensitive equality."""
    assert _ids(fhir, [("family:exact", family.name)]) == set(family.ids)
    assert not _ids(fhir, [("family:exact", family.name.lower())]) & set(family.ids)
    assert not _ids(fhir, [("family:exact", family.name[:-1])]) & set(family.ids)


@pytest.mark.parametrize(
    ("form", "found"),
    [
        (lambda nir: f"{INS_NIR_TEST}|{nir}", True),
        (lambda nir: nir, True),
        (lambda nir: f"urn:oid:1.2.250.1.213.1.4.8|{nir}", False),
        (lambda nir: f"|{nir}", False),
    ],
    ids=["system|code", "code", "other-system", "no-system"],
)
def test_token_search_honours_the_system(
    fhir: Fhir, family: Family, form: Callable[[str], str], found: bool
) -> None:
    """token: `system|code` needs both, `code` any system, `|code` no system."""
    assert (family.ids[1] in _ids(fhir, [("identifier", form(family.nirs[1]))])) is found


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1984-03-12", {1}),
        ("1984-03", {1}),
        ("1984", {1}),
        ("ge1984-03-12", {1, 2}),
        ("gt1984-03-12", {2}),
        ("le1984-03-12", {0, 1}),
        ("lt1984", {0}),
        ("ne1984-03-12", {0, 2}),
        ("sa1984-12-31", {2}),
        ("eb1951", {0}),
    ],
)
def test_date_search_honours_prefixes_and_precision(
    fhir: Fhir, family: Family, value: str, expected: set[int]
) -> None:
    """date: the value's precision is a range; eq/ne/gt/lt/ge/le/sa/eb compare ranges (R4 search.html)."""
    found = _ids(fhir, [("family", family.name), ("birthdate", value)])
    assert found == {family.ids[index] for index in expected}


def test_repeated_parameters_are_and_and_commas_are_or(fhir: Fhir, family: Family) -> None:
    """Repeating a parameter ANDs the values; commas within one value OR them."""
    both = _ids(fhir, [("family", family.name), ("birthdate", "ge1960"), ("birthdate", "le1990")])
    assert both == {family.ids[1]}
    either = _ids(fhir, [("_id", f"{family.ids[0]},{family.ids[2]}")])
    assert either == {family.ids[0], family.ids[2]}


def test_paging_follows_next_links_to_every_match_once(fhir: Fhir, family: Family) -> None:
    """`_count` pages the results: `total` (asked for with `_total=accurate`; a server may leave it out
    otherwise) counts all, `next` links walk each match exactly once."""
    bundle = fhir.search(
        "Patient", [("family", family.name), ("_count", "1"), ("_total", "accurate")], who="system"
    )
    assert bundle.get("total") == 3
    relations = {link["relation"] for link in bundle["link"]}
    assert {"self", "next"} <= relations
    seen = [resource["id"] for resource in entries(bundle)]
    for _ in range(5):
        following = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
        if following is None:
            break
        bundle = fhir.search(following, None, who="system")
        seen.extend(resource["id"] for resource in entries(bundle))
    assert sorted(seen) == sorted(family.ids)


def test_summary_count_returns_only_the_total(fhir: Fhir, family: Family) -> None:
    """`_summary=count`: the total and no entries."""
    bundle = fhir.search("Patient", [("family", family.name), ("_summary", "count")], who="system")
    assert bundle["total"] == 3
    assert not entries(bundle)


def test_document_search_by_patient_type_and_date(fhir: Fhir, shared_record: Record) -> None:
    """DocumentReference (ITI-67): `patient` + `type` (system|code) + `date` prefixes select the document."""
    note = shared_record.document(loinc="11488-4", date="2026-03-02T10:00:00+01:00")
    report = shared_record.document(loinc="11502-2", date="2026-04-05T10:00:00+02:00")
    base = [("patient", shared_record.reference), ("status", "current")]
    by_type = ids(fhir.search("DocumentReference", [*base, ("type", "http://loinc.org|11502-2")], who="gp"))
    assert report["id"] in by_type and note["id"] not in by_type
    in_march = ids(fhir.search("DocumentReference", [*base, ("date", "2026-03")], who="gp"))
    assert note["id"] in in_march and report["id"] not in in_march
    after = ids(fhir.search("DocumentReference", [*base, ("date", "gt2026-03-31")], who="gp"))
    assert report["id"] in after and note["id"] not in after
