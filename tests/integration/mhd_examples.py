"""Realistic French IHE MHD examples for the test_mhd_* modules: ITI-65 Provide Document Bundles of
a patient identified by a test-range INS (NIR), authored by a médecin identified by IDNPS (RPPS),
with LOINC document types and DMP codes (STANDARDS §5, §6)."""

from __future__ import annotations

import base64
import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Any

from tests.integration.conftest import Server, nir_test_value, patient_resource

INS_NIR_TEST = "urn:oid:1.2.250.1.213.1.4.10"
IDNPS = "urn:oid:1.2.250.1.71.4.2.1"
LOINC = "http://loinc.org"
MHD_LIST_TYPES = "https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes"
MINIMAL_PROVIDE_BUNDLE = "https://profiles.ihe.net/ITI/MHD/StructureDefinition/IHE.MHD.Minimal.ProvideBundle"
SOURCE_ID = "https://profiles.ihe.net/ITI/MHD/StructureDefinition/ihe-sourceId"
CLASS_CODE = "urn:oid:1.2.250.1.213.1.1.4.1"
FACILITY = "https://mos.esante.gouv.fr/NOS/TRE_R02-SecteurActivite/FHIR/TRE-R02-SecteurActivite"
SETTING = "https://mos.esante.gouv.fr/NOS/TRE_A01-CadreExercice/FHIR/TRE-A01-CadreExercice"
CCAM = "https://smt.esante.gouv.fr/terminologie-ccam"
FORMAT_CODE = "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
VISIBILITY = (
    "https://mos.esante.gouv.fr/NOS/TRE_A07-StatutVisibiliteDocument/FHIR/TRE-A07-StatutVisibiliteDocument"
)
RFC3986 = "urn:ietf:rfc:3986"
MEDECIN_NPI = "810002345678"
"""IDNPS of the médecin of Server.as_doctor (8 + RPPS)."""

NOTE, DISCHARGE, LAB = "11488-4", "18842-5", "11502-2"
"""LOINC consultation note, discharge summary, laboratory report."""


def sha1(data: bytes) -> str:
    return base64.b64encode(hashlib.sha1(data).digest()).decode("ascii")


def pdf_bytes(size: int = 2048, *, seed: str = "") -> bytes:
    """A document body of `size` bytes starting like a PDF, distinct per `seed`."""
    head = f"%PDF-1.7\n% compte rendu {seed or uuid.uuid4().hex}\n".encode()
    filler = hashlib.sha256(head).digest() * (size // 32 + 1)
    return (head + filler)[:size]


@dataclass
class Document:
    """One document of a submission: its DocumentReference and its Binary, by fullUrl."""

    content: bytes
    loinc: str = NOTE
    reference_url: str = field(default_factory=lambda: f"urn:uuid:{uuid.uuid4()}")
    binary_url: str = field(default_factory=lambda: f"urn:uuid:{uuid.uuid4()}")
    unique_id: str = field(default_factory=lambda: f"urn:oid:1.2.250.1.999.1.{uuid.uuid4().int % 10**12}")
    labels: list[dict[str, str]] = field(
        default_factory=lambda: [{"system": CONFIDENTIALITY, "code": "N", "display": "normal"}]
    )
    replaces: str | None = None

    def document_reference(self, patient: str) -> dict[str, Any]:
        resource: dict[str, Any] = {
            "resourceType": "DocumentReference",
            "masterIdentifier": {"system": RFC3986, "value": self.unique_id},
            "identifier": [{"use": "official", "system": RFC3986, "value": self.reference_url}],
            "status": "current",
            "type": {"coding": [{"system": LOINC, "code": self.loinc}]},
            "category": [{"coding": [{"system": CLASS_CODE, "code": "10", "display": "Compte rendu"}]}],
            "subject": {"reference": patient},
            "date": "2026-10-02T11:15:00+02:00",
            "author": [
                {"identifier": {"system": IDNPS, "value": MEDECIN_NPI}, "display": "Dr Jeanne Durand"}
            ],
            "securityLabel": [{"coding": list(self.labels)}],
            "content": [
                {
                    "attachment": {
                        "contentType": "application/pdf",
                        "language": "fr-FR",
                        "url": self.binary_url,
                        "size": len(self.content),
                        "hash": sha1(self.content),
                        "title": "Compte rendu de consultation",
                        "creation": "2026-10-02T10:40:00+02:00",
                    },
                    "format": {"system": FORMAT_CODE, "code": "urn:ihe:iti:xds-sd:pdf:2008"},
                }
            ],
            "context": {
                "event": [{"coding": [{"system": CCAM, "code": "DEQP003", "display": "ECG"}]}],
                "period": {"start": "2026-10-01T08:00:00+02:00", "end": "2026-10-02T18:00:00+02:00"},
                "facilityType": {"coding": [{"system": FACILITY, "code": "SA01"}]},
                "practiceSetting": {"coding": [{"system": SETTING, "code": "ETABLISSEMENT"}]},
                "related": [{"reference": "Encounter/sejour-2026-10-01"}],
            },
        }
        if self.replaces:
            resource["relatesTo"] = [{"code": "replaces", "target": {"reference": self.replaces}}]
        return resource

    def binary(self) -> dict[str, Any]:
        return {
            "resourceType": "Binary",
            "contentType": "application/pdf",
            "data": base64.b64encode(self.content).decode("ascii"),
        }


def entry(resource: dict[str, Any], full_url: str, *, method: str = "POST") -> dict[str, Any]:
    url = resource["resourceType"] if method == "POST" else f"{resource['resourceType']}/{resource['id']}"
    return {"fullUrl": full_url, "resource": resource, "request": {"method": method, "url": url}}


def submission_set(patient: str, items: list[str]) -> dict[str, Any]:
    return {
        "resourceType": "List",
        "extension": [
            {"url": SOURCE_ID, "valueIdentifier": {"system": RFC3986, "value": "urn:oid:1.2.250.1.999.7.1"}}
        ],
        "identifier": [
            {
                "use": "usual",
                "system": RFC3986,
                "value": f"urn:oid:1.2.250.1.999.8.{uuid.uuid4().int % 10**9}",
            }
        ],
        "status": "current",
        "mode": "working",
        "title": "Soumission du CHU",
        "code": {"coding": [{"system": MHD_LIST_TYPES, "code": "submissionset"}]},
        "subject": {"reference": patient},
        "date": "2026-10-02T11:20:00+02:00",
        "source": {"reference": "Practitioner/dr-core"},
        "entry": [{"item": {"reference": item}} for item in items],
    }


def folder(patient: str, items: list[str]) -> dict[str, Any]:
    return {
        "resourceType": "List",
        "status": "current",
        "mode": "working",
        "title": "Séjour cardiologie",
        "code": {"coding": [{"system": MHD_LIST_TYPES, "code": "folder"}]},
        "subject": {"reference": patient},
        "entry": [{"item": {"reference": item}} for item in items],
    }


def provide_bundle(
    patient: str, documents: list[Document], *, with_folder: bool = False, profile: bool = True
) -> dict[str, Any]:
    """An ITI-65 transaction: SubmissionSet, DocumentReferences, Binaries (and a Folder)."""
    set_url = f"urn:uuid:{uuid.uuid4()}"
    entries = [entry(submission_set(patient, [d.reference_url for d in documents]), set_url)]
    for document in documents:
        entries.append(entry(document.document_reference(patient), document.reference_url))
        entries.append(entry(document.binary(), document.binary_url))
    if with_folder:
        entries.append(
            entry(folder(patient, [d.reference_url for d in documents]), f"urn:uuid:{uuid.uuid4()}")
        )
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    if profile:
        bundle["meta"] = {"profile": [MINIMAL_PROVIDE_BUNDLE]}
    return bundle


async def create_patient(server: Server, *, nir: str | None = None) -> tuple[str, str]:
    """A Patient with a test INS; returns (id, NIR)."""
    value = nir or nir_test_value()
    resource = patient_resource(nir=value)
    response = await server.http.post("/fhir/Patient", json=resource, headers=server.as_system())
    assert response.status_code == 201, response.text
    return response.json()["id"], value


def locations(response_bundle: dict[str, Any]) -> list[str]:
    """`Type/id` of each transaction-response entry, in order."""
    found = []
    for item in response_bundle["entry"]:
        location = item["response"]["location"]
        found.append("/".join(location.split("/fhir/", 1)[1].split("/")[:2]))
    return found


async def stored_counts(server: Server) -> dict[str, int]:
    """Documents of every collection an ITI-65 writes, GridFS files and chunks included."""
    names = [
        "List",
        "List_history",
        "DocumentReference",
        "DocumentReference_history",
        "Binary",
        "Binary_history",
        "binary.files",
        "binary.chunks",
    ]
    return {name: await server.database[name].count_documents({}) for name in names}
