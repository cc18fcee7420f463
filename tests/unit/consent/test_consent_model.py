"""ConsentPolicy from the pinned settings (docs/configuration.md) and the package's public names (STYLE
§7)."""

from __future__ import annotations

import pytest

import fhir_server.consent as consent
from fhir_server.auth.principal import Coding
from fhir_server.consent import ConsentPolicy

G15 = "https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante"


@pytest.mark.parametrize(
    ("default", "roles", "expected"),
    [
        ("deny", f"{G15}|10", ConsentPolicy("deny", (Coding(G15, "10"),))),
        (
            "permit",
            f" {G15}|10 , urn:x|21,",
            ConsentPolicy("permit", (Coding(G15, "10"), Coding("urn:x", "21"))),
        ),
        ("deny", "10", ConsentPolicy("deny", (Coding(None, "10"),))),
        ("deny", "", ConsentPolicy("deny", ())),
    ],
)
def test_policy_is_parsed_from_the_settings_text(default: str, roles: str, expected: ConsentPolicy) -> None:
    assert ConsentPolicy.from_settings(default, roles) == expected


@pytest.mark.parametrize(("default", "roles"), [("allow", ""), ("deny", f"{G15}|")])
def test_policy_rejects_malformed_settings(default: str, roles: str) -> None:
    with pytest.raises(ValueError):
        ConsentPolicy.from_settings(default, roles)


def test_public_names_are_exported() -> None:
    assert sorted(consent.__all__) == [
        "AccessRequest",
        "ConsentGuard",
        "ConsentPolicy",
        "Decision",
        "decide",
        "needs_consents",
        "referenced_groups",
    ]
    assert all(hasattr(consent, name) for name in consent.__all__)
