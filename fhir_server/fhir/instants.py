"""FHIR instants: the server clock at the precision it stores, and the `instant` text of a datetime.

http://hl7.org/fhir/R4/datatypes.html#instant
"""

from __future__ import annotations

from datetime import UTC, datetime


def now_utc() -> datetime:
    """Now, truncated to the millisecond precision BSON dates keep, so reads equal writes."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def instant(value: datetime) -> str:
    """FHIR instant text of a stored datetime."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
