"""Bounds checked on a parsed body before any validation or storage work.

A FHIR resource is a JSON tree; what a client may send is bounded so that hostile input costs
little and never reaches a layer that would fail with a 5xx: MongoDB refuses documents nested
deeper than 100 levels and larger than 16 MB, and FHIR strings are at most 1 MiB of characters
without control characters (https://hl7.org/fhir/R4/datatypes.html#string). base64Binary content
(`data`) is exempt from the string bound: its size is bounded by the body limit and large content is
kept out of the resource document (storage/binaries.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from fhir_server.fhir.errors import FhirError, Issue, bad_request

MAX_DEPTH = 48
"""Nesting of objects and arrays; real resources stay under 20, MongoDB stops at 100."""
MAX_NODES = 250_000
"""Objects, arrays and scalars in one resource."""
MAX_STRING_CHARACTERS = 1024 * 1024
"""FHIR: a string SHALL NOT exceed 1 MiB."""
BASE64_ELEMENTS = frozenset({"data"})
MAX_STORED_BYTES = 15 * 1024 * 1024
"""A resource is stored as one MongoDB document (16 MB, with the server's fields and index values);
only a Binary's content is kept apart (storage/binaries.py)."""
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
"""FHIR strings match `[ \\r\\n\\t\\S]+`: every other control character is forbidden."""


def check_bounds(resource: Any) -> None:
    """400 when the tree is too deep or too large, 422 for a forbidden or oversized string."""
    stack: list[tuple[Any, int, str]] = [(resource, 1, "")]
    nodes = 0
    while stack:
        value, depth, path = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise FhirError.of(413, "too-costly", f"The resource has more than {MAX_NODES} elements")
        if isinstance(value, dict):
            if depth > MAX_DEPTH:
                raise bad_request(f"The resource nests deeper than {MAX_DEPTH} levels", code="structure")
            for key, item in value.items():
                _check_string(key, path, key=True)
                child = f"{path}.{key}" if path else key
                if isinstance(item, str):
                    nodes += 1
                    if key not in BASE64_ELEMENTS:
                        _check_string(item, child, key=False)
                else:
                    stack.append((item, depth + 1, child))
        elif isinstance(value, list):
            if depth > MAX_DEPTH:
                raise bad_request(f"The resource nests deeper than {MAX_DEPTH} levels", code="structure")
            for position, item in enumerate(value):
                if isinstance(item, str):
                    nodes += 1
                    _check_string(item, f"{path}[{position}]", key=False)
                else:
                    stack.append((item, depth + 1, f"{path}[{position}]"))


def check_storable(resource: Mapping[str, Any]) -> None:
    """413 when the resource cannot be stored as one database document (a Binary is exempt)."""
    if resource.get("resourceType") == "Binary":
        return
    size = len(orjson.dumps(resource))
    if size > MAX_STORED_BYTES:
        raise FhirError.of(
            413,
            "too-costly",
            f"The resource is {size} bytes: over {MAX_STORED_BYTES} it cannot be stored; "
            "put large content in a Binary",
        )


def _check_string(text: str, path: str, *, key: bool) -> None:
    where = (path,) if path else ()
    if len(text) > MAX_STRING_CHARACTERS:
        raise FhirError(
            422,
            [
                Issue(
                    "error", "too-long", f"A string is longer than {MAX_STRING_CHARACTERS} characters", where
                )
            ],
        )
    if CONTROL_CHARACTERS.search(text):
        what = "An element name" if key else "A string"
        raise FhirError(
            422, [Issue("error", "invalid", f"{what} contains a control character FHIR forbids", where)]
        )
