"""The long-lived collaborators every interaction runs with, built once by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from fhir_server.audit.sink import AuditSink
from fhir_server.auth.tokens import TokenVerifier
from fhir_server.interactions.access import AccessControl
from fhir_server.search.registry import SearchRegistry
from fhir_server.settings import Settings
from fhir_server.storage.repository import Repository


@dataclass
class Services:
    settings: Settings
    base_url: str
    repository: Repository
    registry: SearchRegistry
    verifier: TokenVerifier
    audit: AuditSink
    access: AccessControl
