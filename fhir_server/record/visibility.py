"""The security labels and consent visibility keys of a stored version (`sec` and `vis`, record/documents.py).

`vis` holds the access keys of the consent rules that read the resource alone (docs/consent.md), so
that a consent filter can be one field-level `$in` (consent/filter.py):
- "-" no patient compartment;
- "*" and "*:<compartment as a JSON array>" a compartment, not masked to professionals (MASQUE_PS);
- "author:<reference>" and "author-id:<identifier value>" an author of a live DocumentReference with
  a compartment;
- "patient:<id>" visible to that compartment patient (no INVISIBLE_PATIENT label).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from fhir_server.fhir.compartment import compartment

MASKED_TO_PROFESSIONALS = "MASQUE_PS"
INVISIBLE_TO_PATIENT = "INVISIBLE_PATIENT"
NO_COMPARTMENT_KEY = "-"
OPEN_KEY = "*"


def label_keys(codings: Iterable[Mapping[str, Any]]) -> list[str]:
    keys: list[str] = []
    for coding in codings:
        code = coding.get("code")
        if not code:
            continue
        system = coding.get("system")
        keys.append(code)
        keys.append(f"{system}|{code}" if system else f"|{code}")
    return sorted(set(keys))


def security_labels(resource: Mapping[str, Any]) -> list[str]:
    codings = list((resource.get("meta") or {}).get("security") or [])
    if resource.get("resourceType") == "DocumentReference":
        for concept in resource.get("securityLabel") or []:
            codings.extend(concept.get("coding") or [])
    return label_keys(codings)


def open_key(patients: Iterable[str]) -> str:
    """The `vis` key of an unmasked resource whose compartment is exactly `patients`."""
    return "*:" + json.dumps(sorted(patients), separators=(",", ":"))


def author_key(reference: str) -> str:
    return f"author:{reference}"


def author_identifier_key(value: str) -> str:
    return f"author-id:{value}"


def patient_key(patient_id: str) -> str:
    return f"patient:{patient_id}"


def _strings_at(value: Any, path: str) -> list[str]:
    """The strings at a dotted path, crossing arrays the way a MongoDB query path does."""
    current = [value]
    for key in path.split("."):
        current = [
            element[key]
            for item in current
            for element in (item if isinstance(item, list) else [item])
            if isinstance(element, Mapping) and key in element
        ]
    found = [v for item in current for v in (item if isinstance(item, list) else [item])]
    return [item for item in found if isinstance(item, str)]


def visibility_keys(resource: Mapping[str, Any], *, deleted: bool = False) -> list[str]:
    """The `vis` keys of one version (module docstring); a deleted version has no author."""
    patients = compartment(resource)
    if not patients:
        return [NO_COMPARTMENT_KEY]
    labels = security_labels(resource)
    keys = [] if INVISIBLE_TO_PATIENT in labels else [patient_key(p) for p in patients]
    if MASKED_TO_PROFESSIONALS not in labels:
        keys.extend((OPEN_KEY, open_key(patients)))
    if not deleted and resource.get("resourceType") == "DocumentReference":
        keys.extend(author_key(v) for v in _strings_at(resource, "author.reference"))
        keys.extend(author_identifier_key(v) for v in _strings_at(resource, "author.identifier.value"))
    return sorted(set(keys))
