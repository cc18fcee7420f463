"""Authentication (bearer JWT -> Principal) and SMART v2 scope checks."""

from fhir_server.auth.principal import Coding, Principal
from fhir_server.auth.scopes import Scope, granting_scopes, parse_scopes
from fhir_server.auth.tokens import TokenVerifier, bearer_token, load_jwks

__all__ = [
    "Coding",
    "Principal",
    "Scope",
    "TokenVerifier",
    "bearer_token",
    "granting_scopes",
    "load_jwks",
    "parse_scopes",
]
