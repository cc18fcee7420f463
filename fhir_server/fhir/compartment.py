"""The Patient compartment rule of each stored type: which patients a resource belongs to.

http://hl7.org/fhir/R4/compartmentdefinition-patient.html (the subset of the types this server stores).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fhir_server.fhir.references import reference_id


def compartment(resource: Mapping[str, Any]) -> list[str]:
    """Patient ids whose compartment holds this resource."""
    resource_type = resource.get("resourceType")
    ids: list[str | None] = []
    if resource_type == "Patient":
        ids.append(resource.get("id"))
    elif resource_type == "DocumentReference":
        ids.append(reference_id(resource.get("subject"), "Patient"))
    elif resource_type == "Consent":
        ids.append(reference_id(resource.get("patient"), "Patient"))
    elif resource_type == "Binary":
        ids.append(reference_id(resource.get("securityContext"), "Patient"))
    elif resource_type == "List":
        ids.append(reference_id(resource.get("subject"), "Patient"))
    elif resource_type == "AuditEvent":
        for entity in resource.get("entity") or []:
            ids.append(reference_id(entity.get("what"), "Patient"))
        for agent in resource.get("agent") or []:
            ids.append(reference_id(agent.get("who"), "Patient"))
    return sorted({item for item in ids if item})
