"""Who writes and reads what, above any consent: Consents, Patients, the audit trail (pure, no I/O).

The one place these fixed rules live (docs/consent.md, "Who writes what"); evaluate.py applies them
before any consent and filter.py turns them into the same constant filter. They depend on the caller
and the interaction only, never on the stored data, so a whole resource type is in or out:

- Consent: created, changed, deleted only by the patient (a `patient/` token, its own compartment) or
  by a `system/` client holding an explicit Consent scope (`system/Consent.cud`, never `system/*`: the
  platform's consent-capture service, which also reads the Consents it manages); a professional never
  writes one and never reads one (a Consent names the documents it hides), break-the-glass included;
- Patient: created with the scope alone (`identity-create`); updated, patched and deleted by `system/`
  identity managers (`system/Patient.*` or `system/*`, `identity-management`) and, for demographics
  other than identifiers, by the patient (`identity_change`); never by a professional, and the patient
  does not delete their own record;
- AuditEvent: read by the patient (own compartment, decided with patient-self) and by `system/`
  clients holding an explicit AuditEvent scope (`audit-review`); never by a professional,
  break-the-glass included, and never by a `system/*` client.

Each refusal names its rule, carried into the OperationOutcome and the AuditEvent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from fhir_server.auth.principal import Principal
from fhir_server.consent.codes import ACCESS, COLLECT
from fhir_server.consent.model import Decision
from fhir_server.fhir.interaction import Interaction
from fhir_server.fhir.resources import AUDIT_EVENT, CONSENT, PATIENT

CONSENT_MANAGEMENT = "consent-management"
CONSENT_WRITERS = "consent-writers"
CONSENT_READERS = "consent-readers"
IDENTITY_CREATE = "identity-create"
IDENTITY_MANAGEMENT = "identity-management"
IDENTITY_WRITERS = "identity-writers"
IDENTITY_IDENTIFIERS = "identity-identifiers"
AUDIT_REVIEW = "audit-review"
AUDIT_READERS = "audit-readers"


def explicit_system_scope(principal: Principal, resource_type: str) -> bool:
    """A `system/` scope naming `resource_type` itself (`system/*` does not count)."""
    return principal.is_system and any(
        scope.context == "system" and scope.resource_type == resource_type for scope in principal.scopes
    )


def identity_manager(principal: Principal) -> bool:
    """A `system/` client with a Patient (or `*`) scope: the platforms that open and close records."""
    return principal.is_system and any(
        scope.context == "system" and scope.resource_type in (PATIENT, "*") for scope in principal.scopes
    )


def patient_rule(interaction: Interaction, resource_type: str) -> Decision | None:
    """What a patient may not do in their own compartment, whatever else holds: delete their Patient."""
    if resource_type == PATIENT and interaction == Interaction.DELETE:
        return Decision.deny(IDENTITY_WRITERS)
    return None


def role_rule(principal: Principal, action: str, resource_type: str) -> Decision | None:
    """The decision of a fixed rule for a non-patient caller on this type, or None (consents decide).

    `action` is the consentaction of the interaction (`access`, `collect`, `correct`).
    """
    if resource_type == CONSENT:
        if explicit_system_scope(principal, CONSENT):
            return Decision.allow(CONSENT_MANAGEMENT)
        if action != ACCESS:
            return Decision.deny(CONSENT_WRITERS)
        return None if principal.is_system else Decision.deny(CONSENT_READERS)
    if resource_type == AUDIT_EVENT:
        if action == ACCESS and explicit_system_scope(principal, AUDIT_EVENT):
            return Decision.allow(AUDIT_REVIEW)
        return Decision.deny(AUDIT_READERS)
    if resource_type == PATIENT:
        if action == COLLECT:
            return Decision.allow(IDENTITY_CREATE)
        if identity_manager(principal):
            return Decision.allow(IDENTITY_MANAGEMENT)
        if action != ACCESS:
            return Decision.deny(IDENTITY_WRITERS)
    return None


def identity_change(
    principal: Principal, previous: Mapping[str, Any] | None, new: Mapping[str, Any]
) -> Decision | None:
    """A patient's update of their own Patient keeps its identifiers (the INS is the platform's).

    None when the change is allowed here (other callers are decided by role_rule); a refusal otherwise.
    """
    if not principal.is_patient or new.get("resourceType") != PATIENT:
        return None
    before = (previous or {}).get("identifier") or []
    after = new.get("identifier") or []
    if _canonical(before) != _canonical(after):
        return Decision.deny(IDENTITY_IDENTIFIERS)
    return None


def _canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
