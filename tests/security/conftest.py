"""The adversarial suite's server: `fhir-server serve` in a process of its own, reached over real HTTP.

Black-box on purpose: tests see only what an attacker with ordinary tokens sees (status, headers,
bodies). The server runs on the session's MongoDB (embedded, or `FHIR_MONGODB_URI`), in a database of
its own, with the production default policy (`FHIR_CONSENT_DEFAULT=deny`, opt-in). Tokens are minted
with the development key of the server's data directory, as `fhir-server token` does.
See docs/security.md for the threat model these tests prove.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_server.auth.devkeys import mint_token
from fhir_server.demo.server import wait_healthy
from fhir_server.storage.embedded import free_port

FHIR_JSON = "application/fhir+json"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
G15 = "https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante"
R95 = "https://mos.esante.gouv.fr/NOS/TRE_R95-UsagerTitre/FHIR/TRE-R95-UsagerTitre"
A07 = "https://mos.esante.gouv.fr/NOS/TRE_A07-StatutVisibiliteDocument/FHIR/TRE-A07-StatutVisibiliteDocument"
INS_NIR = "urn:oid:1.2.250.1.213.1.4.10"
SERVER_VARIABLES = (
    "FHIR_MONGODB_URI",
    "FHIR_DATABASE",
    "FHIR_DATA_DIR",
    "FHIR_BASE_URL",
    "FHIR_AUTH_JWKS",
    "FHIR_AUTH_ISSUER",
    "FHIR_AUTH_AUDIENCE",
    "FHIR_CONSENT_DEFAULT",
    "FHIR_TRUSTED_PROXIES",
)


@dataclass
class LiveServer:
    """A server process, a synchronous HTTP client for it and the minter of its development tokens."""

    base_url: str
    data_dir: Path
    http: httpx.Client

    def token(
        self,
        *,
        scopes: list[str],
        sub: str = "user-1",
        client_id: str = "attacker-app",
        fhir_user: str | None = None,
        patient: str | None = None,
        iua: dict[str, Any] | None = None,
    ) -> str:
        return mint_token(
            self.data_dir,
            audience=self.base_url,
            subject=sub,
            scopes=scopes,
            client_id=client_id,
            fhir_user=fhir_user,
            patient=patient,
            iua=iua,
            lifetime_seconds=600,
        )

    def headers(self, token: str, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}", "Content-Type": FHIR_JSON, **extra}

    def doctor(
        self,
        name: str,
        *,
        scopes: tuple[str, ...] = ("user/*.cruds",),
        purpose: str = "TREAT",
        role: tuple[str, str] = (G15, "10"),
        patient: str | None = None,
        **extra: str,
    ) -> dict[str, str]:
        """A professional (médecin by default) acting for `purpose` (v3-ActReason)."""
        iua = {
            "subject_name": f"Dr {name}",
            "subject_role": [{"system": role[0], "code": role[1]}],
            "purpose_of_use": [{"system": ACT_REASON, "code": purpose}],
            "national_provider_identifier": f"8100{abs(hash(name)) % 10**8:08d}",
        }
        token = self.token(
            scopes=list(scopes), sub=name, fhir_user=f"Practitioner/{name}", patient=patient, iua=iua
        )
        return self.headers(token, **extra)

    def system(
        self, *, scopes: tuple[str, ...] = ("system/*.cruds",), client_id: str = "platform"
    ) -> dict[str, str]:
        return self.headers(self.token(scopes=list(scopes), sub=client_id, client_id=client_id))

    def patient(self, patient_id: str, *, scopes: tuple[str, ...] = ("patient/*.cruds",)) -> dict[str, str]:
        token = self.token(
            scopes=list(scopes),
            sub=f"patient-{patient_id}",
            fhir_user=f"Patient/{patient_id}",
            patient=patient_id,
        )
        return self.headers(token)


@pytest.fixture(scope="session")
def live(mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("security")
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in SERVER_VARIABLES}
    env.update(
        {
            "FHIR_MONGODB_URI": mongo_uri,
            "FHIR_DATABASE": f"sec_{uuid.uuid4().hex[:10]}",
            "FHIR_DATA_DIR": str(data_dir),
            "FHIR_CONSENT_DEFAULT": "deny",
        }
    )
    log = data_dir / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "fhir_server.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        origin = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(origin, process, log, 120)
            with httpx.Client(base_url=origin, timeout=30) as http:
                yield LiveServer(f"{origin}/fhir", data_dir, http)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def unique() -> str:
    return uuid.uuid4().hex[:12]


def nir_test_value() -> str:
    """A 15-digit test-range NIR (13 digits + key 97 - n mod 97)."""
    body = "2" + str(uuid.uuid4().int % 10**12).zfill(12)
    key = 97 - int(body) % 97
    return f"{body}{key:02d}"
