"""The CapabilityStatement is truthful: every interaction and search parameter it declares is served.

The cases are generated from the live `GET [base]/metadata` (conftest `pytest_generate_tests`).
FHIR R4 capabilitystatement.html, http.html, search.html; docs/architecture.md.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from conformance_harness import (
    IRCP,
    ROLES,
    Fhir,
    Record,
    TokenSource,
    consent_resource,
    document_resource,
    entries,
    patient_resource,
    records,
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


def gone(resource_type: str) -> int:
    """A deleted resource reads 410, but a deleted Binary 404: its tombstone names no owning document,
    so nobody may learn it existed (docs/consent.md, Binary)."""
    return 404 if resource_type == "Binary" else 410


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

    def request_with(
        self, role: str, method: str, path: str, params: dict[str, str], body: dict[str, Any] | None
    ) -> httpx.Response:
        """A conditional request: search criteria in the query string."""
        return self.fhir.request(
            method, path, who=role, patient=self.record.patient_id, params=params, json_body=body
        )

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
        """A Patient is deleted by an identity manager (the system role, docs/consent.md)."""
        resource = self.create()
        response = self.call(self.kit.writer, "DELETE", f"{self.type}/{resource['id']}")
        assert response.status_code in (200, 202, 204), response.text[:300]
        assert self.call(self.kit.writer, "GET", f"{self.type}/{resource['id']}").status_code == gone(
            self.type
        )

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


@pytest.fixture(scope="module")
def capability_record(fhir: Fhir, tokens: TokenSource) -> Iterator[Record]:
    """The record the include, operation and flag cases write to, so that what they add stays out of
    the shared record other modules count on."""
    yield from records(fhir, tokens)


def _search_served(fhir: Fhir, role: str, record: Record, resource_type: str, params: dict[str, str]) -> None:
    """A strict search (`Prefer: handling=strict`: an unsupported parameter is a 400, not a warning)
    answers 200 with a searchset and no OperationOutcome entry."""
    response = fhir.get(
        resource_type,
        who=role,
        patient=record.patient_id,
        params=params,
        headers={"Prefer": "handling=strict"},
    )
    assert response.status_code == 200, (
        f"{resource_type}?{params}: {response.status_code} {response.text[:400]}"
    )
    bundle = response.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    assert not entries(bundle, mode="outcome"), f"the server warned: {entries(bundle, mode='outcome')}"


def test_declared_include_is_served(
    fhir: Fhir, capability_record: Record, declared_include: tuple[str, str] | None
) -> None:
    """Each `searchInclude` of a type is accepted by a strict search of that type."""
    if declared_include is None:
        pytest.skip("no searchInclude declared")
    resource_type, value = declared_include
    exerciser = Exerciser(fhir, capability_record, resource_type)
    resource = exerciser.existing()
    params = {"_id": resource["id"], "_include": value}
    _search_served(fhir, exerciser.kit.reader, capability_record, resource_type, params)


def test_declared_revinclude_is_served(
    fhir: Fhir, capability_record: Record, declared_revinclude: tuple[str, str] | None
) -> None:
    """Each `searchRevInclude` of a type is accepted by a strict search of that type."""
    if declared_revinclude is None:
        pytest.skip("no searchRevInclude declared")
    resource_type, value = declared_revinclude
    exerciser = Exerciser(fhir, capability_record, resource_type)
    resource = exerciser.existing()
    params = {"_id": resource["id"], "_revinclude": value}
    _search_served(fhir, exerciser.kit.reader, capability_record, resource_type, params)


def _kick_off_and_cancel(fhir: Fhir, path: str) -> None:
    """A Bulk Data kick-off answers 202 with the status URL, which a DELETE then cancels."""
    response = fhir.get(path, who="system", headers={"Prefer": "respond-async"})
    assert response.status_code == 202, f"{path}: {response.status_code} {response.text[:400]}"
    status_url = response.headers.get("content-location")
    assert status_url, "an $export kick-off names its status URL in Content-Location"
    cancelled = fhir.delete(status_url, who="system")
    assert cancelled.status_code == 202, cancelled.text[:300]


def test_declared_operation_is_served(
    fhir: Fhir, capability_record: Record, declared_operation: tuple[str, str] | None
) -> None:
    """Each operation declared on a type or on the system is served: `$validate` answers an
    OperationOutcome without errors for a valid resource, `$export` kicks off (then is cancelled)."""
    if declared_operation is None:
        pytest.skip("no operation declared")
    owner, name = declared_operation
    if (owner, name) == ("system", "export"):
        _kick_off_and_cancel(fhir, "$export")
    elif name == "export" and owner == "Patient":
        _kick_off_and_cancel(fhir, "Patient/$export")
    elif name == "validate" and owner != "system":
        exerciser = Exerciser(fhir, capability_record, owner)
        example = exerciser.kit.build(capability_record) if exerciser.kit.build else exerciser.existing()
        response = exerciser.call(exerciser.kit.reader, "POST", f"{owner}/$validate", json_body=example)
        assert response.status_code == 200, response.text[:400]
        outcome = response.json()
        assert outcome["resourceType"] == "OperationOutcome"
        errors = [issue for issue in outcome["issue"] if issue["severity"] in ("error", "fatal")]
        assert not errors, errors
    else:
        pytest.fail(f"{owner} declares ${name}, which this suite cannot exercise")


def _conditional_delete(fhir: Fhir, exerciser: Exerciser) -> None:
    """`DELETE [type]?_id=...` deletes the one match (a Patient by an identity manager, the system role)."""
    role, target_id = exerciser.kit.writer, exerciser.create()["id"]
    response = exerciser.request_with(role, "DELETE", exerciser.type, {"_id": target_id}, None)
    assert response.status_code in (200, 202, 204), response.text[:400]
    assert exerciser.call(role, "GET", f"{exerciser.type}/{target_id}").status_code == gone(exerciser.type)


def test_declared_flag_is_honoured(
    fhir: Fhir, capability_record: Record, declared_flag: tuple[str, str] | None
) -> None:
    """Each behaviour a resource entry promises (updateCreate, conditional create / update / delete,
    version-aware updates, readHistory) is served as FHIR R4 http.html specifies."""
    if declared_flag is None:
        pytest.skip("no flag declared")
    resource_type, flag = declared_flag
    exerciser = Exerciser(fhir, capability_record, resource_type)
    writer = exerciser.kit.writer
    if flag == "updateCreate":
        assert exerciser.kit.build is not None
        resource = {**exerciser.kit.build(capability_record), "id": f"cap-{unique()}"}
        response = exerciser.call(writer, "PUT", f"{resource_type}/{resource['id']}", json_body=resource)
        assert response.status_code == 201, response.text[:400]
    elif flag == "conditionalCreate":
        resource = exerciser.create()
        assert exerciser.kit.build is not None
        response = exerciser.call(
            writer,
            "POST",
            resource_type,
            json_body=exerciser.kit.build(capability_record),
            headers={"If-None-Exist": f"_id={resource['id']}"},
        )
        assert response.status_code == 200, response.text[:400]
        assert response.json()["id"] == resource["id"], "a matching If-None-Exist creates nothing"
    elif flag == "conditionalUpdate":
        resource = exerciser.create()
        response = exerciser.request_with(writer, "PUT", resource_type, {"_id": resource["id"]}, resource)
        assert response.status_code == 200, response.text[:400]
        assert response.json()["meta"]["versionId"] == "2"
    elif flag == "conditionalDelete-single":
        _conditional_delete(fhir, exerciser)
    elif flag == "versioned-update":
        resource = exerciser.create()
        response = exerciser.call(
            writer,
            "PUT",
            f"{resource_type}/{resource['id']}",
            json_body=resource,
            headers={"If-Match": 'W/"99"'},
        )
        assert response.status_code == 412, response.text[:400]
    elif flag == "readHistory":
        resource = exerciser.create()
        updated = exerciser.call(writer, "PUT", f"{resource_type}/{resource['id']}", json_body=resource)
        assert updated.status_code == 200, updated.text[:400]
        response = exerciser.call(exerciser.kit.reader, "GET", f"{resource_type}/{resource['id']}/_history/1")
        assert response.status_code == 200, response.text[:400]
        assert response.json()["meta"]["versionId"] == "1"
    else:
        pytest.fail(f"{resource_type} declares {flag}, which this suite cannot exercise")
