"""Code systems, codes and code hierarchies the consent rules of docs/consent.md are written in.

http://hl7.org/fhir/R4/consent.html, https://profiles.ihe.net/ITI/PCF/ch-P.html (STANDARDS §1, §2, §5.2, §6)
"""

from __future__ import annotations

from fhir_server.auth.principal import BREAK_THE_GLASS, PURPOSE_OF_USE_SYSTEM, Coding
from fhir_server.auth.purpose import is_break_the_glass, purpose_covers
from fhir_server.fhir.interaction import Interaction

CONSENT_ACTION_SYSTEM = "http://terminology.hl7.org/CodeSystem/consentaction"
CONSENT_SCOPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/consentscope"
PATIENT_PRIVACY = "patient-privacy"
RESOURCE_TYPES_SYSTEM = "http://hl7.org/fhir/resource-types"
CONFIDENTIALITY_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
CONFIDENTIALITY_ORDER: tuple[str, ...] = ("U", "L", "M", "N", "R", "V")
"""v3-Confidentiality, lowest first: a provision on one level covers it and every level below."""
UNLABELLED_CONFIDENTIALITY = "N"
"""The level of a resource that carries no v3-Confidentiality label (the DMP default)."""

VISIBILITY_SYSTEM = (
    "https://mos.esante.gouv.fr/NOS/TRE_A07-StatutVisibiliteDocument/FHIR/TRE-A07-StatutVisibiliteDocument"
)
MASKED_TO_PROFESSIONALS = "MASQUE_PS"
INVISIBLE_TO_PATIENT = "INVISIBLE_PATIENT"

USAGER_TITRE_SYSTEM = "https://mos.esante.gouv.fr/NOS/TRE_R95-UsagerTitre/FHIR/TRE-R95-UsagerTitre"
READ_ONLY_PROFESSIONS: tuple[Coding, ...] = (Coding(USAGER_TITRE_SYSTEM, "71"),)
"""Professions limited by law to reading (ostéopathe): never more than `access`."""

ACCESS = "access"
COLLECT = "collect"
CORRECT = "correct"

ACTION_OF: dict[Interaction, str] = {
    Interaction.READ: ACCESS,
    Interaction.VREAD: ACCESS,
    Interaction.SEARCH_TYPE: ACCESS,
    Interaction.SEARCH_SYSTEM: ACCESS,
    Interaction.HISTORY_INSTANCE: ACCESS,
    Interaction.HISTORY_TYPE: ACCESS,
    Interaction.HISTORY_SYSTEM: ACCESS,
    Interaction.CREATE: COLLECT,
    Interaction.UPDATE: CORRECT,
    Interaction.PATCH: CORRECT,
    Interaction.DELETE: CORRECT,
}
"""The consentaction each interaction is; the others (capabilities, batch, transaction, operation) are
decided per inner read/search/write and are refused here."""

__all__ = [
    "ACCESS",
    "ACTION_OF",
    "BREAK_THE_GLASS",
    "COLLECT",
    "CONFIDENTIALITY_ORDER",
    "CONFIDENTIALITY_SYSTEM",
    "CONSENT_ACTION_SYSTEM",
    "CONSENT_SCOPE_SYSTEM",
    "CORRECT",
    "INVISIBLE_TO_PATIENT",
    "MASKED_TO_PROFESSIONALS",
    "PATIENT_PRIVACY",
    "PURPOSE_OF_USE_SYSTEM",
    "READ_ONLY_PROFESSIONS",
    "RESOURCE_TYPES_SYSTEM",
    "UNLABELLED_CONFIDENTIALITY",
    "USAGER_TITRE_SYSTEM",
    "VISIBILITY_SYSTEM",
    "is_break_the_glass",
    "purpose_covers",
]


def covers(pattern: Coding, actual: Coding) -> bool:
    """`pattern` (from a rule) names `actual` (from the request): same code, same system if it states one."""
    if pattern.code is None or pattern.code != actual.code:
        return False
    return pattern.system is None or pattern.system == actual.system
