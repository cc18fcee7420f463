"""Bearer JWT verification against a JWKS, with an algorithm allow-list (docs/security.md).

`none`, HMAC and every algorithm outside RS256/ES256 are refused before any key is looked up.
https://www.rfc-editor.org/rfc/rfc8725 (JWT best current practices)

Verified tokens are remembered (the signature check is most of the cost of authenticating a request),
keyed by the SHA-256 of the token, in a bounded LRU. An entry is used only until the token's `exp`
(without the verification leeway, so it never outlives the token), and replacing the key set
(`use_keys`, a JWKS refresh that may drop a revoked key) forgets every entry. Failures are never
remembered: a refused token is checked again on each request.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import jwt
from jwt import PyJWK, PyJWKSet

from fhir_server.auth.claims import check_registered
from fhir_server.auth.devkeys import development_jwks
from fhir_server.fhir.errors import unauthorized
from fhir_server.settings import Settings

ALLOWED_ALGORITHMS = ("RS256", "ES256")
_KEY_TYPE_OF = {"RS256": "RSA", "ES256": "EC"}
REQUIRED_CLAIMS = ("iss", "aud", "exp", "iat", "sub", "client_id", "jti")
LEEWAY_SECONDS = 30
CACHE_SIZE = 10_000


def load_jwks(settings: Settings) -> dict[str, Any]:
    """The configured JWKS (file path or https URL), or the development key's public half."""
    source = settings.auth_jwks
    if source is None:
        return development_jwks(settings.data_dir)
    if source.startswith("https://") or source.startswith("http://"):
        response = httpx.get(source, timeout=10.0)
        response.raise_for_status()
        return dict(response.json())
    return dict(json.loads(Path(source).read_text(encoding="utf-8")))


class TokenVerifier:
    def __init__(
        self,
        jwks: Mapping[str, Any],
        *,
        audience: str,
        issuer: str | None = None,
        cache_size: int = CACHE_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._audience = audience
        self._issuer = issuer
        self._cache_size = cache_size
        self._clock = clock
        self._cache: OrderedDict[bytes, tuple[dict[str, Any], float]] = OrderedDict()
        self._keys: list[PyJWK] = []
        self.use_keys(jwks)

    def use_keys(self, jwks: Mapping[str, Any]) -> None:
        """Trust `jwks` from now on; tokens verified with the previous keys are verified again."""
        usable = {"keys": [key for key in jwks.get("keys", []) if key.get("kty") in ("RSA", "EC")]}
        self._keys = PyJWKSet.from_dict(usable).keys if usable["keys"] else []
        self._cache.clear()

    def _key_for(self, header: Mapping[str, Any]) -> PyJWK:
        kid = header.get("kid")
        key_type = _KEY_TYPE_OF[header["alg"]]
        candidates = [
            key for key in self._keys if (kid is None or key.key_id == kid) and key.key_type == key_type
        ]
        if not candidates:
            raise unauthorized("The token is signed with an unknown key")
        return candidates[0]

    def verify(self, token: str) -> dict[str, Any]:
        """The verified claims; any failure is a 401 FhirError carrying WWW-Authenticate."""
        key = hashlib.sha256(token.encode("utf-8")).digest()
        cached = self._cache.get(key)
        if cached is not None:
            claims, expires = cached
            if self._clock() < expires:
                self._cache.move_to_end(key)
                return dict(claims)
            del self._cache[key]
        claims = self._verify(token)
        self._remember(key, claims)
        return dict(claims)

    def _remember(self, key: bytes, claims: dict[str, Any]) -> None:
        expires = claims.get("exp")
        if isinstance(expires, bool) or not isinstance(expires, int | float) or self._cache_size <= 0:
            return
        self._cache[key] = (claims, float(expires))
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise unauthorized("The bearer token is malformed") from error
        algorithm = header.get("alg")
        if algorithm not in ALLOWED_ALGORITHMS:
            raise unauthorized(f"Token algorithm {algorithm!r} is not accepted (allowed: RS256, ES256)")
        key = self._key_for(header)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": list(REQUIRED_CLAIMS), "verify_iss": self._issuer is not None},
            )
        except jwt.ExpiredSignatureError as error:
            raise unauthorized("The bearer token has expired") from error
        except jwt.InvalidAudienceError as error:
            # The expected audience is public (the base URL, or FHIR_AUTH_AUDIENCE that every token carries).
            raise unauthorized(
                f"The bearer token is not addressed to this server: its aud must be {self._audience!r}"
            ) from error
        except jwt.InvalidIssuerError as error:
            raise unauthorized("The bearer token comes from an untrusted issuer") from error
        except jwt.MissingRequiredClaimError as error:
            raise unauthorized(f"The bearer token lacks the {error.claim!r} claim") from error
        except (jwt.PyJWTError, TypeError, ValueError) as error:
            raise unauthorized("The bearer token signature or claims are invalid") from error
        if not isinstance(claims.get("scope"), str):
            raise unauthorized("The bearer token carries no scope")
        check_registered(claims)
        return claims


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise unauthorized("No bearer token: send Authorization: Bearer <token>")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("The Authorization header must use the Bearer scheme")
    return token.strip()


__all__ = ["ALLOWED_ALGORITHMS", "TokenVerifier", "bearer_token", "load_jwks"]
