"""Values of the policy decision point: what is asked, and what was decided (pure, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from fhir_server.auth.principal import Coding, Principal
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


@dataclass(frozen=True)
class ConsentPolicy:
    """The deployment's consent settings (docs/configuration.md): FHIR_CONSENT_DEFAULT and
    FHIR_BREAK_GLASS_ROLES."""

    default: Literal["deny", "permit"] = "deny"
    break_glass_roles: tuple[Coding, ...] = ()

    @classmethod
    def from_settings(cls, default: str, break_glass_roles: str) -> ConsentPolicy:
        """Parse the settings text; `break_glass_roles` is `system|code` (or a bare `code`), comma-separated.

        Raises ValueError on a default other than `deny`/`permit` or an entry without a code.
        """
        if default == "deny":
            return cls("deny", _parse_roles(break_glass_roles))
        if default == "permit":
            return cls("permit", _parse_roles(break_glass_roles))
        raise ValueError(f"FHIR_CONSENT_DEFAULT must be 'deny' or 'permit', not {default!r}")


def _parse_roles(text: str) -> tuple[Coding, ...]:
    roles: list[Coding] = []
    for item in text.split(","):
        entry = item.strip()
        if not entry:
            continue
        system, bar, code = entry.rpartition("|")
        if not code:
            raise ValueError(f"FHIR_BREAK_GLASS_ROLES entry without a code: {entry!r}")
        roles.append(Coding(system if bar and system else None, code))
    return tuple(roles)
