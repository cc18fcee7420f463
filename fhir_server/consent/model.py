"""Values of the policy decision point: what is asked, and what was decided (pure, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from fhir_server.auth.principal import Principal
from fhir_server.fhir.interaction import Interaction


@dataclass(frozen=True)
class AccessRequest:
    principal: Principal
    interaction: Interaction
    resource_type: str
    now: datetime


@dataclass(frozen=True)
class Decision:
    """Permit or deny one resource, naming what decided (a fixed rule, or Consent + provision path)."""

    permit: bool
    rule: str
    consents: tuple[str, ...] = ()
    """References (`Consent/<id>`) of the consents that decided; carried into the AuditEvent."""
    break_the_glass: bool = False

    @classmethod
    def allow(cls, rule: str, *, consents: tuple[str, ...] = (), break_the_glass: bool = False) -> Decision:
        return cls(True, rule, consents, break_the_glass)

    @classmethod
    def deny(cls, rule: str, *, consents: tuple[str, ...] = ()) -> Decision:
        return cls(False, rule, consents)
