"""Realistic French examples of every validated resource (test-range INS, RPPS-based IDNPS, LOINC).

Each builder returns a fresh dict, so a test may change it freely.
"""

from __future__ import annotations

from typing import Any

INS_NIR_TEST = "urn:oid:1.2.250.1.213.1.4.10"
NIR_TEST_VALUE = "285037510234553"  # 2 85 03 75 102 345, key 53
IDNPS = "urn:oid:1.2.250.1.71.4.2.1"
IDNPS_VALUE = "810002345678"  # RPPS-based (prefix 8)
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
TRE_A07 = (
    "https://mos.esante.gouv.fr/NOS/TRE_A07-StatutVisibiliteDocument/FHIR/TRE-A07-StatutVisibiliteDocument"
)
MHD_LIST_TYPES = "https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes"
SOURCE_ID = "https://profiles.ihe.net/ITI/MHD/StructureDefinition/ihe-sourceId"
PATIENT_UUID = "urn:uuid:6f0c2a4e-1b7d-4c55-9a3e-2f1d0b8c7a61"
DOCUMENT_UUID = "urn:uuid:0d3b5c1e-7a24-4f8e-b6c9-3e5a1d2f4b70"
BINARY_UUID = "urn:uuid:9a7e4c2b-5d13-4e6f-8b0a-1c2d3e4f5a6b"
LIST_UUID = "urn:uuid:4b2d6f8a-0c1e-4a3b-9d5f-7e6a8b9c0d1e"


def patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "meta": {"profile": ["https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-patient-ins"]},
        "identifier": [
            {
                "use": "official",
                "type": {
                    "coding": [
                        {
                            "system": "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203",
                            "code": "INS-NIR-TEST",
                        }
                    ]
                },
                "system": INS_NIR_TEST,
                "value": NIR_TEST_VALUE,
            },
            {
                "use": "usual",
                "type": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PI"}]
                },
                "system": "urn:oid:1.2.250.1.211.10.200.1",
                "value": "1174024",
            },
        ],
        "active": True,
        "name": [
            {"use": "official", "family": "DUPONT", "given": ["MARIE", "CLAIRE"]},
            {"use": "usual", "family": "MARTIN", "given": ["Marie"]},
        ],
        "telecom": [
            {"system": "phone", "value": "+33 6 12 34 56 78", "use": "mobile"},
            {"system": "email", "value": "marie.dupont@example.fr"},
        ],
        "gender": "female",
        "birthDate": "1985-03-14",
        "address": [
            {
                "use": "home",
                "type": "physical",
                "line": ["12 rue de la Paix"],
                "city": "Paris",
                "postalCode": "75002",
                "country": "FR",
            }
        ],
        "extension": [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                "valueAddress": {"city": "Paris", "postalCode": "75056", "country": "FR"},
            }
        ],
    }


def document_reference() -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "contained": [
            {
                "resourceType": "Practitioner",
                "id": "auteur",
                "identifier": [
                    {
                        "type": {
                            "coding": [
                                {
                                    "system": "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203",
                                    "code": "IDNPS",
                                }
                            ]
                        },
                        "system": IDNPS,
                        "value": IDNPS_VALUE,
                    }
                ],
                "name": [{"family": "LEROY", "given": ["Paul"], "prefix": ["Dr"]}],
            }
        ],
        "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.250.1.999.1.1.20240115.1"},
        "identifier": [{"use": "official", "system": "urn:ietf:rfc:3986", "value": DOCUMENT_UUID}],
        "status": "current",
        "docStatus": "final",
        "type": {"coding": [{"system": "http://loinc.org", "code": "11488-4", "display": "Consult note"}]},
        "subject": {"reference": "Patient/pat-1"},
        "date": "2024-01-15T10:30:00+01:00",
        "author": [{"reference": "#auteur"}],
        "description": "Compte rendu de consultation de cardiologie",
        "securityLabel": [{"coding": [{"system": CONFIDENTIALITY, "code": "N"}]}],
        "content": [
            {
                "attachment": {
                    "contentType": "application/pdf",
                    "language": "fr-FR",
                    "url": "Binary/bin-1",
                    "size": 9,
                    "hash": "lWB7AtSKeGy3hol9cnEU/HmBSx4=",
                    "title": "CR consultation",
                    "creation": "2024-01-15T10:00:00+01:00",
                },
                "format": {
                    "system": "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode",
                    "code": "urn:ihe:iti:xds-sd:pdf:2008",
                },
            }
        ],
        "context": {"period": {"start": "2024-01-15T09:00:00+01:00", "end": "2024-01-15T10:00:00+01:00"}},
    }


def consent() -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
            ]
        },
        "category": [
            {"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}]}
        ],
        "patient": {"reference": "Patient/pat-1"},
        "dateTime": "2024-02-01T09:00:00+01:00",
        "performer": [{"reference": "Patient/pat-1"}],
        "policy": [{"uri": "https://fhir-server.example.org/policy/opt-in"}],
        "provision": {
            "type": "permit",
            "period": {"start": "2024-02-01", "end": "2025-02-01"},
            "actor": [
                {
                    "role": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                "code": "IRCP",
                            }
                        ]
                    },
                    "reference": {"identifier": {"system": IDNPS, "value": IDNPS_VALUE}},
                }
            ],
            "action": [
                {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "access"}
                    ]
                }
            ],
            "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}],
            "provision": [
                {"type": "deny", "securityLabel": [{"system": CONFIDENTIALITY, "code": "R"}]},
                {
                    "type": "deny",
                    "data": [
                        {"meaning": "instance", "reference": {"reference": "DocumentReference/doc-psy"}}
                    ],
                },
            ],
        },
    }


def binary() -> dict[str, Any]:
    return {"resourceType": "Binary", "contentType": "application/pdf", "data": "JVBERi0xLjQK"}


def submission_set() -> dict[str, Any]:
    return {
        "resourceType": "List",
        "meta": {
            "profile": ["https://profiles.ihe.net/ITI/MHD/StructureDefinition/IHE.MHD.Minimal.SubmissionSet"]
        },
        "extension": [{"url": SOURCE_ID, "valueIdentifier": {"value": "urn:oid:1.2.250.1.999.1"}}],
        "identifier": [
            {"use": "usual", "system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.250.1.999.1.2.1"},
            {"use": "official", "system": "urn:ietf:rfc:3986", "value": LIST_UUID},
        ],
        "status": "current",
        "mode": "working",
        "title": "Envoi au DMP",
        "code": {"coding": [{"system": MHD_LIST_TYPES, "code": "submissionset"}]},
        "subject": {"reference": PATIENT_UUID},
        "date": "2024-01-15T10:30:00+01:00",
        "entry": [{"item": {"reference": DOCUMENT_UUID}}],
    }


def folder() -> dict[str, Any]:
    return {
        "resourceType": "List",
        "status": "current",
        "mode": "working",
        "title": "Suivi cardiologique",
        "code": {"coding": [{"system": MHD_LIST_TYPES, "code": "folder"}]},
        "subject": {"reference": "Patient/pat-1"},
        "entry": [{"item": {"reference": "DocumentReference/doc-1"}}],
    }


def provide_document_bundle() -> dict[str, Any]:
    """An ITI-65 Provide Document Bundle: SubmissionSet, DocumentReference, Binary and Patient."""
    document = document_reference()
    document["subject"] = {"reference": PATIENT_UUID}
    document["content"][0]["attachment"]["url"] = BINARY_UUID
    return {
        "resourceType": "Bundle",
        "meta": {
            "profile": ["https://profiles.ihe.net/ITI/MHD/StructureDefinition/IHE.MHD.Minimal.ProvideBundle"]
        },
        "type": "transaction",
        "entry": [
            {
                "fullUrl": LIST_UUID,
                "resource": submission_set(),
                "request": {"method": "POST", "url": "List"},
            },
            {
                "fullUrl": DOCUMENT_UUID,
                "resource": document,
                "request": {"method": "POST", "url": "DocumentReference"},
            },
            {"fullUrl": BINARY_UUID, "resource": binary(), "request": {"method": "POST", "url": "Binary"}},
            {
                "fullUrl": PATIENT_UUID,
                "resource": patient(),
                "request": {
                    "method": "POST",
                    "url": "Patient",
                    "ifNoneExist": f"identifier={INS_NIR_TEST}|{NIR_TEST_VALUE}",
                },
            },
        ],
    }
