"""What the server publishes about authorization: the SMART discovery document and the
CapabilityStatement's OAuth endpoints.

Tokens come from an authorization server this server does not run; the operator names its endpoints
(FHIR_AUTH_AUTHORIZE_URL, FHIR_AUTH_TOKEN_URL) and this server only verifies the tokens. Only what is
true is published (SMART App Launch 2.2, conformance.html, "Metadata"):
- `token_endpoint` (REQUIRED by SMART) and `grant_types_supported` name the token endpoint, so they
  are published only once one is configured. Without it, tokens are minted out of band (development:
  `fhir-server token`) and the document omits them rather than point at an endpoint that does not
  exist: a client reading it learns it cannot obtain a token through SMART here.
- `authorization_endpoint` is required only with the `launch-ehr` / `launch-standalone` capabilities,
  which belong to the authorization server; it is published when configured (Settings refuses it
  without a token endpoint), with the `authorization_code` grant and PKCE `S256` (which SMART v2
  requires of every authorization server).
- `issuer` is published only with `sso-openid-connect`, which this server does not provide.
- `capabilities` lists the scope grammars this resource server enforces, plus
  `client-confidential-asymmetric` (SMART Backend Services client authentication, the way `system/`
  clients obtain tokens) when a token endpoint is configured.
"""

from __future__ import annotations

from typing import Any

from fhir_server.settings import Settings

OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"

ENFORCED_CAPABILITIES = ("permission-v1", "permission-v2", "permission-patient", "permission-user")

SCOPES_SUPPORTED = (
    "patient/*.cruds",
    "user/*.cruds",
    "system/*.cruds",
    "patient/Patient.rs",
    "patient/DocumentReference.rs",
    "patient/Consent.cruds",
    "patient/AuditEvent.rs",
    "user/AuditEvent.rs",
    "fhirUser",
)


def smart_configuration(settings: Settings) -> dict[str, Any]:
    """The `/.well-known/smart-configuration` document for these settings."""
    capabilities = list(ENFORCED_CAPABILITIES)
    document: dict[str, Any] = {}
    if settings.auth_authorize_url is not None:
        document["authorization_endpoint"] = settings.auth_authorize_url
        document["code_challenge_methods_supported"] = ["S256"]
    if settings.auth_token_url is not None:
        document["token_endpoint"] = settings.auth_token_url
        document["grant_types_supported"] = [
            *(["authorization_code"] if settings.auth_authorize_url is not None else []),
            "client_credentials",
        ]
        capabilities.append("client-confidential-asymmetric")
    document["capabilities"] = capabilities
    document["scopes_supported"] = list(SCOPES_SUPPORTED)
    return document


def oauth_uris_extension(settings: Settings) -> list[dict[str, Any]]:
    """The `rest.security.extension` naming the configured endpoints (empty when none is)."""
    endpoints = [
        {"url": name, "valueUri": url}
        for name, url in (("authorize", settings.auth_authorize_url), ("token", settings.auth_token_url))
        if url is not None
    ]
    return [{"url": OAUTH_URIS, "extension": endpoints}] if endpoints else []
