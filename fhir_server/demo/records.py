"""The resources the story sends: Claire's Patient, her documents, her Consents.

Each is built when its step runs (a fresh INS test number, a fresh document identifier), from what
the story made before it (`made["patient"]`: Claire's id once the platform created her record).
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from fhir_server.demo.cast import GP

INS_NIR_TEST = "urn:oid:1.2.250.1.213.1.4.10"
Made = Mapping[str, str]
"""What the story made so far, by name: `patient`, then the ids its steps chose to keep."""
Body = Callable[[Made], Any]


def _nir() -> str:
    body = "2" + str(uuid.uuid4().int % 10**12).zfill(12)
    return f"{body}{97 - int(body) % 97:02d}"


def patient(_made: Made) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"use": "official", "system": INS_NIR_TEST, "value": _nir()}],
        "name": [{"use": "official", "family": "Martin", "given": ["Claire"]}],
        "gender": "female",
        "birthDate": "1984-03-12",
        "address": [{"city": "Paris", "postalCode": "75006", "country": "FRA"}],
    }


def document(*, loinc: str, title: str, text: str) -> Body:
    """A DocumentReference of Claire's, written by her GP, its text inline."""

    def body(made: Made) -> dict[str, Any]:
        return _document(made["patient"], loinc=loinc, title=title, text=text)

    return body


def consent(provision: dict[str, Any]) -> Body:
    """An active privacy Consent of Claire's with this provision."""

    def body(made: Made) -> dict[str, Any]:
        return _consent(made["patient"], provision)

    return body


def fixed(value: Any) -> Body:
    """A body that does not depend on the story (a JSON Patch)."""

    def body(_made: Made) -> Any:
        return value

    return body


def _document(patient_id: str, *, loinc: str, title: str, text: str) -> dict[str, Any]:
    raw = text.encode("utf-8")
    return {
        "resourceType": "DocumentReference",
        "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{uuid.uuid4()}"},
        "status": "current",
        "type": {"coding": [{"system": "http://loinc.org", "code": loinc, "display": title}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "date": "2026-09-14T10:20:00+02:00",
        "author": [{"reference": GP.fhir_user, "display": GP.name}],
        "description": title,
        "securityLabel": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}]}
        ],
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain",
                    "language": "fr-FR",
                    "data": base64.b64encode(raw).decode(),
                    "size": len(raw),
                    "hash": base64.b64encode(hashlib.sha1(raw).digest()).decode(),
                    "title": title,
                }
            }
        ],
    }


def _consent(patient_id: str, provision: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient_id}"},
        "dateTime": "2026-09-01T09:00:00+02:00",
        "performer": [{"reference": f"Patient/{patient_id}"}],
        "policy": [{"uri": "https://profiles.ihe.net/ITI/PCF/Policy-basic-normal"}],
        "provision": provision,
    }
