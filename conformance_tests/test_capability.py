"""The CapabilityStatement is truthful: every interaction and search parameter it declares is served.

The cases are generated from the live `GET [base]/metadata` (conftest `pytest_generate_tests`).
FHIR R4 capabilitystatement.html, http.html, search.html; docs/architecture.md.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from conformance_harness import (
    IRCP,
    ROLES,
    Fhir,
    Record,
    consent_resource,
    document_resource,
    entries,
    patient_resource,
    unique,
)


@dataclass(frozen=True)
class Kit:
    """How the suite exercises one resource type: who writes, who reads, what to write, a patch."""

    writer: str
    reader: str
    build: Callable[[Record], dict[str, Any]] | None
    patch: tuple[dict[str, Any], ...] = ()


def _submission_set(record: Record) -> dict[str, Any]:
    return {
        "resourceType": "List",
        "extension": [
            {
                "url": "https://profiles.ihe.net/ITI/MHD/StructureDefinition/ihe-sourceId",
                "valueIdentifier": {"value": "urn:oid:1.2.250.1.999.2.1"},
            }
        ],
        "status": "current",
        "mode": "working",
        "code": {
            "coding": [
                {
                    "system": "https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes",
                    "code": "submissionset",
                }
            ]
        },
        "subject": {"reference": record.reference},
        "date": "2026-09-14T10:20:00+02:00",
    }


KITS: dict[str, Kit] = {
    "Patient": Kit(
        "system",
        "system",
        lambda record: patient_resource(family=f"Capability{unique()}"),
        ({"op": "replace", "path": "/active", "value": False},),
    ),
    "DocumentReference": Kit(
        "gp",
        "gp",
        lambda record: document_resource(record.patient_id, author=ROLES["gp"].fhir_user),
        ({"op": "replace", "path": "/description", "value": "Compte rendu révisé"},),
    ),
    "Consent": Kit(
        "patient",
        "patient",
        lambda record: consent_resource(
            record.patient_id,
            {
                "type": "deny",
                "actor": [{"role": IRCP, "reference": {"reference": "Practitioner/conf-nobody"}}],
            },
        ),
        ({"op": "replace", "path": "/dateTime", "value": "2026-09-02T09:00:00+02:00"},),
    ),
    "Binary": Kit(
        "gp",
        "gp",
        lambda record: {
            "resourceType": "Binary",
            "contentType": "text/plain",
            "securityContext": {"reference": record.reference},
            "data": base64.b64encode("Ordonnance : paracétamol 1 g".encode()).decode(),
        },
        ({"op": "replace", "path": "/contentType", "value": "text/markdown"},),
    ),
    "List": Kit(
        "gp",
        "gp",
        _submission_set,
        ({"op": "add", "path": "/title", "value": "Lot de documents"},),
    ),
    "AuditEvent": Kit("patient", "patient", None),
}


class Exerciser:
    """Runs one declared interaction on a resource the suite made (or found, for AuditEvent)."""

    def __init__(self, fhir: Fhir, record: Record, resource_type: str) -> None:
        if resource_type not in KITS:
            pytest.fail(f"{resource_type} is declared but this suite has no example of it to exercise")
        self.fhir, self.record, self.type, self.kit = fhir, record, resource_type, KITS[resource_type]

    def call(self, role: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.fhir.request(method, path, who=role, patient=self.record.patient_id, **kwargs)

    def existing(self) -> dict[str, Any]:
        """A resource of the type: created by the writer, or the newest the reader can find."""
        if self.kit.build is None:
            response = self.call(
                self.kit.reader, "GET", self.type, params={"_count": "1", "patient": self.record.reference}
            )
            assert response.status_code == 200, response.text[:300]
            found = entries(response.json())
            assert found, f"no {self.type} is visible to {self.kit.reader} to exercise"
            return found[0]
        return self.create()

    def create(self) -> dict[str, Any]:
        assert self.kit.build is not None, f"{self.type} declares create but is written by the server"
        response = self.call(self.kit.writer, "POST", self.type, json_body=self.kit.build(self.record))
        assert response.status_code == 201, (
            f"create {self.type}: {response.status_code} {response.text[:400]}"
        )
        assert response.headers.get("location"), "201 Created carries a Location header"
        assert response.headers.get("etag", "").startswith('W/"'), "a weak ETag carries the version"
        created = response.json()
        assert created.get("resourceType") == self.type and created.get("id")
        return dict(created)

    def run(self, interaction: str) -> None:
        action = getattr(self, "_" + interaction.replace("-", "_"), None)
        if action is None:
            pytest.fail(f"{self.type} declares {interaction!r}, which this suite cannot exercise")
        action()

    def _create(self) -> None:
        created = self.create()
        assert created["meta"]["versionId"] == "1"

    def _read(self) -> None:
        resource = self.existing()
        response = self.call(self.kit.reader, "GET", f"{self.type}/{resource['id']}")
        assert response.status_code == 200, response.text[:300]
        assert response.json()["id"] == resource["id"]
        assert response.headers.get("etag") == f'W/"{response.json()["meta"]["versionId"]}"'

    def _vread(self) -> None:
        resource = self.existing()
        version = resource["meta"]["versionId"]
        response = self.call(self.kit.reader, "GET", f"{self.type}/{resource['id']}/_history/{version}")
        assert response.status_code == 200, response.text[:300]
        assert response.json()["meta"]["versionId"] == version

    def _update(self) -> None:
        resource = self.create()
        response = self.call(self.kit.writer, "PUT", f"{self.type}/{resource['id']}", json_body=resource)
        assert response.status_code == 200, response.text[:300]
        assert response.json()["meta"]["versionId"] != resource["meta"]["versionId"]

    def _patch(self) -> None:
        resource = self.create()
        response = self.call(
            self.kit.writer,
            "PATCH",
            f"{self.type}/{resource['id']}",
            json_body=list(self.kit.patch),
            content_type="application/json-patch+json",
        )
        assert response.status_code == 200, response.text[:300]
        operation = self.kit.patch[0]
        assert response.json()[operation["path"].strip("/")] == operation["value"]

    def _delete(self) -> None:
        if self.type == "Patient":
            self._delete_patient()
            return
        resource = self.create()
        response = self.call(self.kit.writer, "DELETE", f"{self.type}/{resource['id']}")
        assert response.status_code in (200, 202, 204), response.text[:300]
        assert self.call(self.kit.writer, "GET", f"{self.type}/{resource['id']}").status_code == 410

    def _delete_patient(self) -> None:
        """Deleting a record is not identity management (docs/consent.md): a professional the patient's
        Consent permits deletes it."""
        record = Record(self.fhir)
        record.grant("gp")
        response = self.fhir.delete(record.reference, who="gp")
        assert response.status_code in (200, 202, 204), response.text[:300]
        assert self.fhir.get(record.reference, who="gp").status_code == 410

    def _history_instance(self) -> None:
        resource = self.existing()
        response = self.call(self.kit.reader, "GET", f"{self.type}/{resource['id']}/_history")
        assert response.status_code == 200, response.text[:300]
        bundle = response.json()
        assert bundle["type"] == "history" and bundle.get("entry"), bundle

    def _history_type(self) -> None:
        self.existing()
        response = self.call(self.kit.reader, "GET", f"{self.type}/_history", params={"_count": "5"})
        assert response.status_code == 200, response.text[:300]
        assert response.json()["type"] == "history"

    def _search_type(self) -> None:
        resource = self.existing()
        response = self.call(self.kit.reader, "GET", self.type, params={"_id": resource["id"]})
        assert response.status_code == 200, response.text[:300]
        assert [found["id"] for found in entries(response.json())] == [resource["id"]]


def test_capability_statement_describes_an_r4_json_server(capability: dict[str, Any]) -> None:
    """GET [base]/metadata answers, without a token, a CapabilityStatement for FHIR 4.0.1 in JSON."""
    assert capability["fhirVersion"] == "4.0.1"
    assert capability["kind"] == "instance"
    assert {"json", "application/fhir+json"} & set(capability["format"])
    assert [rest["mode"] for rest in capability["rest"]] == ["server"]


def test_declared_interaction_is_served(
    fhir: Fhir, shared_record: Record, declared_interaction: tuple[str, str]
) -> None:
    """Each interaction the CapabilityStatement declares for a type is served as FHIR R4 specifies."""
    resource_type, interaction = declared_interaction
    Exerciser(fhir, shared_record, resource_type).run(interaction)


def _search_value(parameter_type: str, name: str, record: Record) -> str | None:
    if name in ("active", "deceased"):
        return "true"
    return {
        "token": "urn:conformance|x",
        "string": "conformance",
        "date": "ge2020-01-01",
        "reference": record.reference,
        "uri": "http://example.org/conformance",
        "number": "1",
        "quantity": "1",
    }.get(parameter_type)


def test_declared_search_parameter_is_served(
    fhir: Fhir, shared_record: Record, declared_search: tuple[str, str, str]
) -> None:
    """Each search parameter declared for a type is accepted with a value of its type: 200, a searchset,
    and no warning that the parameter is unknown or ignored."""
    resource_type, name, parameter_type = declared_search
    value = _search_value(parameter_type, name, shared_record)
    if value is None:
        pytest.skip(f"no generic value for a {parameter_type} parameter")
    reader = KITS[resource_type].reader if resource_type in KITS else "system"
    response = fhir.get(resource_type, who=reader, patient=shared_record.patient_id, params={name: value})
    assert response.status_code == 200, (
        f"{resource_type}?{name}={value}: {response.status_code} {response.text[:400]}"
    )
    bundle = response.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    warnings = [
        issue.get("diagnostics", "")
        for outcome in entries(bundle, mode="outcome")
        for issue in outcome.get("issue") or []
    ]
    assert not warnings, f"the server warned about a declared parameter: {warnings}"


def test_declared_system_interaction_is_served(
    fhir: Fhir, shared_record: Record, declared_system_interaction: str
) -> None:
    """Each whole-system interaction the CapabilityStatement declares (transaction, batch, history, search)
    is served."""
    if declared_system_interaction == "transaction":
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": "urn:uuid:3f1c7a52-8f1e-4b8a-9d53-3b4c2f8e9a10",
                    "resource": patient_resource(family=f"Transaction{unique()}"),
                    "request": {"method": "POST", "url": "Patient"},
                }
            ],
        }
        response = fhir.post(fhir.base_url, bundle, who="system")
        assert response.status_code == 200, response.text[:400]
        assert response.json()["type"] == "transaction-response"
        assert response.json()["entry"][0]["response"]["status"].startswith("201")
    elif declared_system_interaction == "batch":
        bundle = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [{"request": {"method": "GET", "url": f"Patient/{shared_record.patient_id}"}}],
        }
        response = fhir.post(fhir.base_url, bundle, who="system")
        assert response.status_code == 200, response.text[:400]
        assert response.json()["type"] == "batch-response"
        assert response.json()["entry"][0]["response"]["status"].startswith("200")
    elif declared_system_interaction == "history-system":
        response = fhir.get("_history", who="system", params={"_count": "5"})
        assert response.status_code == 200 and response.json()["type"] == "history", response.text[:300]
    elif declared_system_interaction == "search-system":
        response = fhir.get(
            fhir.base_url, who="system", params={"_type": "Patient", "_id": shared_record.patient_id}
        )
        assert response.status_code == 200 and response.json()["type"] == "searchset", response.text[:300]
    else:
        pytest.fail(f"the server declares {declared_system_interaction!r}, which this suite cannot exercise")
