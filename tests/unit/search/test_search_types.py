"""Search parameter types: query values parsed and compiled to MongoDB filters, per type and modifier.

Covers: R4 search.html §string, §token, §date (prefixes, precision, Period), §reference, §uri,
§escaping (STANDARDS.md §7 matching rules), docs/architecture.md index layout.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from fhir_server.search.types import TYPES
from fhir_server.search.types.common import QueryContext, fold, split_or, unescape
from fhir_server.search.types.date import DateValue, date_range
from fhir_server.search.types.reference import ReferenceValue

NOW = datetime(2025, 1, 1, tzinfo=UTC)
BASE = "http://fhir.example/fhir"


def _context(
    modifier: str | None = None, *, targets: tuple[str, ...] = (), scalar: bool = False
) -> QueryContext:
    return QueryContext(code="p", modifier=modifier, targets=targets, base_url=BASE, now=NOW, scalar=scalar)


def _compile(kind: str, raw: str, modifier: str | None = None, **options: Any) -> dict[str, Any]:
    parameter_type = TYPES[kind]
    context = _context(modifier, **options)
    values = [parameter_type.parse_value(part, context) for part in split_or(raw)]
    return parameter_type.to_mongo("idx.p", values, context)


def _dt(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a,b", ["a", "b"]),
        (r"a\,b", ["a,b"]),
        (r"a\|b,c", [r"a\|b", "c"]),
        ("", [""]),
    ],
)
def test_commas_separate_alternatives_unless_escaped(raw: str, expected: list[str]) -> None:
    assert split_or(raw) == expected


def test_unescape_resolves_dollar_pipe_comma_and_backslash() -> None:
    assert unescape(r"a\$b\|c\,d\\e") == "a$b|c,d\\e"


@pytest.mark.parametrize(
    ("text", "folded"), [("Élodie", "elodie"), ("STRASSE", "strasse"), ("Ǆ", "dz"), ("Straße", "strasse")]
)
def test_fold_removes_case_and_accents(text: str, folded: str) -> None:
    assert fold(text) == folded


# -- string ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "modifier", "expected"),
    [
        ("Élo", None, {"idx.p": {"$regex": "^elo"}}),
        ("a.b", None, {"idx.p": {"$regex": r"^a\.b"}}),
        ("du,le", None, {"$or": [{"idx.p": {"$regex": "^du"}}, {"idx.p": {"$regex": "^le"}}]}),
        ("Élodie", "exact", {"idx.p:exact": "Élodie"}),
        ("A,B", "exact", {"idx.p:exact": {"$in": ["A", "B"]}}),
        ("ont", "contains", {"idx.p": {"$regex": "ont"}}),
    ],
)
def test_string_matches_folded_prefix_exact_or_contains(
    raw: str, modifier: str | None, expected: Any
) -> None:
    assert _compile("string", raw, modifier) == expected


# -- token ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "modifier", "expected"),
    [
        ("current", None, {"idx.p": "current"}),
        ("http://loinc.org|1-8", None, {"idx.p": "http://loinc.org|1-8"}),
        ("|x", None, {"idx.p": "|x"}),
        ("urn:sys|", None, {"idx.p": "urn:sys|"}),
        ("a,s|b", None, {"idx.p": {"$in": ["a", "s|b"]}}),
        (r"a\,b", None, {"idx.p": "a,b"}),
        ("a,b", "not", {"idx.p": {"$nin": ["a", "b"]}}),
        ("Consult", "text", {"idx.p:text": {"$regex": "^consult"}}),
        ("urn:t|MR|42", "of-type", {"idx.p:of-type": "urn:t|MR|42"}),
    ],
)
def test_token_matches_composed_keys(raw: str, modifier: str | None, expected: Any) -> None:
    assert _compile("token", raw, modifier) == expected


@pytest.mark.parametrize(
    ("raw", "modifier"), [("", None), ("|", None), ("a|b|c", None), ("MR|42", "of-type")]
)
def test_malformed_token_is_rejected(raw: str, modifier: str | None) -> None:
    with pytest.raises(ValueError):
        TYPES["token"].parse_value(raw, _context(modifier))


# -- date -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "lo", "hi"),
    [
        ("2024", _dt(2024, 1, 1), _dt(2024, 12, 31, 23, 59, 59, 999000)),
        ("2024-02", _dt(2024, 2, 1), _dt(2024, 2, 29, 23, 59, 59, 999000)),
        ("2023-12-31", _dt(2023, 12, 31), _dt(2023, 12, 31, 23, 59, 59, 999000)),
        ("2024-03-01T10:00Z", _dt(2024, 3, 1, 10), _dt(2024, 3, 1, 10, 0, 59, 999000)),
        ("2024-03-01T10:00:00+02:00", _dt(2024, 3, 1, 8), _dt(2024, 3, 1, 8, 0, 0, 999000)),
        ("2024-03-01T10:00:00 02:00", _dt(2024, 3, 1, 8), _dt(2024, 3, 1, 8, 0, 0, 999000)),
        ("2024-03-01T10:00:00.5Z", _dt(2024, 3, 1, 10, 0, 0, 500000), _dt(2024, 3, 1, 10, 0, 0, 500000)),
    ],
)
def test_date_covers_the_range_of_its_precision(text: str, lo: datetime, hi: datetime) -> None:
    assert date_range(text) == (lo, hi)


@pytest.mark.parametrize("raw", ["24", "2024-13", "2024-02-30", "xx2024", "2024-01-01T25:00Z", "tomorrow"])
def test_malformed_date_is_rejected(raw: str) -> None:
    with pytest.raises(ValueError):
        TYPES["date"].parse_value(raw, _context())


Y_LO, Y_HI = _dt(2024, 1, 1), _dt(2024, 12, 31, 23, 59, 59, 999000)
CONTAINED = {"lo": {"$gte": Y_LO}, "hi": {"$lte": Y_HI}}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            "2024",
            {"idx.p:hi": {"$gte": Y_LO}, "idx.p:lo": {"$lte": Y_HI}, "idx.p": {"$elemMatch": CONTAINED}},
        ),
        (
            "eq2024",
            {"idx.p:hi": {"$gte": Y_LO}, "idx.p:lo": {"$lte": Y_HI}, "idx.p": {"$elemMatch": CONTAINED}},
        ),
        ("ne2024", {"idx.p": {"$exists": True, "$not": {"$elemMatch": CONTAINED}}}),
        ("gt2024", {"idx.p:hi": {"$gt": Y_HI}}),
        ("lt2024", {"idx.p:lo": {"$lt": Y_LO}}),
        ("ge2024", {"idx.p:hi": {"$gte": Y_LO}}),
        ("le2024", {"idx.p:lo": {"$lte": Y_HI}}),
        ("sa2024", {"idx.p:hi": {"$gt": Y_HI}, "idx.p": {"$elemMatch": {"lo": {"$gt": Y_HI}}}}),
        ("eb2024", {"idx.p:lo": {"$lt": Y_LO}, "idx.p": {"$elemMatch": {"hi": {"$lt": Y_LO}}}}),
    ],
)
def test_date_prefixes_compare_the_stored_range(raw: str, expected: Any) -> None:
    assert _compile("date", raw) == expected


def test_date_approximation_widens_the_range_by_a_tenth_of_the_distance_to_now() -> None:
    value = TYPES["date"].parse_value("ap2015-01-01", _context())
    assert isinstance(value, DateValue)
    margin = (NOW - _dt(2015, 1, 1)) / 10
    assert (value.lo, value.hi) == (_dt(2015, 1, 1) - margin, _dt(2015, 1, 1, 23, 59, 59, 999000) + margin)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024", {"idx.p": {"$gte": Y_LO, "$lte": Y_HI}}),
        ("ge2024", {"idx.p": {"$gte": Y_LO}}),
        ("gt2024", {"idx.p": {"$gt": Y_HI}}),
        ("lt2024", {"idx.p": {"$lt": Y_LO}}),
        ("le2024", {"idx.p": {"$lte": Y_HI}}),
        ("ne2024", {"$or": [{"idx.p": {"$lt": Y_LO}}, {"idx.p": {"$gt": Y_HI}}]}),
        (
            "2023,2024",
            {
                "$or": [
                    {"idx.p": {"$gte": _dt(2023, 1, 1), "$lte": _dt(2023, 12, 31, 23, 59, 59, 999000)}},
                    {"idx.p": {"$gte": Y_LO, "$lte": Y_HI}},
                ]
            },
        ),
    ],
)
def test_date_on_a_scalar_instant_field(raw: str, expected: Any) -> None:
    assert _compile("date", raw, scalar=True) == expected


def _within(value: DateValue, lo: datetime, hi: datetime) -> bool:
    """Reference implementation of the R4 prefix semantics on one stored range (ge/le: the range at
    or above/below the search value overlaps the target)."""
    contained = lo >= value.lo and hi <= value.hi
    return {
        "eq": contained,
        "ne": not contained,
        "gt": hi > value.hi,
        "lt": lo < value.lo,
        "ge": hi >= value.lo,
        "le": lo <= value.hi,
        "sa": lo > value.hi,
        "eb": hi < value.lo,
    }[value.prefix]


def _matches(condition: Any, document: dict[str, Any]) -> bool:
    """A tiny evaluator of the operators the date type emits, to check semantics without a database."""
    for key, test in condition.items():
        if key == "$or":
            if not any(_matches(part, document) for part in test):
                return False
            continue
        value = document.get(key)
        if isinstance(test, dict) and "$elemMatch" in test and "$not" not in test:
            if not any(_matches(test["$elemMatch"], element) for element in value or []):
                return False
            continue
        if isinstance(test, dict) and "$not" in test:
            if value is None or any(_matches(test["$not"]["$elemMatch"], element) for element in value):
                return False
            continue
        ops = {
            "$gt": lambda a, b: a > b,
            "$lt": lambda a, b: a < b,
            "$gte": lambda a, b: a >= b,
            "$lte": lambda a, b: a <= b,
        }
        if value is None or not all(ops[op](value, bound) for op, bound in test.items()):
            return False
    return True


TARGETS = [
    (_dt(2023, 6, 1), _dt(2023, 6, 1, 23, 59, 59, 999000)),
    (_dt(2023, 12, 31), _dt(2024, 1, 2)),
    (_dt(2024, 5, 1), _dt(2024, 5, 1, 0, 0, 0, 999000)),
    (_dt(2024, 12, 31, 23), _dt(2025, 1, 1, 1)),
    (_dt(2025, 3, 1), _dt(9999, 12, 31, 23, 59, 59, 999000)),
    (_dt(1, 1, 1), _dt(2024, 6, 1)),
]


@pytest.mark.parametrize("prefix", ["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"])
@pytest.mark.parametrize(("lo", "hi"), TARGETS)
def test_date_filter_agrees_with_the_r4_range_semantics(prefix: str, lo: datetime, hi: datetime) -> None:
    condition = _compile("date", f"{prefix}2024")
    value = TYPES["date"].parse_value(f"{prefix}2024", _context())
    document = {"idx.p": [{"lo": lo, "hi": hi}], "idx.p:lo": lo, "idx.p:hi": hi}
    assert _matches(condition, document) == _within(value, lo, hi)


def test_date_filter_compares_bounds_of_one_value_together() -> None:
    condition = _compile("date", "2024")
    document = {
        "idx.p": [
            {"lo": _dt(2024, 1, 1), "hi": _dt(2025, 6, 1)},
            {"lo": _dt(2020, 1, 1), "hi": _dt(2024, 3, 1)},
        ],
        "idx.p:lo": _dt(2020, 1, 1),
        "idx.p:hi": _dt(2025, 6, 1),
    }
    assert not _matches(condition, document)


# -- reference ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "modifier", "targets", "expected"),
    [
        ("123", None, ("Patient",), {"idx.p": "Patient/123"}),
        ("123", None, ("Patient", "Group"), {"idx.p": {"$in": ["Patient/123", "Group/123"]}}),
        ("Patient/123", None, ("Patient", "Group"), {"idx.p": "Patient/123"}),
        (f"{BASE}/Patient/123", None, ("Patient",), {"idx.p": "Patient/123"}),
        ("Patient/123/_history/4", None, ("Patient",), {"idx.p": "Patient/123"}),
        ("http://other.org/fhir/Patient/9", None, ("Patient",), {"idx.p": "Patient/9"}),
        ("urn:uuid:1234", None, ("Patient",), {"idx.p": "urn:uuid:1234"}),
        ("123", "Patient", ("Patient", "Group"), {"idx.p": "Patient/123"}),
        ("urn:rpps|810", "identifier", (), {"idx.p:identifier": "urn:rpps|810"}),
        ("1,2", None, ("Patient",), {"idx.p": {"$in": ["Patient/1", "Patient/2"]}}),
        ("x1", None, ("Resource",), {"idx.p": {"$regex": "^[A-Z][A-Za-z]+/x1$"}}),
    ],
)
def test_reference_matches_type_and_id(
    raw: str, modifier: str | None, targets: tuple[str, ...], expected: Any
) -> None:
    assert _compile("reference", raw, modifier, targets=targets) == expected


@pytest.mark.parametrize(("raw", "modifier"), [("Group/1", "Patient"), ("not a/ref", None), ("", None)])
def test_malformed_reference_is_rejected(raw: str, modifier: str | None) -> None:
    with pytest.raises(ValueError):
        TYPES["reference"].parse_value(raw, _context(modifier, targets=("Patient",)))


def test_reference_value_keeps_every_candidate_key() -> None:
    value = TYPES["reference"].parse_value("7", _context(targets=("Patient", "Device")))
    assert value == ReferenceValue(("Patient/7", "Device/7"))


# -- uri ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "modifier", "expected"),
    [
        ("http://a.org/SD/x", None, {"idx.p": "http://a.org/SD/x"}),
        ("http://a.org/SD", "below", {"idx.p": {"$regex": r"^http://a\.org/SD"}}),
        (
            "http://a.org/SD/x",
            "above",
            {"idx.p": {"$in": ["http://a.org/SD/x", "http://a.org/SD", "http://a.org"]}},
        ),
    ],
)
def test_uri_matches_exactly_below_or_above(raw: str, modifier: str | None, expected: Any) -> None:
    assert _compile("uri", raw, modifier) == expected
