"""Date search parameters: index ranges and query matching side by side.

https://hl7.org/fhir/R4/search.html#date

A date, dateTime or instant is the range of instants its precision covers (`2024` is the whole
year, `2024-03-01T10:00:00Z` that second), a Period runs from its start to its end and an open end
is unbounded (year 1 / year 9999, UTC). Stored (`idx`): `<code>` holds `[{"lo": datetime, "hi":
datetime}]`, `<code>:lo` the smallest `lo` and `<code>:hi` the largest `hi`: the scalars sort
(ascending on the lowest value, descending on the highest, as R4 asks) and give indexes a bounded
range to scan. Matching compares `lo` and `hi` of one value together (`$elemMatch`), except where
one bound alone decides, which the scalar answers exactly. `ge`/`le` read "the range at or above
(below) the search value overlaps the target": some value ends at or after the search range's
start (starts at or before its end).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from fhir_server.search.types.common import QueryContext

MODIFIERS: frozenset[str] = frozenset()
PREFIXES = frozenset({"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"})

LOWEST = datetime(1, 1, 1, tzinfo=UTC)
HIGHEST = datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)

_DATE = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?"
)
_MILLISECOND = timedelta(milliseconds=1)


@dataclass(frozen=True)
class DateValue:
    prefix: str
    lo: datetime
    hi: datetime


def date_range(text: str) -> tuple[datetime, datetime]:
    """The [lo, hi] UTC instants (millisecond precision) that a FHIR date/dateTime/instant covers.

    A space stands for the `+` of a UTC offset that URL decoding turned into one.

    Raises ValueError for text that is not one.
    """
    match = _DATE.fullmatch(text.strip().replace(" ", "+"))
    if not match:
        raise ValueError(f"{text!r} is not a FHIR date, dateTime or instant")
    try:
        return _precision_range(match)
    except OverflowError:
        raise ValueError(f"{text!r} is out of range") from None


def _precision_range(match: re.Match[str]) -> tuple[datetime, datetime]:
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    if month is None:
        start = datetime(int(year), 1, 1, tzinfo=UTC)
        return start, start.replace(year=start.year + 1) - _MILLISECOND
    if day is None:
        start = datetime(int(year), int(month), 1, tzinfo=UTC)
        following = (start + timedelta(days=32)).replace(day=1)
        return start, following - _MILLISECOND
    if hour is None:
        start = datetime(int(year), int(month), int(day), tzinfo=UTC)
        return start, start + timedelta(days=1) - _MILLISECOND
    tz: timezone = UTC
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        tz = timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    millis = int((fraction or ".0")[1:].ljust(3, "0")[:3])
    local = datetime(
        int(year), int(month), int(day), int(hour), int(minute), int(second or 0), millis * 1000, tzinfo=tz
    )
    start = local.astimezone(UTC)
    if second is None:
        return start, start + timedelta(minutes=1) - _MILLISECOND
    if fraction is None:
        return start, start + timedelta(seconds=1) - _MILLISECOND
    return start, start


def _ranges(value: Any) -> list[tuple[datetime, datetime]]:
    if isinstance(value, str):
        try:
            return [date_range(value)]
        except ValueError:
            return []
    if isinstance(value, Mapping) and ("start" in value or "end" in value):
        try:
            lo = date_range(value["start"])[0] if value.get("start") else LOWEST
            hi = date_range(value["end"])[1] if value.get("end") else HIGHEST
        except (ValueError, TypeError):
            return []
        return [(lo, hi)]
    return []


def extract(code: str, values: Sequence[Any]) -> dict[str, Any]:
    ranges = [item for value in values for item in _ranges(value)]
    if not ranges:
        return {}
    return {
        code: [{"lo": lo, "hi": hi} for lo, hi in dict.fromkeys(ranges)],
        f"{code}:lo": min(lo for lo, _ in ranges),
        f"{code}:hi": max(hi for _, hi in ranges),
    }


def parse_value(raw: str, context: QueryContext) -> DateValue:
    prefix = "eq"
    text = raw
    if raw[:2].isalpha():
        prefix, text = raw[:2], raw[2:]
        if prefix not in PREFIXES:
            raise ValueError(f"unknown prefix {prefix!r}")
    lo, hi = date_range(text)
    if prefix == "ap":
        margin = abs(context.now - lo) / 10
        lo = lo - margin if lo - LOWEST > margin else LOWEST
        hi = hi + margin if HIGHEST - hi > margin else HIGHEST
    return DateValue(prefix, lo, hi)


def _ranged(field: str, value: DateValue) -> dict[str, Any]:
    """Condition on an extracted range list: where one bound decides (gt, lt, ge, le), its scalar
    answers exactly; otherwise `$elemMatch` compares both bounds of one value, led by the scalars."""
    lowest, highest = f"{field}:lo", f"{field}:hi"
    contained = {field: {"$elemMatch": {"lo": {"$gte": value.lo}, "hi": {"$lte": value.hi}}}}
    if value.prefix == "gt":
        return {highest: {"$gt": value.hi}}
    if value.prefix == "lt":
        return {lowest: {"$lt": value.lo}}
    if value.prefix == "ge":
        return {highest: {"$gte": value.lo}}
    if value.prefix == "le":
        return {lowest: {"$lte": value.hi}}
    if value.prefix == "ne":
        return {field: {"$exists": True, "$not": contained[field]}}
    if value.prefix == "sa":
        return {highest: {"$gt": value.hi}, field: {"$elemMatch": {"lo": {"$gt": value.hi}}}}
    if value.prefix == "eb":
        return {lowest: {"$lt": value.lo}, field: {"$elemMatch": {"hi": {"$lt": value.lo}}}}
    if value.prefix == "ap":
        overlap = {"lo": {"$lte": value.hi}, "hi": {"$gte": value.lo}}
        return {highest: {"$gte": value.lo}, lowest: {"$lte": value.hi}, field: {"$elemMatch": overlap}}
    return {highest: {"$gte": value.lo}, lowest: {"$lte": value.hi}, **contained}


def _scalar(field: str, value: DateValue) -> dict[str, Any]:
    """Condition on a field holding one instant (e.g. `lu`): its range is the instant itself."""
    condition = {
        "eq": {"$gte": value.lo, "$lte": value.hi},
        "ge": {"$gte": value.lo},
        "le": {"$lte": value.hi},
        "gt": {"$gt": value.hi},
        "sa": {"$gt": value.hi},
        "lt": {"$lt": value.lo},
        "eb": {"$lt": value.lo},
        "ap": {"$gte": value.lo, "$lte": value.hi},
    }.get(value.prefix)
    if condition is None:
        return {"$or": [{field: {"$lt": value.lo}}, {field: {"$gt": value.hi}}]}
    return {field: condition}


def to_mongo(field: str, values: Sequence[DateValue], context: QueryContext) -> dict[str, Any]:
    build = _scalar if context.scalar else _ranged
    conditions = [build(field, value) for value in values]
    return conditions[0] if len(conditions) == 1 else {"$or": conditions}
