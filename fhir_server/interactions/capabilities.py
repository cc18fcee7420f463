"""The CapabilityStatement, generated from what the code serves.

https://hl7.org/fhir/R4/capabilitystatement.html — every capability it declares is read from the
table that decides it, so a declaration cannot drift from the behaviour (and the conformance suite
exercises each one, conformance_tests/test_capability.py):
- resource types: `fhir/resources.py` SUPPORTED_TYPES. Interactions per type: read and vread for all;
  create, update, patch, delete and the conditional ones for CLIENT_WRITABLE_TYPES; search and
  history for all but REACHED_THROUGH_DOCUMENTS (Binary is reached through its DocumentReference).
- search parameters: the registry (`capability/search-parameters.json`); `searchInclude` and
  `searchRevInclude`: the reference parameters the include code follows (interactions/includes.py).
- operations: the API routes whose last path segment is `$name`, passed in by the API layer, named
  by OPERATIONS (a route without an entry there is an error, not a silent omission).
- `capability/CapabilityStatement.json`: the prose only (publisher, descriptions, per-type notes).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from fhir_server import __version__
from fhir_server.auth import discovery
from fhir_server.fhir.instants import instant
from fhir_server.fhir.interaction import Interaction
from fhir_server.fhir.resources import CLIENT_WRITABLE_TYPES, PATIENT, SUPPORTED_TYPES
from fhir_server.interactions.context import InteractionContext
from fhir_server.interactions.includes import SEARCHABLE_TYPES, includes_for, revincludes_for
from fhir_server.interactions.response import FhirResponse
from fhir_server.interactions.services import Services
from fhir_server.paths import CAPABILITY_DIR
from fhir_server.search.registry import ANY_TYPE, SearchRegistry
from fhir_server.settings import Settings

SYSTEM_LEVEL = ""
"""The `OPERATIONS` key of an operation on the base URL (`[base]/$name`)."""


@dataclass(frozen=True)
class OperationText:
    definition: str
    documentation: str | None = None


OPERATIONS: dict[tuple[str, str], OperationText] = {
    ("validate", ANY_TYPE): OperationText("http://hl7.org/fhir/OperationDefinition/Resource-validate"),
    ("export", SYSTEM_LEVEL): OperationText(
        "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
        "Bulk Data v2 system-level export (system/ token, Prefer: respond-async): _type, _since, "
        "_typeFilter, _outputFormat=application/fhir+ndjson; consent decided per resource with the "
        "client as actor; files expire after 1 h.",
    ),
    ("export", "Patient"): OperationText(
        "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export",
        "Bulk Data v2 Patient-level export: the compartments of every patient, or of the patient "
        "parameter (POST).",
    ),
}
"""Canonical definition and notes of each operation, keyed by (name, type) — `Resource` for a route
on every type (`[base]/[type]/$name`), SYSTEM_LEVEL for one on the base URL."""

SYSTEM_INTERACTIONS: tuple[tuple[Interaction, str | None], ...] = (
    (Interaction.TRANSACTION, None),
    (Interaction.BATCH, None),
    (Interaction.SEARCH_SYSTEM, None),
    (
        Interaction.HISTORY_SYSTEM,
        "A change feed: versions in commit order (change marker), keyset paged; _since, _count, _type, "
        "_sort=_lastUpdated (oldest first); Bundle.meta.lastUpdated is the _since to resume with. "
        "AuditEvent is not part of it.",
    ),
)
"""`POST [base]` (a transaction or batch Bundle), `GET [base]?...` and `GET [base]/_history`."""


@cache
def _template() -> dict[str, Any]:
    return dict(json.loads((CAPABILITY_DIR / "CapabilityStatement.json").read_text(encoding="utf-8")))


def interactions_for(resource_type: str) -> list[Interaction]:
    """The restful interactions served on `resource_type`, in the order R4 lists them."""
    served = [Interaction.READ, Interaction.VREAD]
    writable = resource_type in CLIENT_WRITABLE_TYPES
    searchable = resource_type in SEARCHABLE_TYPES
    if writable:
        served += [Interaction.UPDATE, Interaction.PATCH, Interaction.DELETE]
    if searchable:
        served += [Interaction.HISTORY_INSTANCE, Interaction.HISTORY_TYPE]
    if writable:
        served.append(Interaction.CREATE)
    if searchable:
        served.append(Interaction.SEARCH_TYPE)
    return served


def operations_by_type(paths: Sequence[str]) -> dict[str, list[tuple[str, OperationText]]]:
    """The operations the routes serve, by type (SYSTEM_LEVEL for the base URL).

    `paths` are route paths below the FHIR base: `/$export`, `/Patient/$export`,
    `/{resource_type}/$validate`, `/{resource_type}/{resource_id}/$validate`... A route on a type this
    server does not store (`/Group/{id}/$export`) has no resource entry to be declared in.
    """
    found: dict[str, list[tuple[str, OperationText]]] = {}
    for path in paths:
        segments = path.strip("/").split("/")
        if not segments[-1].startswith("$"):
            continue
        name = segments[-1].removeprefix("$")
        owner = SYSTEM_LEVEL if len(segments) == 1 else segments[0]
        if owner.startswith("{"):
            owner = ANY_TYPE
        elif owner != SYSTEM_LEVEL and owner not in SUPPORTED_TYPES:
            continue
        text = OPERATIONS.get((name, owner))
        if text is None:
            raise LookupError(f"the route {path} serves ${name}, which capabilities.OPERATIONS does not name")
        for resource_type in SUPPORTED_TYPES if owner == ANY_TYPE else (owner,):
            declared = found.setdefault(resource_type, [])
            if all(existing != name for existing, _ in declared):
                declared.append((name, text))
    return found


def _operation(name: str, text: OperationText) -> dict[str, Any]:
    entry = {"name": name, "definition": text.definition}
    if text.documentation:
        entry["documentation"] = text.documentation
    return entry


CLIENT_CHOSEN_IDS = (
    "The server assigns ids: a PUT on an unknown id creates only for `system/` clients the patient's "
    "consent permits (identity managers and platforms syncing a record); for other clients it is 404 "
    "(docs/consent.md, hidden is absent)."
)


def _resource(
    registry: SearchRegistry, resource_type: str, operations: list[tuple[str, OperationText]]
) -> dict[str, Any]:
    writable = resource_type in CLIENT_WRITABLE_TYPES
    entry: dict[str, Any] = {
        "type": resource_type,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{resource_type}",
        "interaction": [{"code": str(interaction)} for interaction in interactions_for(resource_type)],
        "versioning": "versioned-update" if writable else "versioned",
        "readHistory": writable,
        "updateCreate": resource_type == PATIENT,
        "conditionalCreate": writable,
        "conditionalRead": "not-supported",
        "conditionalUpdate": writable,
        "conditionalDelete": "single" if writable else "not-supported",
    }
    if writable and resource_type != PATIENT:
        entry["documentation"] = CLIENT_CHOSEN_IDS
    if resource_type in SEARCHABLE_TYPES:
        entry["searchInclude"] = includes_for(registry, resource_type)
        entry["searchRevInclude"] = revincludes_for(registry, resource_type)
        entry["searchParam"] = [
            {"name": parameter.code, "definition": parameter.url, "type": parameter.type}
            for parameter in sorted(registry.parameters_for(resource_type).values(), key=lambda p: p.code)
        ]
    if operations:
        entry["operation"] = [_operation(name, text) for name, text in operations]
    return entry


def build_capability_statement(
    registry: SearchRegistry, *, base_url: str, settings: Settings, paths: Sequence[str]
) -> dict[str, Any]:
    """The statement for these settings; `paths` are the API's route paths below the FHIR base."""
    statement = copy.deepcopy(_template())
    statement["software"]["version"] = __version__
    statement["implementation"]["url"] = base_url
    rest = statement["rest"][0]
    oauth_uris = discovery.oauth_uris_extension(settings)
    if oauth_uris:
        rest["security"]["extension"] = oauth_uris
    notes = {entry["type"]: entry for entry in rest.get("resource") or []}
    unknown = sorted(set(notes) - set(SUPPORTED_TYPES))
    if unknown:
        raise LookupError(f"CapabilityStatement.json describes types this server does not serve: {unknown}")
    operations = operations_by_type(paths)
    rest["resource"] = [
        _resource(registry, resource_type, operations.get(resource_type, [])) | notes.get(resource_type, {})
        for resource_type in SUPPORTED_TYPES
    ]
    rest["interaction"] = [
        {"code": str(interaction), **({"documentation": text} if text else {})}
        for interaction, text in SYSTEM_INTERACTIONS
    ]
    if operations.get(SYSTEM_LEVEL):
        rest["operation"] = [_operation(name, text) for name, text in operations[SYSTEM_LEVEL]]
    return statement


async def capability_statement(
    ctx: InteractionContext, services: Services, *, paths: Sequence[str]
) -> FhirResponse:
    statement = build_capability_statement(
        services.registry, base_url=services.base_url, settings=services.settings, paths=paths
    )
    statement["date"] = instant(ctx.now)
    return FhirResponse(200, statement)
