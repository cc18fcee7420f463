"""FHIR operations on types and instances: `$validate`.

https://hl7.org/fhir/R4/resource-operation-validate.html — the answer is 200 with an
OperationOutcome whether or not the resource is valid; 4xx means validation could not run.
"""

from __future__ import annotations

from fhir_server.fhir.errors import Issue, bad_request, operation_outcome
from fhir_server.interactions.context import InteractionContext
from fhir_server.interactions.response import FhirResponse
from fhir_server.interactions.services import Services
from fhir_server.validation import parse_resource_json, validate_resource


async def validate(ctx: InteractionContext, _services: Services, *, body: bytes) -> FhirResponse:
    ctx.audit.operation = "$validate"
    payload = parse_resource_json(body)
    resource = payload
    if payload.get("resourceType") == "Parameters":
        resources = [
            parameter.get("resource")
            for parameter in payload.get("parameter") or []
            if parameter.get("name") == "resource"
        ]
        if len(resources) != 1 or not isinstance(resources[0], dict):
            raise bad_request(
                "$validate needs exactly one 'resource' parameter", expression=("Parameters.parameter",)
            )
        resource = resources[0]
    issues = validate_resource(resource, expected_type=ctx.resource_type)
    if ctx.resource_id is not None and resource.get("id") not in (None, ctx.resource_id):
        issues.append(
            Issue(
                "error",
                "invariant",
                "The resource id differs from the id in the URL",
                (f"{ctx.resource_type}.id",),
            )
        )
    if not issues:
        issues = [Issue("information", "informational", "Validation successful: no issues found")]
    return FhirResponse(200, operation_outcome(issues))
