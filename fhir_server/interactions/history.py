"""FHIR history: instance and type level, `_since`, `_count`, keyset paging (newest first).

https://hl7.org/fhir/R4/http.html#history — every version is decided on its own, deletions included,
so a hidden or masked version never appears (DESIGN I4).
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson

from fhir_server.fhir.bundles import bundle
from fhir_server.fhir.errors import bad_request, not_found
from fhir_server.interactions.context import InteractionContext
from fhir_server.interactions.response import FhirResponse
from fhir_server.interactions.services import Services
from fhir_server.storage.documents import UNVERSIONED_TYPES, StoredResource, instant

DEFAULT_COUNT = 20
MAX_COUNT = 1000
CURSOR_PARAMETER = "_cursor"


async def history(ctx: InteractionContext, services: Services) -> FhirResponse:
    resource_type = ctx.resource_type
    if resource_type is None:
        raise RuntimeError("history needs a type from the route")
    params = parse_qsl(ctx.request.target.partition("?")[2], keep_blank_values=True)
    since = _since(params)
    count = _count(params)
    before = _cursor(params)
    patients: tuple[str, ...] | None = None
    if ctx.resource_id is not None:
        patients = await services.repository.compartment_of(resource_type, ctx.resource_id)
        if patients is None:
            raise not_found(resource_type, ctx.resource_id)
    guard = await services.access.provider(ctx).guard(resource_type, patients=patients)
    versions = await services.repository.history(
        resource_type,
        guard=guard,
        resource_id=ctx.resource_id,
        since=since,
        before=before,
        limit=count + 1,
    )
    if ctx.resource_id is not None and not versions and before is None and since is None:
        raise not_found(resource_type, ctx.resource_id)
    page, more = versions[:count], len(versions) > count
    for stored in page:
        ctx.audit.touch(f"{stored.reference}/_history/{stored.version}", patients=stored.compartment)
    path = f"{ctx.request.base_url}/{resource_type}"
    if ctx.resource_id is not None:
        path += f"/{ctx.resource_id}"
    path += "/_history"
    kept = [(key, value) for key, value in params if key != CURSOR_PARAMETER]
    links = [("self", _url(path, params))]
    if more:
        last = page[-1]
        key = last.id if last.resource_type in UNVERSIONED_TYPES else f"{last.id}/{last.version}"
        token = _encode_cursor(last.last_updated, key)
        links.append(("next", _url(path, [*kept, (CURSOR_PARAMETER, token)])))
    entries = [_entry(ctx, stored) for stored in page]
    return FhirResponse(200, bundle("history", now=ctx.now, entries=entries, links=links))


def _entry(ctx: InteractionContext, stored: StoredResource) -> dict[str, Any]:
    url = f"{ctx.request.base_url}/{stored.reference}"
    entry: dict[str, Any] = {"fullUrl": url}
    if stored.deleted:
        entry["request"] = {"method": "DELETE", "url": stored.reference}
        entry["response"] = {
            "status": "204",
            "etag": stored.etag,
            "lastModified": instant(stored.last_updated),
        }
        return entry
    entry["resource"] = stored.resource
    method = "POST" if stored.version == 1 else "PUT"
    entry["request"] = {
        "method": method,
        "url": stored.resource_type if method == "POST" else stored.reference,
    }
    entry["response"] = {
        "status": "201" if stored.version == 1 else "200",
        "etag": stored.etag,
        "lastModified": instant(stored.last_updated),
    }
    return entry


def _url(path: str, params: list[tuple[str, str]]) -> str:
    return f"{path}?{urlencode(params)}" if params else path


def _single(params: list[tuple[str, str]], name: str) -> str | None:
    values = [value for key, value in params if key == name]
    if len(values) > 1:
        raise bad_request(f"{name} may be given once", expression=(name,))
    return values[0] if values else None


def _since(params: list[tuple[str, str]]) -> datetime | None:
    text = _single(params, "_since")
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as error:
        raise bad_request(f"_since must be a FHIR instant, not {text!r}", expression=("_since",)) from error
    if value.tzinfo is None:
        raise bad_request("_since must carry a time zone", expression=("_since",))
    return value


def _count(params: list[tuple[str, str]]) -> int:
    text = _single(params, "_count")
    if text is None:
        return DEFAULT_COUNT
    if not text.isdigit():
        raise bad_request(f"_count must be a non-negative integer, not {text!r}", expression=("_count",))
    return max(1, min(int(text), MAX_COUNT))


def _encode_cursor(last_updated: datetime, key: str) -> str:
    raw = orjson.dumps([instant(last_updated), key])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _cursor(params: list[tuple[str, str]]) -> tuple[datetime, str] | None:
    text = _single(params, CURSOR_PARAMETER)
    if text is None:
        return None
    try:
        moment, key = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        return datetime.fromisoformat(str(moment).replace("Z", "+00:00")), str(key)
    except (ValueError, TypeError) as error:
        raise bad_request("The paging cursor is not valid", expression=(CURSOR_PARAMETER,)) from error
