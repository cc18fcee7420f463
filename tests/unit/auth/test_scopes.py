"""SMART App Launch v2 scope grammar and interaction coverage (scopes-and-launch-context, v1 aliases)."""

from __future__ import annotations

import pytest

from fhir_server.auth.scopes import granting_scopes, parse_scope, parse_scopes
from fhir_server.fhir.interaction import Interaction


@pytest.mark.parametrize(
    ("text", "context", "resource_type", "permissions"),
    [
        ("patient/Observation.rs", "patient", "Observation", {"r", "s"}),
        ("user/*.cruds", "user", "*", set("cruds")),
        ("system/Patient.c", "system", "Patient", {"c"}),
        ("user/DocumentReference.read", "user", "DocumentReference", {"r", "s"}),
        ("user/Consent.write", "user", "Consent", {"c", "u", "d"}),
        ("patient/*.*", "patient", "*", set("cruds")),
    ],
)
def test_parse_scope_reads_context_type_and_permissions(
    text: str, context: str, resource_type: str, permissions: set[str]
) -> None:
    scope = parse_scope(text)
    assert scope is not None
    assert (scope.context, scope.resource_type, set(scope.permissions)) == (
        context,
        resource_type,
        permissions,
    )


@pytest.mark.parametrize(
    "text", ["openid", "fhirUser", "launch/patient", "user/Patient.dus", "user/patient.r", "x/Patient.r"]
)
def test_non_resource_or_malformed_scopes_are_ignored(text: str) -> None:
    assert parse_scope(text) is None


def test_restriction_query_is_kept() -> None:
    scope = parse_scope("patient/DocumentReference.rs?category=http://loinc.org|11488-4")
    assert scope is not None
    assert scope.restrictions == (("category", "http://loinc.org|11488-4"),)


@pytest.mark.parametrize(
    ("scopes", "interaction", "resource_type", "granted"),
    [
        ("user/Patient.r", Interaction.READ, "Patient", True),
        ("user/Patient.r", Interaction.VREAD, "Patient", True),
        ("user/Patient.r", Interaction.HISTORY_INSTANCE, "Patient", True),
        ("user/Patient.r", Interaction.SEARCH_TYPE, "Patient", False),
        ("user/Patient.s", Interaction.HISTORY_TYPE, "Patient", True),
        ("user/Patient.u", Interaction.PATCH, "Patient", True),
        ("user/Patient.cru", Interaction.DELETE, "Patient", False),
        ("user/*.d", Interaction.DELETE, "Consent", True),
        ("user/Patient.cruds", Interaction.READ, "Consent", False),
        ("openid fhirUser", Interaction.READ, "Patient", False),
        ("user/Patient.r user/Consent.c", Interaction.CREATE, "Consent", True),
        ("user/*.cruds", Interaction.CAPABILITIES, "Patient", False),
    ],
)
def test_granting_scopes_is_a_union_per_interaction_letter(
    scopes: str, interaction: Interaction, resource_type: str, granted: bool
) -> None:
    assert bool(granting_scopes(parse_scopes(scopes), interaction, resource_type)) is granted
