"""SMART discovery and the CapabilityStatement's OAuth endpoints follow FHIR_AUTH_AUTHORIZE_URL /
FHIR_AUTH_TOKEN_URL, and publish only what is true (SMART App Launch 2.2 conformance.html)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fhir_server.auth.discovery import OAUTH_URIS, oauth_uris_extension, smart_configuration
from fhir_server.settings import Settings

AUTHORIZE = "https://auth.example.org/oauth2/authorize"
TOKEN = "https://auth.example.org/oauth2/token"


@pytest.fixture(autouse=True)
def _no_endpoints_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FHIR_AUTH_AUTHORIZE_URL", raising=False)
    monkeypatch.delenv("FHIR_AUTH_TOKEN_URL", raising=False)


def settings(**values: str) -> Settings:
    return Settings(**values)  # type: ignore[arg-type]


def test_endpoints_read_from_the_pinned_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FHIR_AUTH_AUTHORIZE_URL", AUTHORIZE)
    monkeypatch.setenv("FHIR_AUTH_TOKEN_URL", TOKEN)
    loaded = Settings()
    assert (loaded.auth_authorize_url, loaded.auth_token_url) == (AUTHORIZE, TOKEN)


def test_blank_endpoints_are_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FHIR_AUTH_AUTHORIZE_URL", " ")
    monkeypatch.setenv("FHIR_AUTH_TOKEN_URL", "")
    loaded = Settings()
    assert (loaded.auth_authorize_url, loaded.auth_token_url) == (None, None)


@pytest.mark.parametrize("value", ["/oauth2/token", "auth.example.org/token", "ftp://auth.example.org/t"])
def test_an_endpoint_that_is_not_an_absolute_http_url_is_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="absolute"):
        settings(auth_token_url=value)


def test_an_authorize_endpoint_without_a_token_endpoint_is_refused() -> None:
    with pytest.raises(ValidationError, match="FHIR_AUTH_TOKEN_URL"):
        settings(auth_authorize_url=AUTHORIZE)


def test_unset_endpoints_are_not_published() -> None:
    """No token endpoint is known: none is invented, nor grants or PKCE methods at it."""
    document = smart_configuration(settings())
    assert not {
        "token_endpoint",
        "authorization_endpoint",
        "grant_types_supported",
        "code_challenge_methods_supported",
        "issuer",
    } & set(document)
    assert document["capabilities"] == [
        "permission-v1",
        "permission-v2",
        "permission-patient",
        "permission-user",
    ]
    assert "system/*.cruds" in document["scopes_supported"]
    assert oauth_uris_extension(settings()) == []


def test_token_endpoint_alone_is_backend_services() -> None:
    document = smart_configuration(settings(auth_token_url=TOKEN))
    assert document["token_endpoint"] == TOKEN
    assert document["grant_types_supported"] == ["client_credentials"]
    assert "client-confidential-asymmetric" in document["capabilities"]
    assert "authorization_endpoint" not in document
    assert oauth_uris_extension(settings(auth_token_url=TOKEN)) == [
        {"url": OAUTH_URIS, "extension": [{"url": "token", "valueUri": TOKEN}]}
    ]


def test_both_endpoints_add_the_authorization_code_grant_with_pkce() -> None:
    configured = settings(auth_authorize_url=AUTHORIZE, auth_token_url=TOKEN)
    document = smart_configuration(configured)
    assert document["authorization_endpoint"] == AUTHORIZE
    assert document["token_endpoint"] == TOKEN
    assert document["grant_types_supported"] == ["authorization_code", "client_credentials"]
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert oauth_uris_extension(configured) == [
        {
            "url": OAUTH_URIS,
            "extension": [{"url": "authorize", "valueUri": AUTHORIZE}, {"url": "token", "valueUri": TOKEN}],
        }
    ]
