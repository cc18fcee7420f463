"""What one interaction knows about its request: who, what, when, and how it was asked."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from fhir_server.auth.principal import Principal
from fhir_server.consent.model import Decision
from fhir_server.fhir.interaction import Interaction


@dataclass(frozen=True)
class RequestMeta:
    """The HTTP facts an interaction and its AuditEvent need; nothing framework-specific."""

    method: str
    target: str
    """Path and query string as received (the BALP query entity for searches)."""
    base_url: str
    request_id: str
    client_address: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    """Lower-cased header names."""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class AuditTrail:
    """What the AuditEvent of this interaction will name, filled in as the interaction proceeds."""

    patients: set[str] = field(default_factory=set)
    refused_patients: set[str] = field(default_factory=set)
    """Compartments of resources whose access was refused (kept apart: docs/audit.md, own trail)."""
    resources: list[str] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    version_id: str | None = None
    operation: str | None = None
    mhd_transaction: str | None = None
    bundle: Interaction | None = None
    """The batch or transaction this interaction is an entry of."""
    raw_request: bool = False
    """Record the request as received (BALP query entity): it named no interaction of the server."""
    recorded: bool = False

    def touch(
        self, reference: str, *, patients: tuple[str, ...] = (), decision: Decision | None = None
    ) -> None:
        if reference not in self.resources:
            self.resources.append(reference)
        if decision is None or decision.permit:
            self.patients.update(patients)
        else:
            self.refused_patients.update(patients)
        if decision is not None:
            self.decisions.append(decision)


@dataclass
class InteractionContext:
    interaction: Interaction
    resource_type: str | None
    request: RequestMeta
    now: datetime
    resource_id: str | None = None
    principal: Principal | None = None
    audit: AuditTrail = field(default_factory=AuditTrail)
    bindings: dict[str, str] = field(default_factory=dict)
    """Binary ownership the server sets within one transaction Bundle (interactions/mhd.py):
    `Binary/<id>` -> `DocumentReference/<id>`, on the contexts of both entries."""

    def require_principal(self) -> Principal:
        if self.principal is None:
            raise RuntimeError("the pipeline authenticates before any interaction runs")
        return self.principal
