"""FHIR batch and transaction Bundles. https://hl7.org/fhir/R4/http.html#transaction

A transaction is all-or-nothing: every write entry, its history entry and its AuditEvent, and the
AuditEvent of the transaction itself, are committed in one MongoDB transaction; `urn:uuid` (and
other local fullUrl) references are rewritten to the ids the server assigns; entries run in the
order of the specification (DELETE, POST, PUT/PATCH, then GET), and the response has one entry per
request entry, in request order. A refused entry refuses the whole Bundle, naming the entry.
A batch runs each entry on its own, as if it were a request, and reports errors per entry.
A transaction that is an IHE MHD ITI-65 Provide Document Bundle is also checked as one
(interactions/mhd.py) and audited with its `urn:ihe:event-type-code#ITI-65` subtype; replaced
DocumentReferences are superseded in the same transaction; large Binary content is uploaded to
GridFS before the transaction and committed with it (storage/binaries.py).

Bounded cost: a Bundle of more than `MAX_BUNDLE_ENTRIES` entries is refused (413) before any of
them is read; the Bundle's own AuditEvents name, per patient, that patient's entries only (one
event per entry besides), so the audit of a Bundle grows linearly with its entries; the entry
loops hand the event loop back to other requests every `YIELD_EVERY` entries.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson
from pymongo.asynchronous.client_session import AsyncClientSession

from fhir_server.audit.balp import InteractionFacts, build_audit_events
from fhir_server.fhir.bundles import bundle as make_bundle
from fhir_server.fhir.errors import FhirError, Issue, bad_request, unprocessable
from fhir_server.fhir.instants import instant
from fhir_server.fhir.interaction import Interaction
from fhir_server.fhir.resources import BINARY, DOCUMENT_REFERENCE
from fhir_server.interactions import dispatch, mhd
from fhir_server.interactions.context import InteractionContext, RequestMeta
from fhir_server.interactions.dispatch import BytesBody, Resolved
from fhir_server.interactions.pipeline import Handler, check_scope, facts_of, serve
from fhir_server.interactions.response import FhirResponse
from fhir_server.interactions.services import Services
from fhir_server.interactions.write import (
    JSON_PATCH,
    ConditionChanged,
    Planned,
    parse_patch,
    plan_create,
    plan_delete,
    plan_patch,
    plan_update,
    render_write,
    replanned,
    serve_write,
)
from fhir_server.record.documents import StoredResource
from fhir_server.storage.binaries import Staging
from fhir_server.validation import parse_resource_json, validate_or_raise, validate_resource

ERRORS = ("error", "fatal")
ENTRY_EXPRESSION = re.compile(r"^Bundle\.entry\[(\d+)\]")
ORDER = {Interaction.DELETE: 0, Interaction.CREATE: 1, Interaction.UPDATE: 2, Interaction.PATCH: 2}
"""Write entries run in this order; every other entry is served after them, as its own request."""
LOCAL_REFERENCE_PREFIXES = ("urn:uuid:", "urn:oid:")
MAX_BUNDLE_ENTRIES = 1000
"""Most entries a batch or transaction may hold (docs/configuration.md): a transaction commits as
one database transaction, whose size and duration grow with its entries; split larger loads."""
YIELD_EVERY = 25
"""Entries processed between two yields to the event loop, so one Bundle never starves the others."""
AUDIT_SLICE = 100
"""AuditEvents handed to the sink at once: each slice is prepared (CPU) before it is stored."""


@dataclass
class Entry:
    index: int
    method: str
    url: str
    resource: dict[str, Any] | None
    full_url: str | None
    ctx: InteractionContext
    resolved: Resolved
    resource_type: str = ""
    resource_id: str | None = None
    query: str = ""
    planned: Planned | None = None
    result: FhirResponse | None = None
    stored: StoredResource | None = None
    extras: dict[str, str] = field(default_factory=dict)

    @property
    def expression(self) -> str:
        return f"Bundle.entry[{self.index}]"

    @property
    def is_write(self) -> bool:
        return self.ctx.interaction.is_write and self.resolved.refusal is None

    @property
    def order(self) -> int:
        return ORDER.get(self.ctx.interaction, len(ORDER))


async def process(ctx: InteractionContext, services: Services, *, body: bytes) -> FhirResponse:
    """A batch or transaction Bundle; planned again from the body when a conditional entry's matches
    changed before it committed (interactions/write.py, `replanned`): ids and references anew."""
    return await replanned(ctx, lambda: _process(ctx, services, body=body))


async def _process(ctx: InteractionContext, services: Services, *, body: bytes) -> FhirResponse:
    payload = parse_resource_json(body)
    if payload.get("resourceType") != "Bundle":
        raise bad_request(
            "POST to the base URL takes a batch or transaction Bundle", expression=("resourceType",)
        )
    kind = payload.get("type")
    ctx.interaction = Interaction.BATCH if kind == "batch" else Interaction.TRANSACTION
    raw_entries = payload.get("entry")
    if isinstance(raw_entries, list) and len(raw_entries) > MAX_BUNDLE_ENTRIES:
        raise FhirError.of(
            413,
            "too-costly",
            f"The Bundle has {len(raw_entries)} entries; this server takes at most {MAX_BUNDLE_ENTRIES} "
            "per batch or transaction: split it",
            expression=("Bundle.entry",),
        )
    issues = [
        issue for issue in validate_resource(payload, expected_type="Bundle") if issue.severity in ERRORS
    ]
    entries = [
        _entry(ctx, index, raw)
        for index, raw in enumerate(raw_entries if isinstance(raw_entries, list) else [])
    ]
    per_entry = _issues_by_entry(issues) if kind == "batch" else None
    if per_entry is None:
        # An entry naming no interaction refuses the transaction as that request would be refused.
        for entry in entries:
            if kind != "batch" and entry.resolved.refusal is not None:
                raise _named(entry, entry.resolved.refusal)
        if issues:
            raise unprocessable(issues)
        per_entry = {}
    if kind == "batch":
        return await _batch(ctx, services, entries, per_entry)
    provide_bundle = mhd.is_provide_bundle(payload)
    if provide_bundle:
        ctx.audit.mhd_transaction = mhd.PROVIDE_DOCUMENT_BUNDLE
    async with services.repository.binaries.staging(ctx.now) as staging:
        return await _transaction(ctx, services, entries, staging, provide_bundle=provide_bundle)


def _issues_by_entry(issues: list[Issue]) -> dict[int, list[Issue]] | None:
    """A batch's validation issues grouped by entry; None when one concerns the Bundle itself."""
    grouped: dict[int, list[Issue]] = {}
    for issue in issues:
        match = ENTRY_EXPRESSION.match(issue.expression[0]) if issue.expression else None
        if match is None:
            return None
        grouped.setdefault(int(match.group(1)), []).append(issue)
    return grouped


# -- parsing --------------------------------------------------------------------------------------


def _entry(parent: InteractionContext, index: int, raw: Any) -> Entry:
    """An entry resolved through the table of interactions, exactly as the same plain request.

    Read defensively: the Bundle's validation issues are reported after the routing refusals."""
    raw = raw if isinstance(raw, dict) else {}
    request = raw.get("request") if isinstance(raw.get("request"), dict) else {}
    method = str(request.get("method", "")).upper()
    url = _relative(str(request.get("url", "")), parent.request.base_url)
    path, _, query = url.partition("?")
    resolved = dispatch.resolve(method, unquote(path), entry=True)
    headers = {
        name: str(request[key])
        for key, name in (
            ("ifMatch", "if-match"),
            ("ifNoneExist", "if-none-exist"),
            ("ifNoneMatch", "if-none-match"),
        )
        if request.get(key)
    }
    if parent.request.header("prefer"):
        headers["prefer"] = str(parent.request.header("prefer"))
    headers["accept"] = "application/fhir+json"
    meta = RequestMeta(
        method=method,
        target=f"/fhir/{url}",
        base_url=parent.request.base_url,
        request_id=parent.request.request_id,
        client_address=parent.request.client_address,
        headers=headers,
    )
    ctx = dispatch.context(resolved, meta, parent.now, principal=parent.principal, bundle=parent.interaction)
    return Entry(
        index=index,
        method=method,
        url=url,
        resource=raw.get("resource") if isinstance(raw.get("resource"), dict) else None,
        full_url=raw.get("fullUrl") if isinstance(raw.get("fullUrl"), str) else None,
        ctx=ctx,
        resolved=resolved,
        resource_type=resolved.resource_type or "",
        resource_id=resolved.resource_id,
        query=query,
    )


def _check_entry(entry: Entry) -> None:
    """An entry that names no interaction, or whose scope is refused, refuses the transaction."""
    if entry.resolved.refusal is not None:
        raise entry.resolved.refusal
    check_scope(entry.ctx)


def _relative(url: str, base_url: str) -> str:
    if url.startswith(base_url + "/"):
        return url[len(base_url) + 1 :]
    if "://" in url:
        path = urlsplit(url).path
        marker = "/fhir/"
        return path.split(marker, 1)[1] if marker in path else path.lstrip("/")
    return url.lstrip("/")


# -- transaction ----------------------------------------------------------------------------------


async def _transaction(
    ctx: InteractionContext,
    services: Services,
    entries: list[Entry],
    staging: Staging,
    *,
    provide_bundle: bool,
) -> FhirResponse:
    for entry in entries:
        _guard_entry(entry, _check_entry, entry)
    references: dict[str, str] = {}
    ordered = sorted((entry for entry in entries if entry.is_write), key=lambda item: item.order)
    async for entry in _paced(ordered):
        if entry.method in ("POST", "PUT") and entry.resource is not None:
            await _guard_async(entry, _assign_identity(entry, services, references))
    async for entry in _paced(entries):
        if entry.resource is not None:
            _guard_entry(entry, _rewrite, entry, references)
    derived = await _check_documents(ctx, services, entries, staging, provide_bundle=provide_bundle)
    async for entry in _paced(entries):
        if entry.is_write:
            entry.planned = await _guard_async(entry, _plan(entry, services))
    writes = sorted(
        (entry for entry in [*entries, *derived] if entry.planned is not None),
        key=lambda item: item.order,
    )

    async def work(session: AsyncClientSession) -> tuple[None, int]:
        events: list[dict[str, Any]] = []
        async for entry in _paced(writes):
            planned = entry.planned
            if planned is None or planned.apply is None:
                continue
            stored, status = await _guard_async(entry, planned.apply(session))
            entry.stored = stored
            entry.result = render_write(entry.ctx, stored, status)
            events.extend(build_audit_events(facts_of(entry.ctx, status, outcome_desc=None)))
            ctx.audit.patients.update(entry.ctx.audit.patients)
        await staging.commit(session)
        # Every entry's AuditEvent and the transaction's own, in the transaction, a slice at a time:
        # preparing an event (its search index values) is CPU work the event loop waits for.
        events.extend(build_audit_events(_bundle_facts(ctx, writes, len(entries))))
        for start in range(0, len(events), AUDIT_SLICE):
            await services.audit.record(events[start : start + AUDIT_SLICE], session=session)
            await asyncio.sleep(0)
        return None, 200

    await services.repository.in_transaction(work)
    ctx.audit.recorded = True
    await _results(services, entries, writes)
    return FhirResponse(
        200,
        make_bundle(
            "transaction-response", now=ctx.now, entries=[_response_entry(entry) for entry in entries]
        ),
    )


async def _results(services: Services, entries: list[Entry], writes: list[Entry]) -> None:
    """Each entry's response once committed: writes as served to their caller, then the reads."""
    for entry in writes:
        if entry.result is not None and entry.stored is not None:
            entry.result = await serve_write(entry.ctx, services, entry.stored, entry.result.status)
    for entry in entries:
        if entry.planned is not None and entry.planned.existing is not None:
            entry.result = await serve_write(entry.ctx, services, entry.planned.existing, 200)
        elif entry.planned is not None and entry.planned.apply is None and entry.result is None:
            entry.result = FhirResponse(204)
    async for entry in _paced(entries):
        if not entry.is_write:
            entry.result = await serve(services, entry.ctx, _entry_handler(entry))


async def _check_documents(
    ctx: InteractionContext,
    services: Services,
    entries: list[Entry],
    staging: Staging,
    *,
    provide_bundle: bool,
) -> list[Entry]:
    """ITI-65 and attachment checks, large Binary content staged; the supersede entries to add."""
    contents = mhd.binary_contents(entries)
    owners = mhd.check_attachments(
        entries, contents, base_url=ctx.request.base_url, provide_bundle=provide_bundle
    )
    if provide_bundle:
        mhd.check_provide_bundle(entries)
    derived: list[Entry] = []
    for replacement in mhd.replacements(entries):
        raw = {"request": {"method": "PATCH", "url": f"{DOCUMENT_REFERENCE}/{replacement.target}"}}
        entry = _entry(ctx, replacement.index, raw)
        _guard_entry(entry, _check_entry, entry)
        entry.planned = await _guard_async(entry, plan_patch(entry.ctx, services, mhd.SUPERSEDE))
        derived.append(entry)
    for entry in entries:
        if entry.method in mhd.WRITES and entry.resource_type == BINARY and entry.resource is not None:
            reference = f"{BINARY}/{entry.resource.get('id') or entry.resource_id}"
            if entry.resource_id is not None:
                entry.resource.setdefault("id", entry.resource_id)
            await _guard_async(entry, staging.offload(entry.resource, content=contents.get(reference)))
            # A Binary with no securityContext is audited in the record of the documents it is the
            # content of (one audit chain per patient, not the shared system chain).
            entry.ctx.audit.patients.update(owners.get(reference, set()))
    return derived


async def _paced(entries: Iterable[Entry]) -> AsyncIterator[Entry]:
    """`entries`, handing the event loop to other requests every `YIELD_EVERY` of them: an entry's
    step may be CPU work only (validation, rewriting), and a Bundle holds up to a thousand."""
    for position, entry in enumerate(entries):
        if position and position % YIELD_EVERY == 0:
            await asyncio.sleep(0)
        yield entry


def _bundle_facts(ctx: InteractionContext, entries: Iterable[Entry], count: int) -> InteractionFacts:
    """The facts of the Bundle's own AuditEvents: each patient's event names her entries only.

    An entry's references are those its own event names (none for a search or history: BALP
    minimal), attributed to the patients of that entry; an entry of no patient is named by the
    event without patient. Linear in the entries, where naming every entry in every patient's
    event would grow as entries x patients.
    """
    per_patient: dict[str, dict[str, None]] = {}
    unassigned: dict[str, None] = {}
    for entry in entries:
        audit = entry.ctx.audit
        if entry.ctx.interaction.is_search or entry.ctx.interaction.is_history:
            references: list[str] = []
        else:
            references = audit.resources
        for patient in audit.patients:
            per_patient.setdefault(patient, {}).update(dict.fromkeys(references))
        if not audit.patients:
            unassigned.update(dict.fromkeys(references))
    return dataclasses.replace(
        facts_of(ctx, 200, outcome_desc=None),
        patient_ids=tuple(sorted(per_patient.keys() | ctx.audit.patients)),
        resources=tuple(unassigned),
        patient_resources={patient: tuple(references) for patient, references in per_patient.items()},
        bundle_entries=count,
    )


async def _assign_identity(entry: Entry, services: Services, references: dict[str, str]) -> None:
    """Resolve the id a POST or PUT entry will have, so references to its fullUrl can be rewritten."""
    resource = entry.resource
    if resource is None:
        return
    if resource.get("resourceType") != entry.resource_type:
        raise bad_request(
            f"The resource is a {resource.get('resourceType')}, the request URL names {entry.resource_type}",
            expression=(f"{entry.expression}.resource.resourceType",),
        )
    if entry.method == "POST":
        resource.pop("id", None)
        planned = await plan_create(entry.ctx, services, resource)
        entry.planned = planned
        target = planned.existing.id if planned.existing is not None else resource["id"]
    elif entry.resource_id is not None:
        target = entry.resource_id
    else:
        planned = await plan_update(entry.ctx, services, resource)
        entry.planned = planned
        target = resource["id"]
    if entry.full_url:
        references[entry.full_url] = f"{entry.resource_type}/{target}"


def _rewrite(entry: Entry, references: dict[str, str]) -> None:
    resource = entry.resource
    if resource is None:
        return
    for holder, key, value in _strings(resource):
        if value in references:
            holder[key] = references[value]
        elif key in ("reference", "url") and value.startswith(LOCAL_REFERENCE_PREFIXES):
            raise FhirError.of(
                422,
                "not-found",
                f"Reference {value} does not resolve to any entry of this Bundle",
                expression=(f"{entry.expression}.resource",),
            )


def _strings(value: Any) -> Iterator[tuple[Any, Any, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str):
                yield value, key, item
            else:
                yield from _strings(item)
    elif isinstance(value, list):
        for position, item in enumerate(value):
            if isinstance(item, str):
                yield value, position, item
            else:
                yield from _strings(item)


async def _plan(entry: Entry, services: Services) -> Planned:
    if entry.planned is not None:
        return entry.planned
    if entry.ctx.interaction in (Interaction.CREATE, Interaction.UPDATE):
        resource = entry.resource
        if resource is None:
            raise bad_request(
                "A POST or PUT entry needs a resource", expression=(f"{entry.expression}.resource",)
            )
        validated = validate_or_raise(resource, expected_type=entry.resource_type)
        create = entry.ctx.interaction == Interaction.CREATE
        return await (plan_create if create else plan_update)(entry.ctx, services, validated)
    if entry.ctx.interaction == Interaction.PATCH:
        return await plan_patch(entry.ctx, services, parse_patch(_patch_document(entry)))
    return await plan_delete(entry.ctx, services)


def _patch_document(entry: Entry) -> bytes:
    """A PATCH entry carries its JSON Patch as a Binary (http.html#patch, 'Patch using Transactions')."""
    resource = entry.resource or {}
    if resource.get("resourceType") != "Binary" or resource.get("contentType") != JSON_PATCH:
        raise FhirError.of(
            415,
            "not-supported",
            f"A PATCH entry needs a Binary with contentType {JSON_PATCH}",
            expression=(f"{entry.expression}.resource",),
        )
    try:
        return base64.b64decode(str(resource.get("data") or ""), validate=True)
    except ValueError as error:
        raise bad_request("The PATCH entry's data is not base64", expression=(entry.expression,)) from error


def _body(entry: Entry) -> BytesBody:
    """The body the same plain request would carry."""
    if entry.method == "PATCH":
        return BytesBody(_patch_document(entry), JSON_PATCH)
    if entry.resource is None:
        return BytesBody()
    return BytesBody(orjson.dumps(entry.resource), "application/fhir+json")


def _entry_handler(entry: Entry, issues: list[Issue] | None = None) -> Handler:
    """The entry run as its plain request (table handler, after the pipeline's scope check)."""

    async def run(ctx: InteractionContext, services: Services) -> FhirResponse:
        if entry.resolved.refusal is not None:
            raise entry.resolved.refusal
        if issues:
            raise unprocessable(issues)
        if entry.ctx.audit.bundle == Interaction.BATCH and entry.resource is not None:
            for _, key, value in _strings(entry.resource):
                if key == "reference" and value.startswith(LOCAL_REFERENCE_PREFIXES):
                    raise bad_request(
                        f"Reference {value} cannot be resolved: batch entries are independent",
                        expression=(f"{entry.expression}.resource",),
                    )
        query = parse_qsl(entry.query, keep_blank_values=True)
        return await dispatch.bind(entry.resolved, body=_body(entry), query=query)(ctx, services)

    return run


# -- batch ----------------------------------------------------------------------------------------


async def _batch(
    ctx: InteractionContext, services: Services, entries: list[Entry], invalid: dict[int, list[Issue]]
) -> FhirResponse:
    async for entry in _paced(entries):
        entry.result = await serve(services, entry.ctx, _entry_handler(entry, invalid.get(entry.index)))
    # The batch's own events, recorded here (not by the pipeline) to name each patient's entries only.
    await services.audit.record(build_audit_events(_bundle_facts(ctx, entries, len(entries))))
    ctx.audit.recorded = True
    return FhirResponse(
        200, make_bundle("batch-response", now=ctx.now, entries=[_response_entry(entry) for entry in entries])
    )


# -- responses and errors -------------------------------------------------------------------------


def _response_entry(entry: Entry) -> dict[str, Any]:
    result = entry.result or FhirResponse(500)
    response: dict[str, Any] = {"status": f"{result.status} {HTTPStatus(result.status).phrase}"}
    headers = {key.lower(): value for key, value in result.headers.items()}
    if "location" in headers:
        response["location"] = headers["location"]
    if "etag" in headers:
        response["etag"] = headers["etag"]
    if entry.stored is not None:
        response["lastModified"] = instant(entry.stored.last_updated)
    body: dict[str, Any] = {"response": {key: value for key, value in response.items() if value is not None}}
    if entry.stored is not None and entry.stored.resource is not None:
        body["fullUrl"] = f"{entry.ctx.request.base_url}/{entry.stored.reference}"
    if result.body is not None:
        if result.status >= 400 or result.body.get("resourceType") == "OperationOutcome":
            body["response"]["outcome"] = result.body
        else:
            body["resource"] = result.body
    return body


def _named(entry: Entry, error: FhirError) -> FhirError:
    issues = [
        Issue(
            issue.severity,
            issue.code,
            f"{entry.expression} ({entry.method} {entry.url}): {issue.diagnostics}",
            issue.expression or (entry.expression,),
        )
        for issue in error.issues
    ]
    return FhirError(error.status, issues, error.headers)


def _guard_entry(entry: Entry, step: Callable[..., None], *args: Any) -> None:
    try:
        step(*args)
    except FhirError as error:
        raise _named(entry, error) from error


async def _guard_async(entry: Entry, awaitable: Any) -> Any:
    try:
        return await awaitable
    except ConditionChanged:
        raise
    except FhirError as error:
        raise _named(entry, error) from error
