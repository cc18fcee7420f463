"""FhirResponse -> HTTP response: FHIR JSON with orjson, raw bytes for Binary content."""

from __future__ import annotations

import orjson
from starlette.responses import Response

from fhir_server.interactions.response import FhirResponse

FHIR_JSON = "application/fhir+json; charset=utf-8"


def to_http(response: FhirResponse, *, request_id: str | None = None) -> Response:
    headers = dict(response.headers)
    if request_id:
        headers["X-Request-Id"] = request_id
    if response.raw is not None:
        return Response(
            response.raw,
            status_code=response.status,
            headers=headers,
            media_type=response.content_type or "application/octet-stream",
        )
    if response.body is None:
        return Response(status_code=response.status, headers=headers)
    return Response(
        orjson.dumps(response.body), status_code=response.status, headers=headers, media_type=FHIR_JSON
    )
