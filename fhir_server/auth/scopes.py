"""SMART App Launch v2 scope grammar and the interaction each permission letter covers (pure).

https://build.fhir.org/ig/HL7/smart-app-launch/scopes-and-launch-context.html
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

from fhir_server.fhir.interaction import Interaction
from fhir_server.fhir.resources import AUDIT_EVENT

_SCOPE = re.compile(
    r"^(?P<context>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]+)\."
    r"(?P<perms>\*|read|write|c?r?u?d?s?)(?:\?(?P<query>.+))?$"
)
_V1 = {"*": "cruds", "read": "rs", "write": "cud"}

PERMISSION_OF: dict[Interaction, str] = {
    Interaction.CREATE: "c",
    Interaction.READ: "r",
    Interaction.VREAD: "r",
    Interaction.HISTORY_INSTANCE: "r",
    Interaction.UPDATE: "u",
    Interaction.PATCH: "u",
    Interaction.DELETE: "d",
    Interaction.SEARCH_TYPE: "s",
    Interaction.SEARCH_SYSTEM: "s",
    Interaction.HISTORY_TYPE: "s",
    Interaction.HISTORY_SYSTEM: "s",
}


@dataclass(frozen=True)
class Scope:
    context: str  # patient | user | system
    resource_type: str  # a type or "*"
    permissions: frozenset[str]
    restrictions: tuple[tuple[str, str], ...] = ()

    def covers(self, interaction: Interaction, resource_type: str) -> bool:
        letter = PERMISSION_OF.get(interaction)
        if letter is None:
            return False
        return letter in self.permissions and self.resource_type in ("*", resource_type)


def parse_scope(text: str) -> Scope | None:
    """One scope string, or None when it is not a resource scope (openid, fhirUser, launch...)."""
    match = _SCOPE.match(text)
    if match is None:
        return None
    perms = match["perms"]
    letters = _V1.get(perms, perms)
    if not letters:
        return None
    query = match["query"]
    restrictions = tuple(parse_qsl(query, keep_blank_values=True)) if query else ()
    return Scope(match["context"], match["type"], frozenset(letters), restrictions)


def parse_scopes(text: str) -> tuple[Scope, ...]:
    parsed = (parse_scope(item) for item in text.split())
    return tuple(scope for scope in parsed if scope is not None)


def granting_scopes(
    scopes: tuple[Scope, ...], interaction: Interaction, resource_type: str
) -> tuple[Scope, ...]:
    """The scopes that cover this interaction on this type (union semantics): empty means 403."""
    return tuple(scope for scope in scopes if scope.covers(interaction, resource_type))


def permitted_scopes(
    scopes: tuple[Scope, ...],
    interaction: Interaction,
    resource_type: str,
    *,
    patient: str | None,
    system: bool,
) -> tuple[Scope, ...]:
    """The scopes that let this token do `interaction` on `resource_type`: empty means 403.

    `patient/` scopes count only with a patient in context (`patient`, the token's claim); `system/`
    scopes only for a backend client without a user (`system`, Principal.is_system). Reading or
    searching the audit trail needs a scope that names AuditEvent (or a `system/`/`patient/` wildcard):
    `user/*` does not open it.
    """
    audit_read = resource_type == AUDIT_EVENT and PERMISSION_OF.get(interaction) in ("r", "s")
    return tuple(
        scope
        for scope in granting_scopes(scopes, interaction, resource_type)
        if (scope.context != "patient" or patient)
        and (scope.context != "system" or system)
        and not (audit_read and scope.context == "user" and scope.resource_type == "*")
    )
