"""The pinned configuration of docs/configuration.md, read from FHIR_* environment variables, nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BREAK_GLASS_ROLES = (
    "https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante|10"
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FHIR_", extra="ignore")

    mongodb_uri: str | None = None
    database: str = "fhir"
    data_dir: Path = Path("./.fhir-data")
    base_url: str | None = None
    auth_jwks: str | None = None
    auth_issuer: str | None = None
    auth_audience: str | None = None
    auth_authorize_url: str | None = None
    auth_token_url: str | None = None
    consent_default: Literal["deny", "permit"] = "deny"
    break_glass_roles: str = DEFAULT_BREAK_GLASS_ROLES
    max_body_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    trusted_proxies: str = ""
    """Comma-separated addresses whose `X-Forwarded-For` is believed (api/peer.py)."""

    @field_validator(
        "mongodb_uri",
        "base_url",
        "auth_jwks",
        "auth_issuer",
        "auth_audience",
        "auth_authorize_url",
        "auth_token_url",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("auth_authorize_url", "auth_token_url")
    @classmethod
    def _absolute_url(cls, value: str | None) -> str | None:
        """SMART discovery publishes absolute endpoint URLs only: anything else is refused at start-up."""
        if value is None:
            return None
        parsed = urlsplit(value.strip())
        if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.fragment:
            raise ValueError(f"{value!r} is not an absolute http(s) URL")
        return value.strip()

    @model_validator(mode="after")
    def _token_endpoint_with_authorize(self) -> Settings:
        """An authorization endpoint is useless without the token endpoint that redeems its codes."""
        if self.auth_authorize_url is not None and self.auth_token_url is None:
            raise ValueError("FHIR_AUTH_AUTHORIZE_URL is set but FHIR_AUTH_TOKEN_URL is not: set both")
        return self

    @property
    def trusted_proxy_addresses(self) -> frozenset[str]:
        return frozenset(item.strip() for item in self.trusted_proxies.split(",") if item.strip())

    def resolved_base_url(self, host: str, port: int) -> str:
        return (self.base_url or f"http://{host}:{port}/fhir").rstrip("/")
