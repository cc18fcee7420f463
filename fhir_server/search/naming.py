"""The patients a search names: by id, by identifier (an INS), directly or through a chain to Patient.

A search's AuditEvent belongs to every patient its query names, even when it found nothing, and to
every patient it returned (docs/audit.md). Named is what the query says, not what it looked through:
a `_has` criterion scans other resources (the documents of whoever has one), it names nobody. Only
criteria that identify a patient name one: `_id` and `identifier` on Patient, a reference to
`Patient/<id>`, a reference `:identifier`, and those same criteria at the end of a chain to Patient.
An identifier with no value (`system|`) names no one in particular.

Pure: the identifiers are resolved to patients by the caller (interactions/search.py), for the audit
only; the patient view of the trail (audit/views.py) compares them to the patient's own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from fhir_server.search.parse import Clause, SearchRequest
from fhir_server.search.types.reference import ReferenceValue

PATIENT = "Patient"
PATIENT_PREFIX = f"{PATIENT}/"


@dataclass
class Naming:
    """What a query names of patients."""

    ids: set[str] = field(default_factory=set)
    """Patient ids, as written."""
    identifiers: set[str] = field(default_factory=set)
    """Identifier token keys (`system|value` or `value`), each naming the patient that holds it."""

    def add(self, other: Naming) -> None:
        self.ids |= other.ids
        self.identifiers |= other.identifiers


def naming(request: SearchRequest) -> Naming:
    """The patients the criteria of `request` name (see the module docstring)."""
    scope = request.resource_type or (request.types[0] if len(request.types) == 1 else None)
    named = Naming()
    for clause in request.clauses:
        if isinstance(clause, Clause):
            named.add(_clause(scope, clause))
    return named


def _clause(resource_type: str | None, clause: Clause) -> Naming:
    named = Naming()
    if clause.chain:
        for target in clause.chain:
            if target.resource_type == PATIENT:
                named.add(_clause(PATIENT, target.clause))
        return named
    code, modifier = clause.parameter.code, clause.modifier
    if resource_type == PATIENT and code == "_id" and modifier is None:
        named.ids.update(str(value) for value in clause.values)
    elif resource_type == PATIENT and code == "identifier" and modifier is None:
        named.identifiers.update(_valued(str(value) for value in clause.values))
    elif clause.parameter.type == "reference" and modifier == "identifier":
        if PATIENT in clause.parameter.targets:
            keys = (key for value in clause.values if isinstance(value, ReferenceValue) for key in value.keys)
            named.identifiers.update(_valued(keys))
    elif clause.parameter.type == "reference" and modifier != "missing":
        for value in clause.values:
            if isinstance(value, ReferenceValue):
                named.ids.update(
                    key.removeprefix(PATIENT_PREFIX) for key in value.keys if key.startswith(PATIENT_PREFIX)
                )
    return named


def _valued(keys: Iterable[str]) -> set[str]:
    """The identifier keys that carry a value (`system|` alone names no one)."""
    return {key for key in keys if key.rpartition("|")[2]}


__all__ = ["Naming", "naming"]
