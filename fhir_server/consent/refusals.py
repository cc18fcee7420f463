"""The sentence a refused writer reads: which rule of the consent decision (evaluate.py) refused.

Only what the caller may know is said: the rule, and for a refusal by the patient's consents that a
Consent decided (never which one, nor its content: a patient's choices are their own).
"""

from __future__ import annotations

from collections.abc import Sequence

from fhir_server.consent.model import Decision

FIXED_RULES = {
    "unsupported-interaction": "this interaction is not decided per resource",
    "outside-patient-compartment": "it is outside the compartment of the patient in your token",
    "invisible-to-patient": "it is not visible to the patient",
    "read-only-profession": "your profession may only read (read-only profession)",
    "no-patient-context": "it belongs to no patient: beyond creating it, only system clients may use it",
    "masked": "it is masked to professionals (MASQUE_PS)",
    "patient-not-loaded": "its patient is not visible to you",
    "consent-writers": "only the patient, or a system client with an explicit Consent scope, writes Consents",
    "consent-readers": "only the patient, or a system client with an explicit Consent scope, reads Consents",
    "identity-writers": "only system identity managers (system/Patient) and the patient change a Patient",
    "identity-identifiers": "a patient may not change the identifiers of her record",
    "audit-readers": "only the patient and an explicit system AuditEvent scope read the audit trail",
}


def refusal_reason(decision: Decision, patients: Sequence[str]) -> str:
    """Why `decision` refuses, e.g. `no Consent of Patient/x permits it (default policy: deny)`."""
    of = ", ".join(f"Patient/{patient}" for patient in patients) or "its patient"
    if decision.rule == "default-deny":
        return (
            f"no Consent of {of} permits it (default policy: deny, FHIR_CONSENT_DEFAULT; "
            "the patient records a Consent to allow it, see docs/consent.md)"
        )
    if decision.rule in FIXED_RULES:
        return f"{FIXED_RULES[decision.rule]} (rule {decision.rule})"
    if decision.consents:
        return f"a Consent of {of} denies it"
    return f"the {decision.rule} rule refuses it"
