"""The application on the embedded database, driven in-process over ASGI, with development tokens."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from fhir_server.app import create_app
from fhir_server.auth.devkeys import mint_token
from fhir_server.settings import Settings

BASE_URL = "http://testserver/fhir"
MEDECIN = "https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante|10"
FHIR_JSON = "application/fhir+json"


@dataclass
class Server:
    """A running app, an HTTP client for it, the database behind it and a token minter."""

    app: FastAPI
    http: httpx.AsyncClient
    database: AsyncDatabase
    data_dir: Path

    def token(
        self,
        *,
        scopes: list[str],
        sub: str = "user-1",
        fhir_user: str | None = None,
        patient: str | None = None,
        iua: dict[str, Any] | None = None,
        client_id: str = "test-client",
        audience: str = BASE_URL,
        lifetime: int = 600,
    ) -> str:
        return mint_token(
            self.data_dir,
            audience=audience,
            subject=sub,
            scopes=scopes,
            client_id=client_id,
            fhir_user=fhir_user,
            patient=patient,
            iua=iua,
            lifetime_seconds=lifetime,
        )

    def headers(self, token: str, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}", "Content-Type": FHIR_JSON, **extra}

    def as_doctor(self, *, practitioner: str = "dr-core", **extra: str) -> dict[str, str]:
        """A médecin treating patients, with every user scope (consent still decides the data)."""
        iua = {
            "subject_name": "Dr Jeanne Durand",
            "subject_role": [{"system": MEDECIN.split("|")[0], "code": "10"}],
            "purpose_of_use": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}
            ],
            "national_provider_identifier": "810002345678",
        }
        token = self.token(
            scopes=["user/*.cruds"], sub=practitioner, fhir_user=f"Practitioner/{practitioner}", iua=iua
        )
        return self.headers(token, **extra)

    def as_system(self, **extra: str) -> dict[str, str]:
        """A platform with every system scope: manages identities and, by consent, clinical data."""
        return self.headers(
            self.token(scopes=["system/*.cruds"], sub="platform", client_id="platform"), **extra
        )

    def as_consent_service(self, **extra: str) -> dict[str, str]:
        """The platform's consent-capture service: `system/*` does not write Consents, an explicit
        `system/Consent` scope does (docs/consent.md, who writes what)."""
        scopes = ["system/*.cruds", "system/Consent.cruds"]
        return self.headers(self.token(scopes=scopes, sub="platform", client_id="platform"), **extra)


async def start_server(
    mongo_uri: str,
    data_dir: Path,
    database: str,
    *,
    consent_default: str = "permit",
    trusted_proxies: str = "",
) -> AsyncIterator[Server]:
    settings = Settings(
        mongodb_uri=mongo_uri,
        database=database,
        data_dir=data_dir,
        base_url=BASE_URL,
        consent_default=consent_default,
        trusted_proxies=trusted_proxies,
    )
    app = create_app(settings)
    client: AsyncMongoClient = AsyncMongoClient(mongo_uri, tz_aware=True)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 50000))
            async with httpx.AsyncClient(
                transport=transport, base_url=BASE_URL.removesuffix("/fhir")
            ) as http:
                yield Server(app, http, client[database], data_dir)
    finally:
        await client.drop_database(database)
        await client.close()


@pytest.fixture(scope="session")
async def server(mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    """One app for the session: tests create their own uniquely named data."""
    async for running in start_server(
        mongo_uri, tmp_path_factory.mktemp("fhir"), f"it_{uuid.uuid4().hex[:10]}"
    ):
        yield running


@pytest.fixture(scope="session")
async def deny_server(mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    """One app with FHIR_CONSENT_DEFAULT=deny (the production default, opt-in) for the session."""
    database = f"it_{uuid.uuid4().hex[:10]}"
    async for running in start_server(
        mongo_uri, tmp_path_factory.mktemp("deny"), database, consent_default="deny"
    ):
        yield running


@pytest.fixture
async def fresh_server(mongo_uri: str, tmp_path: Path) -> AsyncIterator[Server]:
    """An app on an empty database, for tests that count what is stored."""
    async for running in start_server(mongo_uri, tmp_path, f"it_{uuid.uuid4().hex[:10]}"):
        yield running


def unique() -> str:
    return uuid.uuid4().hex[:12]


def nir_test_value() -> str:
    """A 15-digit test-range NIR (13 digits + key 97 - n mod 97)."""
    body = "2" + "".join(str(uuid.uuid4().int % 10**12).zfill(12))
    key = 97 - int(body) % 97
    return f"{body}{key:02d}"


def patient_resource(
    *, family: str = "Martin", given: str = "Claire", nir: str | None = None
) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [
            {
                "use": "official",
                "system": "urn:oid:1.2.250.1.213.1.4.10",
                "value": nir or nir_test_value(),
            }
        ],
        "name": [{"use": "official", "family": family, "given": [given]}],
        "gender": "female",
        "birthDate": "1984-03-12",
    }


def document_resource(
    patient_id: str, *, loinc: str = "11488-4", author: str | None = None
) -> dict[str, Any]:
    document: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "masterIdentifier": {
            "system": "urn:ietf:rfc:3986",
            "value": f"urn:oid:1.2.250.1.999.{uuid.uuid4().int % 10**9}",
        },
        "status": "current",
        "type": {"coding": [{"system": "http://loinc.org", "code": loinc, "display": "Consultation note"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "date": "2026-10-01T09:30:00+02:00",
        "content": [
            {
                "attachment": {
                    "contentType": "application/pdf",
                    "url": "https://documents.example.org/example.pdf",
                }
            }
        ],
    }
    if author:
        document["author"] = [{"reference": author}]
    return document


Factory = Callable[..., dict[str, Any]]
