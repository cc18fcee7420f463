"""Builders shared by the consent unit tests: principals, requests, stored documents, consents."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fhir_server.auth.principal import PURPOSE_OF_USE_SYSTEM, Coding, Principal
from fhir_server.auth.scopes import parse_scopes
from fhir_server.consent.model import AccessRequest
from fhir_server.fhir.interaction import Interaction
from fhir_server.record.documents import StoredResource, to_document, to_history_document

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
G15 = "https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante"
R95 = "https://mos.esante.gouv.fr/NOS/TRE_R95-UsagerTitre/FHIR/TRE-R95-UsagerTitre"
A07 = "https://mos.esante.gouv.fr/NOS/TRE_A07-StatutVisibiliteDocument/FHIR/TRE-A07-StatutVisibiliteDocument"
CONF = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
ACT = "http://terminology.hl7.org/CodeSystem/consentaction"
LOINC = "http://loinc.org"
MEDECIN = Coding(G15, "10")
INFIRMIER = Coding(G15, "60")
OSTEOPATHE = Coding(R95, "71")
TREAT = Coding(PURPOSE_OF_USE_SYSTEM, "TREAT")
ETREAT = Coding(PURPOSE_OF_USE_SYSTEM, "ETREAT")
BTG = Coding(PURPOSE_OF_USE_SYSTEM, "BTG")
HPAYMT = Coding(PURPOSE_OF_USE_SYSTEM, "HPAYMT")


def professional(
    user: str = "Practitioner/a",
    *,
    roles: tuple[Coding, ...] = (MEDECIN,),
    purpose: tuple[Coding, ...] = (TREAT,),
    npi: str | None = "810000000001",
    organization_id: str | None = "org-1",
    scope: str = "user/*.cruds",
) -> Principal:
    return Principal(
        subject=user,
        client_id="ehr",
        scopes=parse_scopes(scope),
        fhir_user=user,
        roles=roles,
        purpose_of_use=purpose,
        national_provider_identifier=npi,
        organization_id=organization_id,
    )


def patient_user(patient: str = "p1") -> Principal:
    return Principal(
        subject=patient,
        client_id="app",
        scopes=parse_scopes("patient/*.cruds"),
        fhir_user=f"Patient/{patient}",
        patient=patient,
    )


def system_client(client_id: str = "platform", scope: str = "system/*.cruds") -> Principal:
    return Principal(
        subject=client_id, client_id=client_id, scopes=parse_scopes(scope), organization_id="org-9"
    )


def request(
    principal: Principal,
    interaction: Interaction = Interaction.READ,
    resource_type: str = "DocumentReference",
) -> AccessRequest:
    return AccessRequest(principal, interaction, resource_type, NOW)


def document_reference(
    id: str = "d1",
    *,
    patient: str | None = "p1",
    type_coding: tuple[str | None, str] | None = (LOINC, "11488-4"),
    authors: tuple[dict[str, Any], ...] = ({"reference": "Practitioner/b"},),
    labels: tuple[tuple[str | None, str], ...] = (),
    **extra: Any,
) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "DocumentReference", "id": id, "status": "current"}
    if patient is not None:
        resource["subject"] = {"reference": f"Patient/{patient}"}
    if type_coding is not None:
        system, code = type_coding
        resource["type"] = {"coding": [{"system": system, "code": code} if system else {"code": code}]}
    if authors:
        resource["author"] = list(authors)
    if labels:
        resource["securityLabel"] = [
            {"coding": [{"system": system, "code": code} if system else {"code": code}]}
            for system, code in labels
        ]
    resource.update(extra)
    return resource


def stored(
    resource: dict[str, Any],
    *,
    index: dict[str, Any] | None = None,
    version: int = 1,
    history: bool = False,
    deleted: bool = False,
) -> StoredResource:
    return StoredResource.from_document(
        resource["resourceType"],
        document(resource, index=index, version=version, history=history, deleted=deleted),
    )


def document(
    resource: dict[str, Any],
    *,
    index: dict[str, Any] | None = None,
    version: int = 1,
    history: bool = False,
    deleted: bool = False,
) -> dict[str, Any]:
    current = to_document(resource, version=version, last_updated=NOW, index=index or {}, deleted=deleted)
    return to_history_document(current) if history else current


def dated(low: datetime, high: datetime | None = None) -> dict[str, Any]:
    return {"date": [{"lo": low, "hi": high or low}]}


def consent(
    id: str,
    provision: dict[str, Any],
    *,
    patient: str = "p1",
    status: str = "active",
    scope: str = "patient-privacy",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "id": id,
        "status": status,
        "scope": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": scope}]
        },
        "category": [{"coding": [{"system": LOINC, "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient}"},
        "provision": provision,
        **extra,
    }


def actor(reference: str | None = None, **identifier: str) -> dict[str, Any]:
    ref: dict[str, Any] = {"reference": reference} if reference else {"identifier": identifier}
    if reference is None and "type" in identifier:
        ref = {"type": identifier.pop("type"), "identifier": identifier}
    return {
        "role": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}
            ]
        },
        "reference": ref,
    }


def action(*codes: str) -> list[dict[str, Any]]:
    return [{"coding": [{"system": ACT, "code": code}]} for code in codes]


def purpose(*codes: str) -> list[dict[str, Any]]:
    return [{"system": PURPOSE_OF_USE_SYSTEM, "code": code} for code in codes]


def permit(**criteria: Any) -> dict[str, Any]:
    return {"type": "permit", **criteria}


def deny(**criteria: Any) -> dict[str, Any]:
    return {"type": "deny", **criteria}
