"""The CapabilityStatement, built from capability/: the template plus the declared SearchParameters.

https://hl7.org/fhir/R4/capabilitystatement.html — truthful: every interaction and search parameter
it lists is served (tests exercise each one).
"""

from __future__ import annotations

import copy
import json
from functools import cache
from typing import Any

from fhir_server import __version__
from fhir_server.auth import discovery
from fhir_server.interactions.context import InteractionContext
from fhir_server.interactions.response import FhirResponse
from fhir_server.interactions.services import Services
from fhir_server.paths import CAPABILITY_DIR
from fhir_server.search.registry import SearchRegistry
from fhir_server.settings import Settings
from fhir_server.storage.documents import instant


@cache
def _template() -> dict[str, Any]:
    return dict(json.loads((CAPABILITY_DIR / "CapabilityStatement.json").read_text(encoding="utf-8")))


def build_capability_statement(
    registry: SearchRegistry, *, base_url: str, settings: Settings
) -> dict[str, Any]:
    statement = copy.deepcopy(_template())
    statement["software"]["version"] = __version__
    statement["implementation"]["url"] = base_url
    oauth_uris = discovery.oauth_uris_extension(settings)
    if oauth_uris:
        statement["rest"][0]["security"]["extension"] = oauth_uris
    for resource in statement["rest"][0]["resource"]:
        if not any(item["code"] == "search-type" for item in resource["interaction"]):
            continue
        parameters = registry.parameters_for(resource["type"]).values()
        resource["searchParam"] = [
            {"name": parameter.code, "definition": parameter.url, "type": parameter.type}
            for parameter in sorted(parameters, key=lambda item: item.code)
        ]
    return statement


async def capability_statement(ctx: InteractionContext, services: Services) -> FhirResponse:
    statement = build_capability_statement(
        services.registry, base_url=services.base_url, settings=services.settings
    )
    statement["date"] = instant(ctx.now)
    return FhirResponse(200, statement)
