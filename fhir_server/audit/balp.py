"""IHE BALP AuditEvents for every RESTful interaction and outcome (pure: no I/O, no clock).

https://profiles.ihe.net/ITI/BALP/content.html#3573-restful-activities (STANDARDS §3, docs/audit.md)

The pipeline describes one finished interaction as `InteractionFacts`; `build_audit_events` turns it
into R4 AuditEvent JSON, without `id` and `meta.versionId/lastUpdated` (the sink assigns those).

Choices the profiles leave open, and what this module does:
- history interactions follow the Query pattern (action E, the raw request as the query entity);
  transaction/batch and operations are action E with the Query agent roles; capabilities follows Read.
- one AuditEvent per patient concerned (BALP PatientQuery rule, applied to every interaction so
  each event has at most one patient entity); none concerned: one event without patient entity.
  Concerned: the compartments of the resources the request read or wrote, the patients a search
  names (even when it found nothing), and the patients of a refused access.
- a patient's own trail is the same whether a target she names exists or not, so that it never
  reveals another record (docs/audit.md): when the requestor is a patient (`fhirUser` Patient,
  whatever the token's scopes), her user agent names her
  by reference (which puts the event in her compartment) only in events about her own record or
  about no record; the event recorded for another patient names her by identifier only, and a
  refused access adds no patient to her own events (her attempt is recorded without patient entity).
- searches and history never list their results as data entities (BALP minimal pattern), which
  also keeps one patient's resources out of another patient's events.
- a refused or failed interaction keeps the same shape with outcome 4 (4xx) or 8 (5xx) and
  `outcomeDesc`; refused before authentication, the only agents are the client, identified by its
  network address, and this server.
- break-the-glass (the token's purpose of use, or a consent decision taken under BTG) shows three
  ways: the user agent's `purposeOfUse`, the event's `purposeOfEvent`, and the security label
  v3-ActReason#BTG in `meta.security`, so `AuditEvent?_security=http://terminology.hl7.org/CodeSystem/v3-ActReason|BTG`
  lists every BTG access for a privacy officer with a standard search parameter.
- the Consents that decided are entities typed `resource-types#Consent`, each with a `decision`
  detail (`permit` or `deny`) and the rule that decided.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fhir_server.auth.principal import BREAK_THE_GLASS, PURPOSE_OF_USE_SYSTEM, Principal
from fhir_server.consent.model import Decision
from fhir_server.fhir.interaction import RESTFUL_INTERACTION_SYSTEM, Interaction
from fhir_server.storage.documents import instant

AUDIT_EVENT_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/audit-event-type"
DCM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
ACTION_SYSTEM = "http://hl7.org/fhir/audit-event-action"
ENTITY_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE_SYSTEM = "http://terminology.hl7.org/CodeSystem/object-role"
PARTICIPATION_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
PROVENANCE_PARTICIPANT_SYSTEM = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
ROLE_CLASS_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-RoleClass"
SECURITY_SOURCE_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/security-source-type"
BALP_ENTITY_TYPE_SYSTEM = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
BALP_USER_AGENT_SYSTEM = "https://profiles.ihe.net/ITI/BALP/CodeSystem/UserAgentTypes"
RESOURCE_TYPES_SYSTEM = "http://hl7.org/fhir/resource-types"
IHE_EVENT_TYPE_SYSTEM = "urn:ihe:event-type-code"
URI_SYSTEM = "urn:ietf:rfc:3986"
JTI_POLICY_PREFIX = "urn:ietf:params:oauth:jti:"

NETWORK_IP_ADDRESS = "2"
NETWORK_URI = "5"

OUTCOME_SUCCESS = "0"
OUTCOME_MINOR_FAILURE = "4"
OUTCOME_SERIOUS_FAILURE = "8"

BREAK_THE_GLASS_CODING = {
    "system": PURPOSE_OF_USE_SYSTEM,
    "code": BREAK_THE_GLASS,
    "display": "break the glass",
}

MHD_TRANSACTIONS: dict[str, str] = {
    "ITI-65": "Provide Document Bundle",
    "ITI-66": "Find Document Lists",
    "ITI-67": "Find Document References",
    "ITI-68": "Retrieve Document",
}

_REST_TYPE = {"system": AUDIT_EVENT_TYPE_SYSTEM, "code": "rest", "display": "Restful Operation"}
_IMPORT_TYPE = {"system": DCM_SYSTEM, "code": "110107", "display": "Import"}
_SOURCE_ROLE = {"system": DCM_SYSTEM, "code": "110153", "display": "Source Role ID"}
_DESTINATION_ROLE = {"system": DCM_SYSTEM, "code": "110152", "display": "Destination Role ID"}
_APPLICATION = {"system": DCM_SYSTEM, "code": "110150", "display": "Application"}
_CUSTODIAN = {"system": PROVENANCE_PARTICIPANT_SYSTEM, "code": "custodian", "display": "Custodian"}
_AUTHOR = {"system": PARTICIPATION_TYPE_SYSTEM, "code": "AUT", "display": "author (originator)"}
_RECIPIENT = {"system": PARTICIPATION_TYPE_SYSTEM, "code": "IRCP", "display": "information recipient"}
_OAUTH_USER = {"system": BALP_USER_AGENT_SYSTEM, "code": "UserOauthAgent", "display": "User OAuth Agent"}
_PROVIDER_ORGANIZATION = {"system": ROLE_CLASS_SYSTEM, "code": "PROV", "display": "healthcare provider"}
_APPLICATION_SERVER = {"system": SECURITY_SOURCE_TYPE_SYSTEM, "code": "4", "display": "Application Server"}
_PERSON = {"system": ENTITY_TYPE_SYSTEM, "code": "1", "display": "Person"}
_SYSTEM_OBJECT = {"system": ENTITY_TYPE_SYSTEM, "code": "2", "display": "System Object"}
_PATIENT_ROLE = {"system": OBJECT_ROLE_SYSTEM, "code": "1", "display": "Patient"}
_REPORT_ROLE = {"system": OBJECT_ROLE_SYSTEM, "code": "3", "display": "Report"}
_DOMAIN_RESOURCE_ROLE = {"system": OBJECT_ROLE_SYSTEM, "code": "4", "display": "Domain Resource"}
_QUERY_ROLE = {"system": OBJECT_ROLE_SYSTEM, "code": "24", "display": "Query"}
_REQUEST_ID = {"system": BALP_ENTITY_TYPE_SYSTEM, "code": "XrequestId", "display": "XrequestId"}
_CONSENT = {"system": RESOURCE_TYPES_SYSTEM, "code": "Consent", "display": "Consent"}


@dataclass(frozen=True)
class _Pattern:
    """The BALP profile row of an interaction (STANDARDS §3.1)."""

    action: str
    client_role: dict[str, str]
    server_role: dict[str, str]
    user_type: dict[str, str]


_CREATE = _Pattern("C", _SOURCE_ROLE, _DESTINATION_ROLE, _AUTHOR)
_READ = _Pattern("R", _DESTINATION_ROLE, _SOURCE_ROLE, _RECIPIENT)
_UPDATE = _Pattern("U", _SOURCE_ROLE, _DESTINATION_ROLE, _AUTHOR)
_DELETE = _Pattern("D", _APPLICATION, _CUSTODIAN, _AUTHOR)
_QUERY = _Pattern("E", _SOURCE_ROLE, _DESTINATION_ROLE, _RECIPIENT)
_BUNDLE = _Pattern("E", _SOURCE_ROLE, _DESTINATION_ROLE, _AUTHOR)

PATTERNS: dict[Interaction, _Pattern] = {
    Interaction.CREATE: _CREATE,
    Interaction.READ: _READ,
    Interaction.VREAD: _READ,
    Interaction.CAPABILITIES: _READ,
    Interaction.UPDATE: _UPDATE,
    Interaction.PATCH: _UPDATE,
    Interaction.DELETE: _DELETE,
    Interaction.SEARCH_TYPE: _QUERY,
    Interaction.SEARCH_SYSTEM: _QUERY,
    Interaction.HISTORY_INSTANCE: _QUERY,
    Interaction.HISTORY_TYPE: _QUERY,
    Interaction.HISTORY_SYSTEM: _QUERY,
    Interaction.OPERATION: _QUERY,
    Interaction.TRANSACTION: _BUNDLE,
    Interaction.BATCH: _BUNDLE,
}


@dataclass(frozen=True, kw_only=True)
class InteractionFacts:
    """Everything the AuditEvent(s) of one finished interaction name; built once by the pipeline."""

    interaction: Interaction
    status: int
    """The HTTP status answered."""
    recorded: datetime
    server: str
    """This server's base URL: `source.observer` and the server agent."""
    resource_type: str | None = None
    resource_id: str | None = None
    version_id: str | None = None
    """With `resource_id`: the data entity is `Type/id/_history/version`."""
    outcome_desc: str | None = None
    principal: Principal | None = None
    """None when refused before authentication: the client address is then the only identity."""
    client_address: str | None = None
    patient_ids: tuple[str, ...] = ()
    """Patients concerned: compartment of the resource(s) read or written, of the search results, and
    the patients a search names."""
    refused_patient_ids: tuple[str, ...] = ()
    """Compartments of the resources whose access was refused."""
    resources: tuple[str, ...] = ()
    """Other relative references concerned (not recorded for searches and history: BALP minimal)."""
    raw_query: bytes | None = None
    """The raw request of a search or history (method, path and query), recorded base64-encoded."""
    request_id: str | None = None
    decisions: tuple[Decision, ...] = ()
    operation: str | None = None
    """The operation name of an `operation` interaction, e.g. `$validate`."""
    mhd_transaction: str | None = None
    """IHE transaction the interaction serves, e.g. `ITI-67`; adds its `urn:ihe:event-type-code` subtype."""
    bundle: Interaction | None = None
    """`transaction` or `batch` when this interaction is one entry of that Bundle."""

    @property
    def break_the_glass(self) -> bool:
        by_token = self.principal is not None and self.principal.breaks_the_glass
        return by_token or any(decision.break_the_glass for decision in self.decisions)


def outcome_of(status: int) -> str:
    if status < 400:
        return OUTCOME_SUCCESS
    if status < 500:
        return OUTCOME_MINOR_FAILURE
    return OUTCOME_SERIOUS_FAILURE


def build_audit_events(facts: InteractionFacts) -> list[dict[str, Any]]:
    """The AuditEvents of one interaction: one per patient concerned, or one when none is."""
    principal = facts.principal
    self_id = _patient_user(principal)
    if self_id is None:
        patients: list[str | None] = list(dict.fromkeys((*facts.patient_ids, *facts.refused_patient_ids)))
        return [_event(facts, patient) for patient in patients or [None]]
    served = list(dict.fromkeys(facts.patient_ids))
    others = [p for p in dict.fromkeys((*served, *facts.refused_patient_ids)) if p != self_id]
    own: list[str | None] = [self_id] if self_id in served else [None]
    return [
        *(_event(facts, patient) for patient in own),
        *(_event(facts, patient, requestor_by_reference=False) for patient in others),
    ]


def _patient_user(principal: Principal | None) -> str | None:
    """The patient the user is (`fhirUser` Patient/<id>), whatever the token's scopes: her user agent
    names her by reference, which puts an event in her compartment."""
    user = principal.fhir_user if principal is not None else None
    if user is None or not user.startswith("Patient/"):
        return None
    return user.removeprefix("Patient/") or None


def _event(
    facts: InteractionFacts, patient_id: str | None, *, requestor_by_reference: bool = True
) -> dict[str, Any]:
    pattern = PATTERNS[facts.interaction]
    outcome = outcome_of(facts.status)
    event: dict[str, Any] = {"resourceType": "AuditEvent"}
    if facts.break_the_glass:
        event["meta"] = {"security": [dict(BREAK_THE_GLASS_CODING)]}
    ihe_import = facts.mhd_transaction == "ITI-65"
    event["type"] = dict(_IMPORT_TYPE if ihe_import else _REST_TYPE)
    event["subtype"] = _subtypes(facts)
    event["action"] = "C" if ihe_import else pattern.action
    event["recorded"] = instant(facts.recorded)
    event["outcome"] = outcome
    if facts.outcome_desc is not None:
        event["outcomeDesc"] = facts.outcome_desc
    elif outcome != OUTCOME_SUCCESS:
        event["outcomeDesc"] = f"HTTP {facts.status}"
    purposes = _purposes(facts)
    if purposes:
        event["purposeOfEvent"] = [_concept(coding) for coding in purposes]
    event["agent"] = _agents(facts, pattern, purposes, requestor_by_reference=requestor_by_reference)
    event["source"] = {
        "observer": _server_reference(facts.server),
        "type": [dict(_APPLICATION_SERVER)],
    }
    entities = _entities(facts, patient_id)
    if entities:
        event["entity"] = entities
    return event


def _subtypes(facts: InteractionFacts) -> list[dict[str, str]]:
    codings = [{"system": RESTFUL_INTERACTION_SYSTEM, "code": facts.interaction.value}]
    if facts.bundle is not None:
        codings.append({"system": RESTFUL_INTERACTION_SYSTEM, "code": facts.bundle.value})
    if facts.interaction is Interaction.OPERATION and facts.operation:
        codings.append({"code": facts.operation, "display": facts.operation})
    if facts.mhd_transaction:
        coding = {"system": IHE_EVENT_TYPE_SYSTEM, "code": facts.mhd_transaction}
        display = MHD_TRANSACTIONS.get(facts.mhd_transaction)
        if display:
            coding["display"] = display
        codings.append(coding)
    return codings


def _purposes(facts: InteractionFacts) -> list[dict[str, str]]:
    """The token's purposes of use, plus BTG when a consent decision was taken under it."""
    codings = [coding.to_fhir() for coding in facts.principal.purpose_of_use] if facts.principal else []
    if facts.break_the_glass and not any(coding.get("code") == BREAK_THE_GLASS for coding in codings):
        codings.append(dict(BREAK_THE_GLASS_CODING))
    return codings


def _concept(coding: dict[str, str]) -> dict[str, Any]:
    return {"coding": [coding]}


def _server_reference(server: str) -> dict[str, Any]:
    return {"identifier": {"system": URI_SYSTEM, "value": server}, "display": server}


def _agents(
    facts: InteractionFacts,
    pattern: _Pattern,
    purposes: list[dict[str, str]],
    *,
    requestor_by_reference: bool,
) -> list[dict[str, Any]]:
    principal = facts.principal
    address = facts.client_address or (principal.network_address if principal else None)
    agents: list[dict[str, Any]] = []
    if principal is not None:
        agents.append(_user_agent(principal, pattern, purposes, by_reference=requestor_by_reference))
    agents.append(_client_agent(principal, pattern, address))
    agents.append(
        {
            "type": {"coding": [dict(pattern.server_role)]},
            "who": _server_reference(facts.server),
            "requestor": False,
            "network": {"address": facts.server, "type": NETWORK_URI},
        }
    )
    if principal is not None and (principal.organization or principal.organization_id):
        organization: dict[str, Any] = {}
        if principal.organization_id:
            organization["identifier"] = {"value": principal.organization_id}
        if principal.organization:
            organization["display"] = principal.organization
        agents.append(
            {"type": {"coding": [dict(_PROVIDER_ORGANIZATION)]}, "who": organization, "requestor": False}
        )
    return agents


def _user_agent(
    principal: Principal, pattern: _Pattern, purposes: list[dict[str, str]], *, by_reference: bool
) -> dict[str, Any]:
    who: dict[str, Any] = {}
    if principal.fhir_user and by_reference:
        who["reference"] = principal.fhir_user
    if principal.subject:
        identifier = {"system": principal.issuer} if principal.issuer else {}
        who["identifier"] = {**identifier, "value": principal.subject}
    if principal.name:
        who["display"] = principal.name
    if not who:
        who["display"] = principal.client_id or "unknown user"
    agent: dict[str, Any] = {
        "type": {"coding": [dict(pattern.user_type), dict(_OAUTH_USER)]},
        "role": [_concept(role.to_fhir()) for role in principal.roles],
        "who": who,
        "altId": principal.national_provider_identifier,
        "name": principal.name,
        "requestor": True,
        "policy": [f"{JTI_POLICY_PREFIX}{principal.token_id}"] if principal.token_id else [],
        "purposeOfUse": [_concept(coding) for coding in purposes],
    }
    return {key: value for key, value in agent.items() if value is not None and value != []}


def _client_agent(principal: Principal | None, pattern: _Pattern, address: str | None) -> dict[str, Any]:
    if principal is None:
        who: dict[str, Any] = {"display": address or "unknown client"}
        codings = [dict(_APPLICATION)]
    else:
        who = {"identifier": {"value": principal.client_id}}
        if not principal.client_id:
            who = {"display": "unknown client"}
        codings = [dict(pattern.client_role)]
        if pattern.client_role != _APPLICATION:
            codings.append(dict(_APPLICATION))
    agent: dict[str, Any] = {"type": {"coding": codings}, "who": who, "requestor": principal is None}
    if address:
        agent["network"] = {"address": address, "type": NETWORK_IP_ADDRESS}
    return agent


def _entities(facts: InteractionFacts, patient_id: str | None) -> list[dict[str, Any]]:
    entities: list[dict[str, Any]] = []
    if patient_id is not None:
        entities.append(
            {
                "what": {"reference": f"Patient/{patient_id}"},
                "type": dict(_PERSON),
                "role": dict(_PATIENT_ROLE),
            }
        )
    data_role = _REPORT_ROLE if facts.mhd_transaction == "ITI-68" else _DOMAIN_RESOURCE_ROLE
    for reference in _data_references(facts):
        entities.append(
            {"what": {"reference": reference}, "type": dict(_SYSTEM_OBJECT), "role": dict(data_role)}
        )
    if facts.raw_query is not None:
        entities.append(
            {
                "type": dict(_SYSTEM_OBJECT),
                "role": dict(_QUERY_ROLE),
                "query": base64.b64encode(facts.raw_query).decode("ascii"),
            }
        )
    if facts.request_id:
        entities.append({"what": {"identifier": {"value": facts.request_id}}, "type": dict(_REQUEST_ID)})
    entities.extend(_consent_entities(facts.decisions))
    return entities


def _data_references(facts: InteractionFacts) -> list[str]:
    """The target of the request (with its version when known), then the other resources touched."""
    if facts.interaction.is_search or facts.interaction.is_history:
        return []
    references: list[str] = []
    if facts.resource_type and facts.resource_id:
        target = f"{facts.resource_type}/{facts.resource_id}"
        references.append(f"{target}/_history/{facts.version_id}" if facts.version_id else target)
    seen = {reference.split("/_history/")[0] for reference in references}
    for reference in facts.resources:
        base = reference.split("/_history/")[0]
        if base not in seen:
            seen.add(base)
            references.append(reference)
    return references


def _consent_entities(decisions: tuple[Decision, ...]) -> list[dict[str, Any]]:
    entities: list[dict[str, Any]] = []
    seen: set[str] = set()
    for decision in decisions:
        for consent in decision.consents:
            if consent in seen:
                continue
            seen.add(consent)
            entities.append(
                {
                    "what": {"reference": consent},
                    "type": dict(_CONSENT),
                    "detail": _decision_details(decision),
                }
            )
    return entities


def _decision_details(decision: Decision) -> list[dict[str, str]]:
    details = [{"type": "decision", "valueString": "permit" if decision.permit else "deny"}]
    if decision.rule:
        details.append({"type": "rule", "valueString": decision.rule})
    return details


__all__ = [
    "BREAK_THE_GLASS_CODING",
    "InteractionFacts",
    "MHD_TRANSACTIONS",
    "PATTERNS",
    "build_audit_events",
    "outcome_of",
]
