"""The table of interactions: what a (method, path) names, and what it refuses (docs/security.md)."""

from __future__ import annotations

import pytest

from fhir_server.fhir.interaction import Interaction
from fhir_server.interactions.dispatch import resolve


@pytest.mark.parametrize(
    ("method", "path", "interaction", "resource_type", "resource_id", "version"),
    [
        ("GET", "metadata", Interaction.CAPABILITIES, None, None, None),
        ("GET", "", Interaction.SEARCH_SYSTEM, None, None, None),
        ("GET", "_history", Interaction.HISTORY_SYSTEM, None, None, None),
        ("GET", "Patient/p-1", Interaction.READ, "Patient", "p-1", None),
        ("HEAD", "Patient/p-1", Interaction.READ, "Patient", "p-1", None),
        ("GET", "Patient/p-1/_history/2", Interaction.VREAD, "Patient", "p-1", "2"),
        ("GET", "Patient/p-1/_history", Interaction.HISTORY_INSTANCE, "Patient", "p-1", None),
        ("GET", "DocumentReference/_history", Interaction.HISTORY_TYPE, "DocumentReference", None, None),
        ("POST", "DocumentReference/_search", Interaction.SEARCH_TYPE, "DocumentReference", None, None),
        ("GET", "Consent", Interaction.SEARCH_TYPE, "Consent", None, None),
        ("POST", "Binary", Interaction.CREATE, "Binary", None, None),
        ("PUT", "Patient/p-1", Interaction.UPDATE, "Patient", "p-1", None),
        ("PUT", "Patient", Interaction.UPDATE, "Patient", None, None),
        ("PATCH", "List/l-1", Interaction.PATCH, "List", "l-1", None),
        ("DELETE", "Consent", Interaction.DELETE, "Consent", None, None),
        ("POST", "Patient/$validate", Interaction.OPERATION, "Patient", None, None),
        ("GET", "Patient/$export", Interaction.OPERATION, None, None, None),
    ],
)
def test_declared_paths_name_their_interaction(
    method: str,
    path: str,
    interaction: Interaction,
    resource_type: str | None,
    resource_id: str | None,
    version: str | None,
) -> None:
    resolved = resolve(method, path)
    assert resolved.refusal is None
    assert (resolved.interaction, resolved.resource_type, resolved.resource_id, resolved.version) == (
        interaction,
        resource_type,
        resource_id,
        version,
    )


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "Binary_history"),
        ("GET", "DocumentReference_history/x"),
        ("GET", "AuditEvent_chain"),
        ("DELETE", "system.users"),
        ("GET", "patient/p-1"),
        ("GET", ".."),
        ("GET", "../AuditEvent_chain"),
        ("GET", "Patient/../AuditEvent_chain/x"),
        ("GET", "Patient//p-1"),
        ("GET", "Patient/p 1"),
        ("GET", "Patient/$everything"),
        ("POST", "Observation"),
        ("GET", "Patient/p-1/_history/1/x"),
        ("OPTIONS", "Binary_history"),
    ],
)
def test_anything_else_is_404_before_any_handler_runs(method: str, path: str) -> None:
    resolved = resolve(method, path)
    assert resolved.refusal is not None and resolved.refusal.status == 404
    assert resolved.resource_type is None and resolved.resource_id is None


@pytest.mark.parametrize(
    ("method", "path"), [("DELETE", "metadata"), ("OPTIONS", "Patient"), ("GET", "_search")]
)
def test_a_known_path_with_another_method_is_405(method: str, path: str) -> None:
    resolved = resolve(method, path)
    assert resolved.refusal is not None and resolved.refusal.status == 405


@pytest.mark.parametrize(("method", "path"), [("GET", "$export"), ("GET", "$export-status/j")])
def test_bundle_entries_cannot_start_exports(method: str, path: str) -> None:
    assert resolve(method, path).refusal is None
    refusal = resolve(method, path, entry=True).refusal
    assert refusal is not None and refusal.status == 400


def test_an_entry_with_an_empty_url_is_what_the_plain_request_is_never_a_nested_bundle() -> None:
    """`GET [base]?_type=...` is a system search as an entry too; `POST [base]` (a Bundle) is refused."""
    assert resolve("GET", "", entry=True) == resolve("GET", "")
    assert resolve("GET", "", entry=True).interaction is Interaction.SEARCH_SYSTEM
    refusal = resolve("POST", "", entry=True).refusal
    assert refusal is not None and refusal.status == 400
