"""FHIR history: instance, type and system level, `_since`, `_count`, keyset paging.

https://hl7.org/fhir/R4/http.html#history — every version is decided on its own, deletions included,
so a hidden or masked version never appears (docs/architecture.md I4).

Type and system history are a change feed (storage/changes.py): versions in commit order by their
change marker, newest first (R4) or oldest first with `_sort=_lastUpdated` (the R5 history
parameter), keyset paged on the marker below a horizon that only ever covers committed versions,
so a version that commits late is on a later page, never skipped, and never on two pages.
`_since` selects versions by their change time (`cht`, never before their `lastUpdated`), and every
page's `Bundle.meta.lastUpdated` is its horizon's resume instant: a client that pages to the end and
later resumes with `_since=<that instant>` gets exactly the versions it has not seen. Instance
history and the history of AuditEvent (written by the audit sink, without change markers) order by
`lastUpdated`, newest first; AuditEvent is not part of the system feed. A version is shown only when
its resource's current version is visible too: a document hidden today hides its past (docs/consent.md).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson

from fhir_server.fhir.bundles import bundle
from fhir_server.fhir.errors import FhirError, bad_request, method_not_allowed, not_found
from fhir_server.fhir.resources import REACHED_THROUGH_DOCUMENTS, SUPPORTED_TYPES
from fhir_server.interactions import views
from fhir_server.interactions.context import InteractionContext
from fhir_server.interactions.pipeline import check_scope
from fhir_server.interactions.response import FhirResponse
from fhir_server.interactions.services import Services
from fhir_server.storage.changes import Horizon
from fhir_server.storage.documents import UNVERSIONED_TYPES, StoredResource, instant

DEFAULT_COUNT = 20
MAX_COUNT = 1000
CURSOR_PARAMETER = "_cursor"
OLDEST_FIRST = "_lastUpdated"
NEWEST_FIRST = "-_lastUpdated"
FEED_TYPES: tuple[str, ...] = tuple(
    t for t in SUPPORTED_TYPES if t not in UNVERSIONED_TYPES and t not in REACHED_THROUGH_DOCUMENTS
)
"""The types whose versions carry change markers: every type written through the repository."""


async def history(ctx: InteractionContext, services: Services) -> FhirResponse:
    """`GET [base]/[type]/_history` and `GET [base]/[type]/[id]/_history`."""
    resource_type = ctx.resource_type
    if resource_type is None:
        raise RuntimeError("history needs a type from the route")
    if resource_type in REACHED_THROUGH_DOCUMENTS:
        raise method_not_allowed(
            f"{resource_type} has no history here: read it through its DocumentReference"
        )
    params = parse_qsl(ctx.request.target.partition("?")[2], keep_blank_values=True)
    if ctx.resource_id is None and resource_type not in UNVERSIONED_TYPES:
        if _single(params, "_type") is not None:
            raise bad_request("_type applies to system history only", expression=("_type",))
        path = f"{ctx.request.base_url}/{resource_type}/_history"
        return await _change_feed(ctx, services, params, (resource_type,), path=path)
    since = _since(params)
    count = _count(params)
    before = _cursor(params)
    patients: tuple[str, ...] | None = None
    if ctx.resource_id is not None:
        patients = await services.repository.compartment_of(resource_type, ctx.resource_id)
        if patients is None:
            raise not_found(resource_type, ctx.resource_id)
    guard = await services.access.provider(ctx).guard(resource_type, patients=patients)
    if ctx.resource_id is not None and not await services.repository.visible_current(
        resource_type, [ctx.resource_id], guard=guard
    ):
        raise not_found(resource_type, ctx.resource_id)
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
    if ctx.resource_id is None:
        visible = await services.repository.visible_current(
            resource_type, [stored.id for stored in page], guard=guard
        )
        page = [stored for stored in page if stored.id in visible]
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
    entries = [_entry(ctx, stored) for stored in await views.served(ctx, services, page)]
    return FhirResponse(200, bundle("history", now=ctx.now, entries=entries, links=links))


async def history_system(ctx: InteractionContext, services: Services) -> FhirResponse:
    """`GET [base]/_history`: the change feed of every type in `_type` (default: all) the scopes cover."""
    params = parse_qsl(ctx.request.target.partition("?")[2], keep_blank_values=True)
    named = [name.strip() for name in (_single(params, "_type") or "").split(",") if name.strip()]
    for name in named:
        if name not in FEED_TYPES:
            raise bad_request(
                f"{name} has no system history here (AuditEvent: use AuditEvent/_history)",
                expression=("_type",),
            )
    types: list[str] = []
    for resource_type in named or FEED_TYPES:
        try:
            check_scope(ctx, resource_type)
        except FhirError:
            if named:
                raise
            continue
        types.append(resource_type)
    if not types:
        check_scope(ctx, FEED_TYPES[0])
    return await _change_feed(ctx, services, params, tuple(types), path=f"{ctx.request.base_url}/_history")


async def _change_feed(
    ctx: InteractionContext,
    services: Services,
    params: list[tuple[str, str]],
    types: tuple[str, ...],
    *,
    path: str,
) -> FhirResponse:
    since = _since(params)
    count = _count(params)
    descending = _descending(params)
    cursor = _feed_cursor(params, descending=descending)
    if cursor is not None and descending:
        # Newest first walks down from the first page's horizon: later changes belong to a new walk.
        horizon = Horizon(cursor.horizon, cursor.resume)
    else:
        horizon = await services.repository.change_horizon(now=ctx.now)
    provider = services.access.provider(ctx)
    guards = {resource_type: await provider.guard(resource_type, patients=None) for resource_type in types}
    found: list[tuple[int, StoredResource]] = []
    for resource_type in types:
        found.extend(
            await services.repository.changes(
                resource_type,
                guard=guards[resource_type],
                until=horizon.seq,
                after=None if cursor is None or descending else cursor.marker,
                before=cursor.marker if cursor is not None and descending else None,
                since=since,
                descending=descending,
                limit=count + 1,
            )
        )
    found.sort(key=lambda item: item[0], reverse=descending)
    page, more = found[:count], len(found) > count
    visible: set[tuple[str, str]] = set()
    for resource_type in types:
        ids = [stored.id for _, stored in page if stored.resource_type == resource_type]
        visible.update(
            (resource_type, resource_id)
            for resource_id in await services.repository.visible_current(
                resource_type, ids, guard=guards[resource_type]
            )
        )
    page = [(mark, stored) for mark, stored in page if (stored.resource_type, stored.id) in visible]
    for _, stored in page:
        ctx.audit.touch(f"{stored.reference}/_history/{stored.version}", patients=stored.compartment)
    kept = [(key, value) for key, value in params if key != CURSOR_PARAMETER]
    links = [("self", _url(path, params))]
    if more:
        token = _FeedCursor(page[-1][0], horizon.seq, horizon.resume).encode(descending=descending)
        links.append(("next", _url(path, [*kept, (CURSOR_PARAMETER, token)])))
    entries = [_entry(ctx, stored) for _, stored in page]
    return FhirResponse(200, bundle("history", now=horizon.resume, entries=entries, links=links))


def _descending(params: list[tuple[str, str]]) -> bool:
    order = _single(params, "_sort")
    if order not in (None, OLDEST_FIRST, NEWEST_FIRST):
        raise bad_request(
            f"history _sort is {OLDEST_FIRST} or {NEWEST_FIRST}, not {order!r}", expression=("_sort",)
        )
    return order != OLDEST_FIRST


@dataclass(frozen=True)
class _FeedCursor:
    """Where a change-feed walk stands: the last marker sent, and the horizon of the walk."""

    marker: int
    horizon: int
    resume: datetime

    def encode(self, *, descending: bool) -> str:
        raw = orjson.dumps(["d" if descending else "a", self.marker, self.horizon, instant(self.resume)])
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _feed_cursor(params: list[tuple[str, str]], *, descending: bool) -> _FeedCursor | None:
    text = _single(params, CURSOR_PARAMETER)
    if text is None:
        return None
    try:
        order, marker, horizon, moment = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        if (
            order != ("d" if descending else "a")
            or not isinstance(marker, int)
            or not isinstance(horizon, int)
        ):
            raise ValueError("cursor of another walk")
        return _FeedCursor(marker, horizon, datetime.fromisoformat(str(moment).replace("Z", "+00:00")))
    except (ValueError, TypeError) as error:
        raise bad_request("The paging cursor is not valid", expression=(CURSOR_PARAMETER,)) from error


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
