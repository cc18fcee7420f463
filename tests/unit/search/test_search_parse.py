"""Search request parsing: parameters, modifiers, prefixes, chains, _has, result controls, errors.

Covers: R4 search.html (§modifiers, §prefix, §chaining, §has, §include, §sort, §count, §summary,
§elements, §total, §errors: handling=strict|lenient), STANDARDS.md §7, MHD ITI-67 (chained
`patient.identifier`, `author.family`).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fhir_server.fhir.errors import FhirError
from fhir_server.search.parse import MAX_COUNT, Clause, HasClause, SearchRequest, SortKey, parse_search
from fhir_server.search.registry import SearchRegistry
from fhir_server.search.types.date import DateValue
from fhir_server.search.types.reference import ReferenceValue

REGISTRY = SearchRegistry.load()
BASE = "http://fhir.example/fhir"


def _parse(resource_type: str | None, query: str, *, strict: bool = False) -> SearchRequest:
    params = [tuple(item.split("=", 1)) for item in query.split("&") if item]
    return parse_search(
        resource_type,
        params,  # type: ignore[arg-type]
        registry=REGISTRY,
        strict=strict,
        base_url=BASE,
        now=datetime(2025, 1, 1, tzinfo=UTC),
    )


def _clause(request: SearchRequest, position: int = 0) -> Clause:
    clause = request.clauses[position]
    assert isinstance(clause, Clause)
    return clause


def test_repeated_parameter_gives_one_clause_each_and_commas_give_alternatives() -> None:
    request = _parse("DocumentReference", "date=ge2024&date=lt2025&status=current,superseded")
    assert [clause.parameter.code for clause in request.clauses] == ["date", "date", "status"]  # type: ignore[union-attr]
    assert [value.prefix for value in _clause(request, 0).values] == ["ge"]
    assert _clause(request, 2).values == ("current", "superseded")


def test_date_prefix_and_precision_are_parsed() -> None:
    (value,) = _clause(_parse("Patient", "birthdate=sa1970-02")).values
    assert value == DateValue(
        "sa", datetime(1970, 2, 1, tzinfo=UTC), datetime(1970, 2, 28, 23, 59, 59, 999000, tzinfo=UTC)
    )


def test_reference_with_type_modifier_and_base_url_are_normalised() -> None:
    request = _parse("DocumentReference", f"subject:Patient=1&patient={BASE}/Patient/2")
    assert _clause(request, 0).values == (ReferenceValue(("Patient/1",)),)
    assert _clause(request, 1).values == (ReferenceValue(("Patient/2",)),)


@pytest.mark.parametrize("modifier", ["missing", "not", "text", "of-type"])
def test_token_modifiers_are_accepted_on_identifier(modifier: str) -> None:
    value = {"missing": "true", "not": "x", "text": "x", "of-type": "urn:t|MR|1"}[modifier]
    assert _clause(_parse("Patient", f"identifier:{modifier}={value}")).modifier == modifier


def test_missing_takes_a_boolean() -> None:
    assert _clause(_parse("Patient", "birthdate:missing=false")).values == (False,)


def test_chain_resolves_each_searchable_target() -> None:
    clause = _clause(_parse("DocumentReference", "patient.identifier=urn:ins|1"))
    assert [(target.resource_type, target.clause.parameter.code) for target in clause.chain] == [
        ("Patient", "identifier")
    ]


def test_chain_with_type_modifier_and_two_levels() -> None:
    clause = _clause(_parse("DocumentReference", "subject:Patient.link:Patient.family=Dup"))
    (target,) = clause.chain
    assert target.resource_type == "Patient" and target.clause.parameter.code == "link"
    (inner,) = target.clause.chain
    assert inner.clause.parameter.code == "family" and inner.clause.values == ("dup",)


def test_mhd_author_family_chains_into_the_stored_target_types() -> None:
    clause = _clause(_parse("DocumentReference", "author.family=Martin"))
    assert [target.resource_type for target in clause.chain] == ["Patient"]


def test_has_parses_a_reverse_chain() -> None:
    (clause,) = _parse("Patient", "_has:DocumentReference:patient:type=http://loinc.org|11488-4").clauses
    assert isinstance(clause, HasClause)
    assert clause.resource_type == "DocumentReference" and clause.reference.code == "patient"
    assert isinstance(clause.clause, Clause) and clause.clause.values == ("http://loinc.org|11488-4",)


@pytest.mark.parametrize(
    ("resource_type", "query", "parameter"),
    [
        ("Patient", "birthdate=1970-13", "birthdate"),
        ("Patient", "birthdate=xx1970", "birthdate"),
        ("Patient", "birthdate=tomorrow", "birthdate"),
        ("Patient", "identifier=a|b|c", "identifier"),
        ("Patient", "identifier:missing=maybe", "identifier:missing"),
        ("Patient", "_count=ten", "_count"),
        ("Patient", "_count=-1", "_count"),
        ("Patient", "_total=some", "_total"),
        ("Patient", "_summary=all", "_summary"),
        ("Patient", "_elements=na me", "_elements"),
        ("DocumentReference", "status.family=x", "status.family"),
        ("DocumentReference", "patient.nothing=x", "patient.nothing"),
        ("DocumentReference", "patient:exact.family=x", "patient:exact.family"),
        ("DocumentReference", "subject:Patient=Group/1", "subject:Patient"),
        ("DocumentReference", "patient.link.link.family=x", "patient.link.link.family"),
        ("Patient", "_has:DocumentReference:nothing:status=current", "_has:DocumentReference:nothing:status"),
        ("Patient", "_has:DocumentReference:patient:nothing=1", "_has:DocumentReference:patient:nothing"),
        ("Patient", "_has:Nope:patient:status=1", "_has:Nope:patient:status"),
        ("Patient", "_include=Patient:family", "_include"),
        ("Patient", "_include=DocumentReference:patient", "_include"),
        ("Patient", "_include=Patient", "_include"),
        ("Patient", "_cursor=x&_sort=-", "_sort"),
    ],
)
def test_malformed_values_are_400_naming_the_parameter(
    resource_type: str, query: str, parameter: str
) -> None:
    with pytest.raises(FhirError) as raised:
        _parse(resource_type, query)
    assert raised.value.status == 400
    assert raised.value.issues[0].expression == (parameter,)


@pytest.mark.parametrize(
    "query",
    ["unknown=1", "_sort=nothing", "_contained=true", "_include=Patient:*"],
)
def test_unknown_parameters_are_ignored_with_a_warning_when_lenient(query: str) -> None:
    request = _parse("Patient", query)
    assert request.clauses == () and request.sort == () and request.includes == ()
    (issue,) = request.issues
    assert (issue.severity, issue.code) == ("warning", "not-supported")
    assert issue.expression == (query.split("=")[0],)
    assert request.applied == ()


@pytest.mark.parametrize(
    ("resource_type", "query"),
    [
        ("Patient", "_filter=family eq x"),
        ("DocumentReference", "_text=cardio"),
        ("DocumentReference", "_content=cardio"),
        ("Patient", "_list=List/1"),
        ("Patient", "_query=current"),
        (None, "_has:DocumentReference:subject:status=current"),
    ],
)
def test_unsupported_criteria_are_400_even_when_lenient(resource_type: str | None, query: str) -> None:
    """Ignored, a criterion would widen the result: it is refused whatever the handling."""
    with pytest.raises(FhirError) as raised:
        _parse(resource_type, query)
    assert raised.value.status == 400 and raised.value.issues[0].code == "not-supported"
    assert raised.value.issues[0].expression == (query.split("=")[0],)


@pytest.mark.parametrize("query", ["unknown=1", "given:below=x", "_sort=nothing"])
def test_unknown_parameters_are_400_when_strict(query: str) -> None:
    with pytest.raises(FhirError) as raised:
        _parse("Patient", query, strict=True)
    assert raised.value.status == 400 and raised.value.issues[0].code == "not-supported"


@pytest.mark.parametrize(
    ("resource_type", "query"),
    [
        ("Patient", "given:below=x"),
        ("Patient", "birthdate:exact=2000"),
        ("Patient", "gender:above=female"),
        ("Patient", "_lastUpdated:text=2020"),
        ("DocumentReference", "patient:Group=Group/1"),
        ("DocumentReference", "status:in=http://example.org/vs"),
        ("Patient", "_has:Consent:patient:status:below=active"),
    ],
)
@pytest.mark.parametrize("strict", [False, True])
def test_unsupported_modifiers_are_400_even_when_lenient(
    resource_type: str, query: str, strict: bool
) -> None:
    """R4 search.html: a server SHALL reject a modifier it does not support; ignoring one widens."""
    with pytest.raises(FhirError) as raised:
        _parse(resource_type, query, strict=strict)
    assert raised.value.status == 400
    assert raised.value.issues[0].expression == (query.split("=")[0],)


def test_result_controls_are_parsed() -> None:
    request = _parse(
        "DocumentReference",
        "_sort=-date,_id&_count=5&_total=none&_summary=true&_elements=status,subject&_cursor=abc"
        "&_include=DocumentReference:patient&_revinclude:iterate=AuditEvent:entity&_include:iterate=Patient:link:Patient",
    )
    assert request.sort == (SortKey("date", True), SortKey("_id", False))
    assert (request.count, request.total, request.summary) == (5, "none", "true")
    assert request.elements == ("status", "subject") and request.cursor == "abc"
    assert [
        (i.source_type, i.parameter.code, i.target_type, i.iterate, i.reverse) for i in request.includes
    ] == [
        ("DocumentReference", "patient", None, False, False),
        ("AuditEvent", "entity", None, True, True),
        ("Patient", "link", "Patient", True, False),
    ]
    assert ("_cursor", "abc") not in request.applied and ("_count", "5") in request.applied


@pytest.mark.parametrize(("value", "count"), [("0", 0), ("7", 7), ("5000", MAX_COUNT)])
def test_count_is_clamped_to_the_maximum(value: str, count: int) -> None:
    assert _parse("Patient", f"_count={value}").count == count


def test_defaults() -> None:
    request = _parse("Patient", "")
    assert (request.count, request.total, request.summary, request.cursor) == (20, None, None, None)


def test_empty_values_are_ignored() -> None:
    assert _parse("Patient", "family=").clauses == ()


def test_summary_false_means_no_summary() -> None:
    assert _parse("Patient", "_summary=false").summary is None


def test_system_search_accepts_common_parameters_and_type() -> None:
    request = _parse(None, "_type=Patient,DocumentReference&_lastUpdated=ge2024&family=x")
    assert request.types == ("Patient", "DocumentReference")
    assert [clause.parameter.code for clause in request.clauses] == ["_lastUpdated"]  # type: ignore[union-attr]
    assert [issue.expression for issue in request.issues] == [("family",)]


def test_system_search_with_one_type_accepts_its_parameters() -> None:
    request = _parse(None, "_type=Patient&family=x")
    assert _clause(request).parameter.code == "family"


def test_id_accepts_not_but_not_text() -> None:
    assert _clause(_parse("Patient", "_id:not=a")).modifier == "not"
    with pytest.raises(FhirError) as raised:
        _parse("Patient", "_id:text=a")
    assert raised.value.status == 400
