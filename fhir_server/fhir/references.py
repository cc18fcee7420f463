"""FHIR references: the id a literal reference names. http://hl7.org/fhir/R4/references.html"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def reference_id(reference: Any, resource_type: str) -> str | None:
    """The id in a `Type/id` (or absolute .../Type/id) reference to `resource_type`, else None."""
    if not isinstance(reference, Mapping):
        return None
    text = reference.get("reference")
    if not isinstance(text, str):
        return None
    parts = text.split("/_history/")[0].rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == resource_type and parts[-1]:
        return parts[-1]
    return None
