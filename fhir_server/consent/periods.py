"""FHIR date, dateTime and instant text as the [low, high] instant range its precision implies.

http://hl7.org/fhir/R4/datatypes.html#dateTime — `2024` is the whole year, a value without a time zone
is read as UTC (the convention of the search index, docs/architecture.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

_DATE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d+))?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)

UNBOUNDED_LOW = datetime.min.replace(tzinfo=UTC)
UNBOUNDED_HIGH = datetime.max.replace(tzinfo=UTC)


def aware(value: datetime) -> datetime:
    """A datetime with a time zone; naive values are UTC (as BSON dates are)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def instant_range(text: Any) -> tuple[datetime, datetime] | None:
    """The [low, high] range of a FHIR date/dateTime/instant string; None when it is not one."""
    if not isinstance(text, str):
        return None
    match = _DATE.match(text)
    if match is None:
        return None
    try:
        return _range(match)
    except (ValueError, OverflowError):
        return None


def _range(match: re.Match[str]) -> tuple[datetime, datetime]:
    year = int(match["y"])
    if match["m"] is None:
        low = datetime(year, 1, 1, tzinfo=UTC)
        return low, _next_year(low) - timedelta(microseconds=1)
    month = int(match["m"])
    if match["d"] is None:
        low = datetime(year, month, 1, tzinfo=UTC)
        return low, _next_month(low) - timedelta(microseconds=1)
    day = int(match["d"])
    if match["H"] is None:
        low = datetime(year, month, day, tzinfo=UTC)
        return low, low + timedelta(days=1) - timedelta(microseconds=1)
    zone: timezone = UTC
    if match["tz"] and match["tz"] != "Z":
        sign = 1 if match["tz"][0] == "+" else -1
        hours, minutes = match["tz"][1:].split(":")
        zone = timezone(sign * timedelta(hours=int(hours), minutes=int(minutes)))
    fraction = (match["f"] or "")[:6]
    low = datetime(
        year,
        month,
        day,
        int(match["H"]),
        int(match["M"]),
        int(match["S"] or 0),
        int(fraction.ljust(6, "0")) if fraction else 0,
        tzinfo=zone,
    ).astimezone(UTC)
    if match["S"] is None:
        return low, low + timedelta(minutes=1) - timedelta(microseconds=1)
    if match["f"] is None:
        return low, low + timedelta(seconds=1) - timedelta(microseconds=1)
    return low, low


def _next_year(value: datetime) -> datetime:
    return value.replace(year=value.year + 1)


def _next_month(value: datetime) -> datetime:
    return (
        value.replace(year=value.year + 1, month=1)
        if value.month == 12
        else value.replace(month=value.month + 1)
    )


def period_bounds(period: Any) -> tuple[datetime, datetime] | None:
    """[start low, end high] of a FHIR Period (open ends unbounded); None when a bound is not a date.

    A Period with neither bound is unbounded both ways: it does not constrain.
    """
    if not isinstance(period, Mapping):
        return None
    low, high = UNBOUNDED_LOW, UNBOUNDED_HIGH
    if period.get("start") is not None:
        start = instant_range(period["start"])
        if start is None:
            return None
        low = start[0]
    if period.get("end") is not None:
        end = instant_range(period["end"])
        if end is None:
            return None
        high = end[1]
    return low, high
