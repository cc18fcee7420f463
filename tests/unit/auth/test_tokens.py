"""Bearer JWT verification (docs/tokens.md: RS256/ES256 only, required claims, aud/iss/exp; RFC 8725)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fhir_server.auth.devkeys import development_jwks, ensure_private_key, mint_token
from fhir_server.auth.tokens import TokenVerifier, bearer_token
from fhir_server.fhir.errors import FhirError

AUDIENCE = "http://server/fhir"


@pytest.fixture
def verifier(tmp_path: Path) -> TokenVerifier:
    return TokenVerifier(development_jwks(tmp_path), audience=AUDIENCE)


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": "idp",
        "aud": AUDIENCE,
        "sub": "u",
        "client_id": "c",
        "scope": "user/*.rs",
        "iat": now,
        "exp": now + 60,
        "jti": "j",
    }
    claims.update(overrides)
    return {key: value for key, value in claims.items() if value is not None}


def test_minted_token_verifies(tmp_path: Path, verifier: TokenVerifier) -> None:
    token = mint_token(
        tmp_path, audience=AUDIENCE, subject="dr", scopes=["user/*.rs"], fhir_user="Practitioner/1"
    )
    claims = verifier.verify(token)
    assert claims["sub"] == "dr"
    assert claims["fhirUser"] == "Practitioner/1"


def _expect_401(verifier: TokenVerifier, token: str, fragment: str) -> None:
    with pytest.raises(FhirError) as raised:
        verifier.verify(token)
    assert raised.value.status == 401
    assert raised.value.headers["WWW-Authenticate"].startswith("Bearer")
    assert fragment in raised.value.message


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"aud": "http://other/fhir"}, "not addressed"),
        ({"jti": None}, "jti"),
        ({"client_id": None}, "client_id"),
        ({"scope": None}, "scope"),
    ],
)
def test_bad_claims_are_refused(
    tmp_path: Path, verifier: TokenVerifier, overrides: dict[str, Any], fragment: str
) -> None:
    token = jwt.encode(
        _claims(**overrides),
        ensure_private_key(tmp_path),
        algorithm="ES256",
        headers={"kid": "fhir-server-dev"},
    )
    _expect_401(verifier, token, fragment)


def test_wrong_audience_says_which_audience_the_server_expects(
    tmp_path: Path, verifier: TokenVerifier
) -> None:
    token = mint_token(tmp_path, audience="http://127.0.0.1:8080/fhir", subject="dr", scopes=["user/*.rs"])
    _expect_401(verifier, token, f"its aud must be '{AUDIENCE}'")


def test_hmac_and_none_are_refused(verifier: TokenVerifier) -> None:
    _expect_401(
        verifier, jwt.encode(_claims(), "secret-secret-secret-secret-32by", algorithm="HS256"), "HS256"
    )
    _expect_401(verifier, jwt.encode(_claims(), None, algorithm="none"), "none")


def test_token_signed_by_another_key_is_refused(verifier: TokenVerifier) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(_claims(), other, algorithm="ES256", headers={"kid": "fhir-server-dev"})
    _expect_401(verifier, token, "invalid")


def test_algorithm_that_does_not_fit_the_key_is_refused(verifier: TokenVerifier) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(_claims(), other, algorithm="RS256", headers={"kid": "fhir-server-dev"})
    _expect_401(verifier, token, "unknown key")


def test_issuer_is_checked_when_configured(tmp_path: Path) -> None:
    verifier = TokenVerifier(development_jwks(tmp_path), audience=AUDIENCE, issuer="https://idp")
    token = jwt.encode(_claims(iss="https://evil"), ensure_private_key(tmp_path), algorithm="ES256")
    _expect_401(verifier, token, "untrusted issuer")


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer ", "Bearer"])
def test_missing_or_non_bearer_authorization_is_401(header: str | None) -> None:
    with pytest.raises(FhirError) as raised:
        bearer_token(header)
    assert raised.value.status == 401


# -- the verification cache -------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every signature verification PyJWT performs (the cost the cache saves)."""
    calls: list[str] = []
    real = jwt.decode

    def counted(token: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counted)
    return calls


def test_a_verified_token_is_remembered_until_its_exp_and_no_longer(
    tmp_path: Path, decodes: list[str]
) -> None:
    clock = _Clock()
    verifier = TokenVerifier(development_jwks(tmp_path), audience=AUDIENCE, clock=clock)
    token = mint_token(tmp_path, audience=AUDIENCE, subject="dr", scopes=["user/*.rs"], lifetime_seconds=120)
    first = verifier.verify(token)
    assert verifier.verify(token) == first
    assert len(decodes) == 1
    clock.now = first["exp"] - 0.001
    verifier.verify(token)
    assert len(decodes) == 1
    clock.now = first["exp"]
    verifier.verify(token)
    assert len(decodes) == 2, "at exp the entry is gone: the token is verified in full again"


def test_claims_changed_by_a_caller_do_not_change_the_remembered_ones(tmp_path: Path) -> None:
    verifier = TokenVerifier(development_jwks(tmp_path), audience=AUDIENCE)
    token = mint_token(tmp_path, audience=AUDIENCE, subject="dr", scopes=["user/*.rs"])
    verifier.verify(token)["sub"] = "someone else"
    assert verifier.verify(token)["sub"] == "dr"


def test_a_new_key_set_forgets_every_verified_token(tmp_path: Path) -> None:
    verifier = TokenVerifier(development_jwks(tmp_path), audience=AUDIENCE)
    token = mint_token(tmp_path, audience=AUDIENCE, subject="dr", scopes=["user/*.rs"])
    verifier.verify(token)
    verifier.use_keys(development_jwks(tmp_path / "rotated"))
    _expect_401(verifier, token, "signature")


def test_the_cache_is_bounded_least_recently_used_first(tmp_path: Path, decodes: list[str]) -> None:
    verifier = TokenVerifier(development_jwks(tmp_path), audience=AUDIENCE, cache_size=2)
    tokens = [
        mint_token(tmp_path, audience=AUDIENCE, subject=f"u{index}", scopes=["user/*.rs"])
        for index in range(3)
    ]
    for token in tokens:
        verifier.verify(token)
    verifier.verify(tokens[2])
    verifier.verify(tokens[1])
    assert len(decodes) == 3
    verifier.verify(tokens[0])
    assert decodes[-1] == tokens[0], "the oldest entry was evicted"


def test_a_refused_token_is_not_remembered(
    tmp_path: Path, verifier: TokenVerifier, decodes: list[str]
) -> None:
    token = mint_token(tmp_path, audience="http://elsewhere/fhir", subject="dr", scopes=["user/*.rs"])
    for _ in range(2):
        _expect_401(verifier, token, "not addressed to this server")
    assert len(decodes) == 2
