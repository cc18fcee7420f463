"""The development key pair: generated once in FHIR_DATA_DIR when no FHIR_AUTH_JWKS is configured.

`fhir-server token` signs development tokens with it; the server trusts only its public half.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

PRIVATE_KEY_FILE = "dev-signing-key.pem"
KEY_ID = "fhir-server-dev"
ALGORITHM = "ES256"


def _key_path(data_dir: Path) -> Path:
    return data_dir / PRIVATE_KEY_FILE


def ensure_private_key(data_dir: Path) -> ec.EllipticCurvePrivateKey:
    """Load the development key, creating it (mode 0600) on first use."""
    path = _key_path(data_dir)
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path} is not an EC private key")
        return key
    data_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    temporary.replace(path)
    return key


def development_jwks(data_dir: Path) -> dict[str, Any]:
    public = ensure_private_key(data_dir).public_key()
    jwk = json.loads(ECAlgorithm.to_jwk(public))
    jwk.update({"kid": KEY_ID, "alg": ALGORITHM, "use": "sig"})
    return {"keys": [jwk]}


def mint_token(
    data_dir: Path,
    *,
    audience: str,
    subject: str,
    scopes: Sequence[str],
    client_id: str = "fhir-server-cli",
    issuer: str | None = None,
    fhir_user: str | None = None,
    patient: str | None = None,
    iua: Mapping[str, Any] | None = None,
    lifetime_seconds: int = 3600,
) -> str:
    """A signed development access token following the contract of docs/tokens.md."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer or "fhir-server-dev",
        "aud": audience,
        "sub": subject,
        "client_id": client_id,
        "scope": " ".join(scopes),
        "iat": now,
        "exp": now + lifetime_seconds,
        "jti": str(uuid.uuid4()),
    }
    if fhir_user:
        claims["fhirUser"] = fhir_user
    if patient:
        claims["patient"] = patient
    if iua:
        claims["extensions"] = {"ihe_iua": dict(iua)}
    return jwt.encode(claims, ensure_private_key(data_dir), algorithm=ALGORITHM, headers={"kid": KEY_ID})
