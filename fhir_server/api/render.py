"""FhirResponse -> HTTP response: FHIR JSON with orjson, raw bytes for Binary content, streams."""

from __future__ import annotations

import orjson
from starlette.responses import Response, StreamingResponse

from fhir_server.interactions.response import FhirResponse

FHIR_JSON = "application/fhir+json; charset=utf-8"
STREAM_OWNED = ("content-length", "content-type")


def to_http(response: FhirResponse, *, request_id: str | None = None, head: bool = False) -> Response:
    """`head`: answer a HEAD request, the headers of the GET without its body."""
    headers = dict(response.headers)
    if request_id:
        headers["X-Request-Id"] = request_id
    if head:
        return Response(status_code=response.status, headers=headers)
    if response.stream is not None:
        kept = {key: value for key, value in headers.items() if key.lower() not in STREAM_OWNED}
        return StreamingResponse(
            response.stream(),
            status_code=response.status,
            headers=kept,
            media_type=response.content_type or "application/octet-stream",
        )
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
