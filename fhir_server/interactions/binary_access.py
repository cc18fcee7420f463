"""The I/O around the Binary rule (consent/binary.py): load a Binary's owner, decide, bind, match.

Every interaction on a Binary takes its decision here: reads and vreads (`DocumentBoundAccess`, a
GuardProvider for the repository), updates, patches and deletes (`decide`), conditional matching
(`find_matches`), and a DocumentReference write that designates Binaries (`bind_attachments`). The
decision is on the owning DocumentReference's current version, read through the caller's own guard
for the interaction asked (read for reads, the write itself for writes). See docs/consent.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pymongo.asynchronous.client_session import AsyncClientSession

from fhir_server.consent.binary import (
    Reference,
    decide_binary,
    may_reference,
    owner_id,
    uploader,
    uploader_of,
    with_ownership,
)
from fhir_server.consent.model import Decision
from fhir_server.fhir.errors import FhirError
from fhir_server.fhir.interaction import Interaction
from fhir_server.fhir.references import reference_id
from fhir_server.fhir.resources import BINARY, DOCUMENT_REFERENCE
from fhir_server.interactions.context import InteractionContext
from fhir_server.interactions.search import GuardedResolver
from fhir_server.interactions.services import Services
from fhir_server.record import documents as doc
from fhir_server.record.documents import StoredResource
from fhir_server.search.compile import compile_filter
from fhir_server.search.parse import parse_search

WRITES = frozenset({Interaction.UPDATE, Interaction.PATCH, Interaction.DELETE})
NOT_ON_THIS_BINARY = "not-this-binary"


def binary_urls(base_url: str, binary_id: str) -> list[str]:
    """The `attachment.url` values that designate Binary `binary_id` on this server."""
    return [f"{BINARY}/{binary_id}", f"{base_url}/{BINARY}/{binary_id}"]


def local_binary(url: str, base_url: str) -> str | None:
    """`Binary/<id>` when `url` designates a Binary of this server (relative or under the base URL)."""
    relative = url.removeprefix(base_url + "/")
    parts = relative.split("/")
    if len(parts) == 2 and parts[0] == BINARY and parts[1]:
        return relative
    return None


def attachment_binaries(document: Mapping[str, Any] | None, base_url: str) -> list[tuple[int, str]]:
    """(content position, `Binary/<id>`) of each attachment of a DocumentReference that designates a
    Binary of this server."""
    found: list[tuple[int, str]] = []
    for position, content in enumerate((document or {}).get("content") or []):
        url = ((content or {}).get("attachment") or {}).get("url")
        target = local_binary(url, base_url) if isinstance(url, str) else None
        if target is not None:
            found.append((position, target))
    return found


async def current_binary(services: Services, binary_id: str) -> dict[str, Any] | None:
    """The live current version of a Binary, read only to decide (never sent as such)."""
    found = await services.repository.policy_documents(BINARY, {doc.ID: binary_id})
    return found[0] if found else None


class _OneBinaryGuard:
    """The decision on one Binary id, for every version of it; nothing else is visible."""

    def __init__(self, binary_id: str, decision: Decision) -> None:
        self._binary_id = binary_id
        self.decision = decision

    def query_filter(self, resource_type: str) -> Mapping[str, Any] | None:
        if resource_type != BINARY or not self.decision.permit:
            return None
        return {doc.ID: self._binary_id}

    def decide(self, stored: StoredResource) -> Decision:
        if (stored.resource_type, stored.id) != (BINARY, self._binary_id):
            return Decision.deny(NOT_ON_THIS_BINARY)
        return self.decision


class DocumentBoundAccess:
    """GuardProvider for one Binary: decided on its owning document's current version (module docstring).

    `interaction`: what the caller does to the Binary (default: the context's interaction); reads
    ask the document for `read`, writes for the same write.
    """

    def __init__(
        self,
        ctx: InteractionContext,
        services: Services,
        binary_id: str,
        *,
        interaction: Interaction | None = None,
    ) -> None:
        self._ctx = ctx
        self._services = services
        self._binary_id = binary_id
        self._interaction = interaction or ctx.interaction
        self._guard: _OneBinaryGuard | None = None

    async def guard(
        self,
        resource_type: str,
        *,
        patients: Sequence[str] | None,  # noqa: ARG002 - a Binary's patients are its owner's
    ) -> _OneBinaryGuard:
        if resource_type != BINARY:
            raise RuntimeError(f"DocumentBoundAccess decides Binary only, not {resource_type}")
        if self._guard is None:
            current = await current_binary(self._services, self._binary_id)
            owner = await self._owner_decision(owner_id(current))
            decision = decide_binary(self._ctx.require_principal(), current, owner)
            self._guard = _OneBinaryGuard(self._binary_id, decision)
        return self._guard

    async def _owner_decision(self, document_id: str | None) -> Decision | None:
        """The caller's decision on the owning document's current version; None when it is unknown
        or deleted (a deleted document's content is gone with it)."""
        if document_id is None:
            return None
        interaction = self._interaction if self._interaction in WRITES else Interaction.READ
        access = self._services.access.provider(self._ctx, interaction=interaction)
        decided: list[tuple[StoredResource, Decision]] = []
        try:
            await self._services.repository.read(
                DOCUMENT_REFERENCE,
                document_id,
                access=access,
                observe=lambda stored, decision: decided.append((stored, decision)),
            )
        except FhirError:
            pass
        if not decided or decided[0][0].deleted:
            return None
        document, decision = decided[0]
        if decision.permit:
            self._ctx.audit.patients.update(document.compartment)
        return decision


async def decide(
    ctx: InteractionContext, services: Services, binary_id: str, interaction: Interaction
) -> Decision:
    """The caller's decision on Binary `binary_id` for `interaction` (read, vread, update, patch, delete)."""
    guard = await DocumentBoundAccess(ctx, services, binary_id, interaction=interaction).guard(
        BINARY, patients=()
    )
    return guard.decision


class _Candidates:
    """Lists Binaries matching a conditional request's criteria so that each can be decided on its
    owner (find_matches); nothing it lists leaves without that decision."""

    def query_filter(self, resource_type: str) -> Mapping[str, Any] | None:
        return {} if resource_type == BINARY else None

    def decide(self, stored: StoredResource) -> Decision:
        if stored.resource_type != BINARY:
            return Decision.deny(NOT_ON_THIS_BINARY)
        return Decision.allow("binary-candidate")


async def find_matches(
    ctx: InteractionContext, services: Services, params: Sequence[tuple[str, str]], *, limit: int = 2
) -> list[StoredResource]:
    """Up to `limit` Binaries matching conditional criteria that the caller may read: a Binary it may
    not read matches as little as one that does not exist."""
    request = parse_search(
        BINARY, params, registry=services.registry, strict=True, base_url=services.base_url
    )
    query = await compile_filter(request, resolve=GuardedResolver(ctx, services))
    found: list[StoredResource] = []
    async for stored in services.repository.scan(BINARY, query, guard=_Candidates(), batch_size=100):
        if (await decide(ctx, services, stored.id, Interaction.READ)).permit:
            found.append(stored)
            if len(found) >= limit:
                break
    return found


def owned(
    ctx: InteractionContext, resource: Mapping[str, Any], previous: StoredResource | None
) -> dict[str, Any]:
    """A Binary about to be written, with the server's ownership fields: those of its current version,
    or for a new one, its uploader (the caller) and the document its Bundle binds it to."""
    if previous is not None and previous.resource is not None:
        return with_ownership(
            resource, owner=owner_id(previous.resource), uploaded_by=uploader(previous.resource)
        )
    bound = ctx.bindings.get(f"{BINARY}/{resource.get('id')}")
    owner = reference_id({"reference": bound}, DOCUMENT_REFERENCE) if bound else None
    return with_ownership(resource, owner=owner, uploaded_by=uploader_of(ctx.require_principal()))


async def bind_attachments(
    ctx: InteractionContext,
    services: Services,
    document: Mapping[str, Any],
    previous: StoredResource | None,
    *,
    session: AsyncClientSession,
) -> None:
    """Check each Binary a DocumentReference newly designates; claim those its caller uploaded.

    An attachment may designate a Binary this document owns (or its Bundle binds to it), one nobody
    owns that the caller uploaded (the document becomes its owner: a new Binary version), or one the
    caller may already read. Anything else, an unknown Binary included, is refused with one answer.
    """
    base_url = ctx.request.base_url
    document_id = str(document.get("id"))
    before = {target for _, target in attachment_binaries(previous.resource if previous else None, base_url)}
    principal = ctx.require_principal()
    for position, target in attachment_binaries(document, base_url):
        if target in before or ctx.bindings.get(target) == f"{DOCUMENT_REFERENCE}/{document_id}":
            continue
        binary_id = target.split("/")[1]
        stored = await services.repository.current_for_write(BINARY, binary_id, session=session)
        current = None if stored is None or stored.deleted else stored.resource
        read = await decide(ctx, services, binary_id, Interaction.READ)
        verdict = may_reference(principal, current, document_id, read)
        if verdict is None or stored is None or current is None:
            raise FhirError.of(
                422,
                "invalid",
                f"attachment.url {target} does not designate a Binary this DocumentReference may reference",
                expression=(f"{DOCUMENT_REFERENCE}.content[{position}].attachment.url",),
            )
        if verdict is Reference.CLAIM:
            claimed = with_ownership(current, owner=document_id, uploaded_by=uploader(current))
            saved = await services.repository.save(
                BINARY, claimed, previous=stored, now=ctx.now, session=session
            )
            ctx.audit.touch(saved.reference)
