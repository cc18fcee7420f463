"""French national health identifiers (INS): the known systems and the NIR check key.

Systems: https://hl7.fr/ig/fhir/core (fr-core-patient-ins identifier slices); key: NIR rule
`97 - (first 13 digits mod 97)`, with the Corsican departments 2A and 2B read as 19 and 18.
"""

from __future__ import annotations

import re

INS_OID_PREFIX = "urn:oid:1.2.250.1.213.1.4."
INS_NIR = "urn:oid:1.2.250.1.213.1.4.8"
INS_NIA = "urn:oid:1.2.250.1.213.1.4.9"
INS_NIR_TEST = "urn:oid:1.2.250.1.213.1.4.10"
INS_NIR_DEMO = "urn:oid:1.2.250.1.213.1.4.11"
INS_C = "urn:oid:1.2.250.1.213.1.4.2"

INS_SYSTEMS: frozenset[str] = frozenset({INS_NIR, INS_NIA, INS_NIR_TEST, INS_NIR_DEMO, INS_C})
UNIQUE_INS_SYSTEMS: frozenset[str] = frozenset({INS_NIR, INS_NIA, INS_NIR_TEST, INS_NIR_DEMO})
"""The INS systems whose value identifies at most one Patient (record/documents.py, `ins` key)."""
NIR_SYSTEMS: frozenset[str] = frozenset({INS_NIR, INS_NIR_TEST, INS_NIR_DEMO})
"""Systems whose value is a NIR (15 characters, check key enforced)."""

NIR_PATTERN = re.compile(r"^[0-9]{5}(?:[0-9]{2}|2[AB])[0-9]{8}$")
"""Sex, year, month, department (2A/2B for Corsica), commune, order number, 2-digit key."""
_CORSICA = {"2A": "19", "2B": "18"}


def nir_key(first13: str) -> str:
    """The 2-digit check key of a NIR body (13 characters, department 2A/2B allowed)."""
    department = first13[5:7]
    digits = first13[:5] + _CORSICA.get(department, department) + first13[7:]
    return f"{97 - int(digits) % 97:02d}"


def is_valid_nir(value: str) -> bool:
    """True when `value` has the NIR shape and its last two digits are the check key."""
    return bool(NIR_PATTERN.match(value)) and nir_key(value[:13]) == value[13:]
