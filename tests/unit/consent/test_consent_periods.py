"""FHIR date precision as instant ranges, for provision.period and dataPeriod (R4 datatypes,
docs/architecture.md)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fhir_server.consent.periods import UNBOUNDED_HIGH, UNBOUNDED_LOW, instant_range, period_bounds


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024", (at(2024, 1, 1), at(2024, 12, 31, 23, 59, 59, 999999))),
        ("2024-02", (at(2024, 2, 1), at(2024, 2, 29, 23, 59, 59, 999999))),
        ("2024-12", (at(2024, 12, 1), at(2024, 12, 31, 23, 59, 59, 999999))),
        ("2024-03-05", (at(2024, 3, 5), at(2024, 3, 5, 23, 59, 59, 999999))),
        ("2024-03-05T10:00+02:00", (at(2024, 3, 5, 8), at(2024, 3, 5, 8, 0, 59, 999999))),
        ("2024-03-05T10:00:00Z", (at(2024, 3, 5, 10), at(2024, 3, 5, 10, 0, 0, 999999))),
        ("2024-03-05T10:00:00.25Z", (at(2024, 3, 5, 10, 0, 0, 250000), at(2024, 3, 5, 10, 0, 0, 250000))),
        ("2024-13", None),
        ("yesterday", None),
        (20240101, None),
    ],
)
def test_instant_range_follows_the_precision(
    text: object, expected: tuple[datetime, datetime] | None
) -> None:
    assert instant_range(text) == expected


@pytest.mark.parametrize(
    ("period", "expected"),
    [
        ({"start": "2024"}, (at(2024, 1, 1), UNBOUNDED_HIGH)),
        ({"end": "2024"}, (UNBOUNDED_LOW, at(2024, 12, 31, 23, 59, 59, 999999))),
        ({}, (UNBOUNDED_LOW, UNBOUNDED_HIGH)),
        ({"start": "soon"}, None),
        ("2024", None),
    ],
)
def test_period_bounds_leave_open_ends_unbounded(
    period: object, expected: tuple[datetime, datetime] | None
) -> None:
    assert period_bounds(period) == expected
