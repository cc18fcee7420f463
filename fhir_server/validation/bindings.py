"""Required code bindings of FHIR R4 (4.0.1) for the elements of the resources this server stores.

fhir.resources does not check codes against their required ValueSet, so the codes of every required
binding on our resources (and on the datatypes they use) are listed here, from the R4 definitions.
https://hl7.org/fhir/R4/terminologies.html#required
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RequiredBinding:
    path: str  # FHIR element path, e.g. "Consent.provision.type"
    value_set: str
    codes: frozenset[str]

    @property
    def model_name(self) -> str:
        """fhir.resources class that holds the element: `Consent.provision.type` -> `ConsentProvision`."""
        parts = self.path.split(".")[:-1]
        return parts[0] + "".join(part[0].upper() + part[1:] for part in parts[1:])

    @property
    def element(self) -> str:
        return self.path.rsplit(".", 1)[1]


def _binding(path: str, value_set: str, codes: str) -> RequiredBinding:
    return RequiredBinding(path, f"http://hl7.org/fhir/ValueSet/{value_set}", frozenset(codes.split()))


REQUIRED_BINDINGS: tuple[RequiredBinding, ...] = (
    _binding("Patient.gender", "administrative-gender", "male female other unknown"),
    _binding("Patient.contact.gender", "administrative-gender", "male female other unknown"),
    _binding("Patient.link.type", "link-type", "replaced-by replaces refer seealso"),
    _binding("DocumentReference.status", "document-reference-status", "current superseded entered-in-error"),
    _binding(
        "DocumentReference.docStatus", "composition-status", "preliminary final amended entered-in-error"
    ),
    _binding(
        "DocumentReference.relatesTo.code", "document-relationship-type", "replaces transforms signs appends"
    ),
    _binding(
        "Consent.status", "consent-state-codes", "draft proposed active rejected inactive entered-in-error"
    ),
    _binding("Consent.provision.type", "consent-provision-type", "deny permit"),
    _binding(
        "Consent.provision.data.meaning", "consent-data-meaning", "instance related dependents authoredby"
    ),
    _binding("List.status", "list-status", "current retired entered-in-error"),
    _binding("List.mode", "list-mode", "working snapshot changes"),
    _binding(
        "Bundle.type",
        "bundle-type",
        "document message transaction transaction-response batch batch-response history searchset collection",
    ),
    _binding("Bundle.entry.request.method", "http-verb", "GET HEAD POST PUT DELETE PATCH"),
    _binding("Bundle.entry.search.mode", "search-entry-mode", "match include outcome"),
    _binding("AuditEvent.action", "audit-event-action", "C R U D E"),
    _binding("AuditEvent.outcome", "audit-event-outcome", "0 4 8 12"),
    _binding("AuditEvent.agent.network.type", "network-type", "1 2 3 4 5"),
    _binding("Identifier.use", "identifier-use", "usual official temp secondary old"),
    _binding("HumanName.use", "name-use", "usual official temp nickname anonymous old maiden"),
    _binding("ContactPoint.system", "contact-point-system", "phone fax email pager url sms other"),
    _binding("ContactPoint.use", "contact-point-use", "home work temp old mobile"),
    _binding("Address.use", "address-use", "home work temp old billing"),
    _binding("Address.type", "address-type", "postal physical both"),
    _binding("Narrative.status", "narrative-status", "generated extensions additional empty"),
    _binding("Quantity.comparator", "quantity-comparator", "< <= >= >"),
)

_BY_MODEL: dict[tuple[str, str], RequiredBinding] = {
    (binding.model_name, binding.element): binding for binding in REQUIRED_BINDINGS
}


def binding_for(model_names: tuple[str, ...], element: str) -> RequiredBinding | None:
    """The required binding of `element` on a model, looked up along its class hierarchy (Age is a
    Quantity)."""
    for name in model_names:
        binding = _BY_MODEL.get((name, element))
        if binding is not None:
            return binding
    return None
