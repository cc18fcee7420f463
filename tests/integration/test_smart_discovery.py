"""The configured authorization server is published where clients look for it: the SMART discovery
document (both well-known locations) and the CapabilityStatement's rest.security."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from fhir_server.app import create_app
from fhir_server.auth.discovery import OAUTH_URIS
from fhir_server.settings import Settings
from tests.integration.conftest import BASE_URL, Server

AUTHORIZE = "https://auth.example.org/oauth2/authorize"
TOKEN = "https://auth.example.org/oauth2/token"


@pytest.fixture
async def configured(mongo_uri: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    database = f"it_{uuid.uuid4().hex[:10]}"
    settings = Settings(
        mongodb_uri=mongo_uri,
        database=database,
        data_dir=tmp_path,
        base_url=BASE_URL,
        auth_authorize_url=AUTHORIZE,
        auth_token_url=TOKEN,
    )
    app = create_app(settings)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
                yield http
    finally:
        await client.drop_database(database)
        await client.close()


@pytest.mark.parametrize(
    "path", ["/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"]
)
async def test_smart_configuration_names_the_configured_endpoints(
    configured: httpx.AsyncClient, path: str
) -> None:
    response = await configured.get(path, headers={"Accept": "application/fhir+xml"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    assert document["authorization_endpoint"] == AUTHORIZE
    assert document["token_endpoint"] == TOKEN
    assert document["grant_types_supported"] == ["authorization_code", "client_credentials"]
    assert "S256" in document["code_challenge_methods_supported"]


async def test_capability_statement_names_the_configured_endpoints(configured: httpx.AsyncClient) -> None:
    statement = (await configured.get("/fhir/metadata")).json()
    security = statement["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    [oauth] = [extension for extension in security["extension"] if extension["url"] == OAUTH_URIS]
    assert {item["url"]: item["valueUri"] for item in oauth["extension"]} == {
        "authorize": AUTHORIZE,
        "token": TOKEN,
    }


async def test_unconfigured_endpoints_are_not_published(server: Server) -> None:
    """The development default: tokens are minted by `fhir-server token`, no endpoint is invented."""
    document = (await server.http.get("/.well-known/smart-configuration")).json()
    assert "token_endpoint" not in document and "authorization_endpoint" not in document
    assert "permission-v2" in document["capabilities"]
    statement = (await server.http.get("/fhir/metadata")).json()
    assert "extension" not in statement["rest"][0]["security"]
