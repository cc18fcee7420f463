"""The examples of `examples/` are valid and usable: each validates against the server's profiles, the
French identifiers carry valid keys, Binary attachments carry their true size and SHA-1, and the
ITI-65 Provide Document Bundle is accepted by a running server.

Covers docs/consent.md (a consent example per scenario), STANDARDS §5.1 (ITI-65), §6 (INS, IDNPS),
profiles/README.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from fhir_server.validation import is_valid_nir, validate_resource
from tests.integration.conftest import Server

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RESOURCE_FILES = sorted(path for path in EXAMPLES.rglob("*.json") if path.parent.name != "patches")
ITI65 = EXAMPLES / "bundles" / "iti65-provide-document-bundle.json"
NIR_SYSTEMS = ("urn:oid:1.2.250.1.213.1.4.8", "urn:oid:1.2.250.1.213.1.4.10", "urn:oid:1.2.250.1.213.1.4.11")
IDNPS = "urn:oid:1.2.250.1.71.4.2.1"


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _resources(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".ndjson":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    document = _load(path)
    if document.get("resourceType") == "Bundle":
        return [document] + [
            entry["resource"] for entry in document.get("entry") or [] if "resource" in entry
        ]
    return [document]


def _walk(value: Any) -> list[dict[str, Any]]:
    """Every JSON object inside `value`, depth first."""
    found: list[dict[str, Any]] = []
    if isinstance(value, dict):
        found.append(value)
        for child in value.values():
            found += _walk(child)
    elif isinstance(value, list):
        for child in value:
            found += _walk(child)
    return found


ALL_FILES = [*RESOURCE_FILES, *sorted(EXAMPLES.rglob("*.ndjson"))]


def test_every_scenario_has_an_example() -> None:
    names = {path.name for path in ALL_FILES}
    for expected in (
        "consent-grant-gp.json",
        "consent-block-professional.json",
        "consent-grant-osteopath-read-only.json",
        "consent-grant-osteopath-revoked.json",
        "consent-refuse-break-glass.json",
        "consent-normal-documents-only.json",
        "documentreference-masked-to-professionals.json",
        "iti65-provide-document-bundle.json",
    ):
        assert expected in names
    patches = {path.name for path in (EXAMPLES / "patches").glob("*.json")}
    assert {"mask-document.json", "unmask-document.json", "revoke-consent.json"} <= patches


@pytest.mark.parametrize("path", ALL_FILES, ids=[str(path.relative_to(EXAMPLES)) for path in ALL_FILES])
def test_example_validates_against_the_server_profiles(path: Path) -> None:
    for resource in _resources(path):
        errors = [issue for issue in validate_resource(resource) if issue.severity in ("error", "fatal")]
        assert not errors, f"{path.name} {resource.get('resourceType')}: {errors}"


@pytest.mark.parametrize("path", ALL_FILES, ids=[str(path.relative_to(EXAMPLES)) for path in ALL_FILES])
def test_french_identifiers_are_well_formed(path: Path) -> None:
    """INS-NIR values carry their key; professional national identifiers are IDNPS `8` + an 11-digit RPPS."""
    for item in _walk(_resources(path)):
        if item.get("system") in NIR_SYSTEMS and "value" in item:
            assert is_valid_nir(item["value"]), item
        if item.get("system") == IDNPS:
            assert item["value"].startswith("8") and len(item["value"]) == 12 and item["value"].isdigit(), (
                item
            )


def _binary_bytes(bundle_or_folder: list[dict[str, Any]]) -> dict[str, bytes]:
    return {
        resource.get("id", ""): base64.b64decode(resource["data"])
        for resource in bundle_or_folder
        if resource.get("resourceType") == "Binary"
    }


def test_document_attachments_carry_the_size_and_sha1_of_their_binary() -> None:
    """Each DocumentReference's attachment `size` and `hash` (base64 SHA-1) are those of its Binary."""
    folder = [
        resource for path in sorted((EXAMPLES / "documents").glob("*.json")) for resource in _resources(path)
    ]
    binaries = _binary_bytes(folder)
    checked = 0
    for document in (r for r in folder if r["resourceType"] == "DocumentReference"):
        attachment = document["content"][0]["attachment"]
        target = attachment["url"].removeprefix("Binary/")
        if target in binaries:
            raw = binaries[target]
            assert attachment["size"] == len(raw)
            assert attachment["hash"] == base64.b64encode(hashlib.sha1(raw).digest()).decode()
            checked += 1
    assert checked >= 6


def test_iti65_bundle_is_a_complete_provide_document_bundle() -> None:
    """ITI-65: a transaction with one SubmissionSet List (ihe-sourceId) listing every DocumentReference,
    each attachment pointing at a Binary of the Bundle with its size and SHA-1."""
    bundle = _load(ITI65)
    assert bundle["type"] == "transaction"
    by_url = {entry["fullUrl"]: entry["resource"] for entry in bundle["entry"]}
    lists = [resource for resource in by_url.values() if resource["resourceType"] == "List"]
    assert len(lists) == 1
    submission = lists[0]
    assert submission["code"]["coding"][0]["code"] == "submissionset"
    assert [ext["url"].rsplit("/", 1)[-1] for ext in submission["extension"]] == ["ihe-sourceId"]
    documents = {url for url, resource in by_url.items() if resource["resourceType"] == "DocumentReference"}
    assert {entry["item"]["reference"] for entry in submission["entry"]} == documents
    for url in documents:
        attachment = by_url[url]["content"][0]["attachment"]
        binary = by_url[attachment["url"]]
        raw = base64.b64decode(binary["data"])
        assert attachment["size"] == len(raw)
        assert attachment["hash"] == base64.b64encode(hashlib.sha1(raw).digest()).decode()


async def test_iti65_bundle_is_accepted_by_the_server(fresh_server: Server) -> None:
    """The server answers the ITI-65 transaction with a transaction-response: one 201 per entry, in order
    (the Patient entry may match an existing one: 200)."""
    bundle = _load(ITI65)
    response = await fresh_server.http.post("/fhir", json=bundle, headers=fresh_server.as_doctor())
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["type"] == "transaction-response"
    statuses = [entry["response"]["status"].split()[0] for entry in result["entry"]]
    assert statuses == ["201"] * len(bundle["entry"])
    search = await fresh_server.http.get(
        "/fhir/DocumentReference",
        params={"patient.identifier": "urn:oid:1.2.250.1.213.1.4.10|157016912304514"},
        headers=fresh_server.as_doctor(),
    )
    assert search.json()["total"] == 2
