"""Helpers shared by the search parameter types: text folding, value escaping, the query context.

https://hl7.org/fhir/R4/search.html#escaping
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime


def fold(text: str) -> str:
    """Case- and accent-insensitive form of `text` (NFKD, combining marks removed, casefolded)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(char for char in decomposed if not unicodedata.combining(char)).casefold()


def split_or(raw: str) -> list[str]:
    """Split a parameter value on unescaped commas (OR), keeping other escapes for `unescape`."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(raw)
    for char in chars:
        if char == "\\":
            following = next(chars, "")
            if following == ",":
                current.append(",")
            else:
                current.append(char + following)
        elif char == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def unescape(value: str) -> str:
    """Resolve `\\$`, `\\|`, `\\,` and `\\\\` escapes."""
    return re.sub(r"\\([\\$|,])", r"\1", value)


def split_unescaped(value: str, separator: str) -> list[str]:
    """Split on `separator` where it is not escaped by a backslash; the parts are unescaped."""
    pieces = re.split(rf"(?<!\\){re.escape(separator)}", value)
    return [unescape(piece) for piece in pieces]


def starts_with(text: str) -> dict[str, str]:
    """An anchored, index-friendly regular expression matching strings that start with `text`."""
    return {"$regex": "^" + re.escape(text)}


def unique(values: Iterable[str]) -> list[str]:
    """`values` without duplicates, first occurrence order kept."""
    return list(dict.fromkeys(values))


def stored(values: list[str]) -> str | list[str]:
    """How an index value list is stored: one value as a scalar, several as an array.

    MongoDB queries treat both alike, and a compound index may then pair single-valued fields
    with one multi-valued field (MongoDB refuses to index two arrays of one document together).
    """
    return values[0] if len(values) == 1 else values


@dataclass(frozen=True)
class QueryContext:
    """What a type needs to parse and compile one search value besides the value itself."""

    code: str
    modifier: str | None
    targets: tuple[str, ...]
    base_url: str
    now: datetime
    scalar: bool = False
    """The field holds one scalar per document (`_id`, `lu`) rather than extracted index values."""
