"""What a `$export` kick-off asks: its parameters, checked before any job is stored (400/403 on bad input).

https://hl7.org/fhir/uv/bulkdata/export.html#query-parameters

No I/O: the Group's members are read by the kick-off (export/kickoff.py); `_typeFilter` queries are
parsed here to refuse bad input at once, and parsed again by the runner when the job runs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from fhir_server.auth.principal import Principal
from fhir_server.auth.scopes import granting_scopes
from fhir_server.fhir.errors import bad_request, forbidden
from fhir_server.fhir.interaction import Interaction
from fhir_server.fhir.references import reference_id
from fhir_server.fhir.resources import PATIENT, REACHED_THROUGH_DOCUMENTS, SUPPORTED_TYPES
from fhir_server.interactions.context import InteractionContext
from fhir_server.interactions.services import Services
from fhir_server.record import documents as doc
from fhir_server.search.parse import parse_search
from fhir_server.validation import parse_resource_json

NDJSON = "application/fhir+ndjson"
OUTPUT_FORMATS = frozenset({NDJSON, "application/ndjson", "ndjson"})
EXPORT_TYPES: tuple[str, ...] = tuple(
    t for t in SUPPORTED_TYPES if t not in doc.UNVERSIONED_TYPES and t not in REACHED_THROUGH_DOCUMENTS
)
"""AuditEvents are the server's own trail, not record data a platform copies: not exported."""
GROUP = "Group"
SYSTEM_LEVEL, PATIENT_LEVEL, GROUP_LEVEL = "system", "patient", "group"
PARAMETERS = frozenset({"_outputFormat", "_type", "_since", "_typeFilter", "patient"})
FILTER_RESULT_PARAMETERS = frozenset(
    {"_count", "_sort", "_include", "_revinclude", "_summary", "_elements", "_total", "_cursor", "_contained"}
)
_FILTER_SPLIT = re.compile(r",(?=[A-Z][A-Za-z]*\?)")


@dataclass(frozen=True)
class ExportParameters:
    """The checked parameters of a kick-off."""

    types: tuple[str, ...]
    type_filters: dict[str, tuple[str, ...]]
    since: datetime | None
    patients: tuple[str, ...] | None
    """The `patient` parameter's ids, None when not given."""


def export_parameters(
    ctx: InteractionContext, services: Services, principal: Principal, *, level: str, body: bytes
) -> ExportParameters:
    """The kick-off's `Prefer` header and parameters (query string, or a POSTed Parameters resource)."""
    prefer = (ctx.request.header("prefer") or "").replace(" ", "").lower()
    if "respond-async" not in prefer.split(","):
        raise bad_request("$export runs asynchronously: send Prefer: respond-async")
    params = _parameters(ctx, body)
    lenient = "handling=lenient" in prefer
    for name, _ in params:
        if name not in PARAMETERS and not lenient:
            raise bad_request(f"$export does not support the parameter {name}", expression=(name,))
    output_format = _one(params, "_outputFormat") or NDJSON
    if output_format not in OUTPUT_FORMATS:
        raise bad_request(f"_outputFormat {output_format} is not supported: use {NDJSON}")
    types = _types(principal, params)
    return ExportParameters(
        types=types,
        type_filters=_type_filters(services, ctx, params, types),
        since=_since(_one(params, "_since")),
        patients=_patient_parameter(params, level=level),
    )


def system_principal(ctx: InteractionContext) -> Principal:
    principal = ctx.require_principal()
    if not principal.is_system:
        raise forbidden("Bulk export needs a system/ token (a backend client)")
    return principal


def covered(principal: Principal, resource_type: str) -> bool:
    """A granted `system/` scope permits searching `resource_type`."""
    return any(
        scope.context == "system"
        for scope in granting_scopes(principal.scopes, Interaction.SEARCH_TYPE, resource_type)
    )


def _parameters(ctx: InteractionContext, body: bytes) -> list[tuple[str, str]]:
    """Query parameters, plus those of a POSTed Parameters resource (valueString / valueInstant /
    valueReference)."""
    params = parse_qsl(ctx.request.target.partition("?")[2], keep_blank_values=True)
    if ctx.request.method != "POST" or not body.strip():
        return params
    payload = parse_resource_json(body)
    if payload.get("resourceType") != "Parameters":
        raise bad_request("POST $export takes a Parameters resource")
    for parameter in payload.get("parameter") or []:
        name = parameter.get("name")
        value = parameter.get("valueString") or parameter.get("valueInstant") or parameter.get("valueCode")
        chosen = value or (parameter.get("valueReference") or {}).get("reference")
        if not isinstance(name, str) or not isinstance(chosen, str):
            raise bad_request("Each $export parameter needs a name and a string, instant or reference value")
        params.append((name, chosen))
    return params


def _one(params: Sequence[tuple[str, str]], name: str) -> str | None:
    values = [value for key, value in params if key == name]
    if len(values) > 1:
        raise bad_request(f"{name} may be given once", expression=(name,))
    return values[0] if values else None


def _types(principal: Principal, params: Sequence[tuple[str, str]]) -> tuple[str, ...]:
    named = [item.strip() for key, value in params if key == "_type" for item in value.split(",")]
    named = list(dict.fromkeys(item for item in named if item))
    for name in named:
        if name not in EXPORT_TYPES:
            raise bad_request(f"{name} cannot be exported here", expression=("_type",))
        if not covered(principal, name):
            raise forbidden(f"No granted system/ scope permits exporting {name}")
    types = tuple(named) or tuple(t for t in EXPORT_TYPES if covered(principal, t))
    if not types:
        raise forbidden("No granted system/ scope permits exporting any type")
    return types


def _type_filters(
    services: Services, ctx: InteractionContext, params: Sequence[tuple[str, str]], types: tuple[str, ...]
) -> dict[str, tuple[str, ...]]:
    """`_typeFilter` queries by type, checked now (400 on bad input); compiled when the job runs."""
    filters: dict[str, list[str]] = {}
    for key, value in params:
        if key != "_typeFilter":
            continue
        for query in _FILTER_SPLIT.split(value):
            resource_type, separator, text = query.strip().partition("?")
            if not separator or resource_type not in types:
                raise bad_request(
                    f"_typeFilter {query!r} must be [type]?[query] for an exported type",
                    expression=("_typeFilter",),
                )
            parse_filter(services, ctx, resource_type, text)
            filters.setdefault(resource_type, []).append(text)
    return {key: tuple(value) for key, value in filters.items()}


def parse_filter(services: Services, ctx: InteractionContext, resource_type: str, text: str) -> Any:
    """One `_typeFilter` query as a search request: criteria only, no result parameters."""
    params = parse_qsl(text, keep_blank_values=True)
    refused = sorted({name.split(":")[0] for name, _ in params} & FILTER_RESULT_PARAMETERS)
    if refused:
        raise bad_request(
            f"_typeFilter takes search criteria only, not {', '.join(refused)}", expression=("_typeFilter",)
        )
    return parse_search(
        resource_type,
        params,
        registry=services.registry,
        strict=True,
        base_url=services.base_url,
        now=ctx.now,
    )


def _since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as error:
        raise bad_request(f"_since must be a FHIR instant, not {text!r}", expression=("_since",)) from error
    if value.tzinfo is None:
        raise bad_request("_since must carry a time zone", expression=("_since",))
    return value


def _patient_parameter(params: Sequence[tuple[str, str]], *, level: str) -> tuple[str, ...] | None:
    references = [value for key, value in params if key == "patient"]
    if not references:
        return None
    if level == SYSTEM_LEVEL:
        raise bad_request("patient applies to Patient- and Group-level export", expression=("patient",))
    ids = [reference_id({"reference": reference}, PATIENT) for reference in references]
    if any(item is None for item in ids):
        raise bad_request("patient takes references Patient/[id]", expression=("patient",))
    return tuple(sorted({item for item in ids if item is not None}))
