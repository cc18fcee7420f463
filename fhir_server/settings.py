"""The pinned configuration of DESIGN §6, read from FHIR_* environment variables, nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import field_validator
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
    consent_default: Literal["deny", "permit"] = "deny"
    break_glass_roles: str = DEFAULT_BREAK_GLASS_ROLES
    trusted_proxies: str = ""
    """Comma-separated addresses whose `X-Forwarded-For` is believed (api/peer.py)."""

    @field_validator("mongodb_uri", "base_url", "auth_jwks", "auth_issuer", "auth_audience", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def trusted_proxy_addresses(self) -> frozenset[str]:
        return frozenset(item.strip() for item in self.trusted_proxies.split(",") if item.strip())

    def resolved_base_url(self, host: str, port: int) -> str:
        return (self.base_url or f"http://{host}:{port}/fhir").rstrip("/")
