"""`_summary` and `_elements`: the part of each resource a search answers, tagged SUBSETTED when cut.

https://hl7.org/fhir/R4/search.html#summary — pure, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fhir_server.search.request import SearchRequest

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}

SUMMARY_ELEMENTS: Mapping[str, frozenset[str]] = {
    "Patient": frozenset(
        "identifier active name telecom gender birthDate deceasedBoolean deceasedDateTime address "
        "managingOrganization link".split()
    ),
    "DocumentReference": frozenset(
        "masterIdentifier identifier status docStatus type category subject date author authenticator "
        "custodian relatesTo description securityLabel content context".split()
    ),
    "Consent": frozenset(
        "identifier status scope category patient dateTime performer organization sourceAttachment "
        "sourceReference policyRule provision".split()
    ),
    "AuditEvent": frozenset(
        "type subtype action period recorded outcome outcomeDesc purposeOfEvent agent source entity".split()
    ),
    "List": frozenset("identifier status mode title code subject encounter date source".split()),
    "Binary": frozenset("contentType securityContext".split()),
}
"""Top-level elements flagged isSummary in R4 (`_summary=true`)."""

MANDATORY_ELEMENTS: Mapping[str, frozenset[str]] = {
    "DocumentReference": frozenset({"status", "content"}),
    "Consent": frozenset({"status", "scope", "category"}),
    "AuditEvent": frozenset({"type", "recorded", "agent", "source"}),
    "List": frozenset({"status", "mode"}),
    "Binary": frozenset({"contentType"}),
}
"""Top-level elements with a minimum cardinality of 1, kept whatever `_elements` asks."""
ALWAYS_KEPT = frozenset({"resourceType", "id", "meta", "implicitRules"})


def shaped(request: SearchRequest, resource: Mapping[str, Any]) -> dict[str, Any]:
    """The resource as `_summary` / `_elements` ask, tagged SUBSETTED when anything was left out."""
    resource_type = str(resource.get("resourceType"))
    if request.elements:
        wanted = set(request.elements) | MANDATORY_ELEMENTS.get(resource_type, frozenset()) | ALWAYS_KEPT
        kept = {key: value for key, value in resource.items() if _element_name(key, wanted)}
    elif request.summary == "true":
        summary = SUMMARY_ELEMENTS.get(resource_type, frozenset()) | ALWAYS_KEPT
        kept = {key: value for key, value in resource.items() if key in summary}
    elif request.summary == "data":
        kept = {key: value for key, value in resource.items() if key != "text"}
    else:
        return dict(resource)
    if len(kept) == len(resource):
        return kept
    meta = dict(kept.get("meta") or {})
    meta["tag"] = [*(meta.get("tag") or []), SUBSETTED]
    kept["meta"] = meta
    return kept


CHOICE_TYPES = frozenset(
    "Boolean DateTime Date String Integer Reference Attachment Period CodeableConcept Identifier "
    "Quantity".split()
)


def _element_name(key: str, wanted: set[str]) -> bool:
    """`deceased` in `_elements` keeps `deceasedBoolean`/`deceasedDateTime` (choice elements)."""
    if key in wanted:
        return True
    return any(key.startswith(name) and key[len(name) :] in CHOICE_TYPES for name in wanted)
