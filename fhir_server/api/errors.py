"""Errors that never reach an interaction (unknown route, wrong method) rendered as OperationOutcome.

Errors inside interactions are rendered by the pipeline, which also audits them.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from fhir_server.api.render import to_http
from fhir_server.fhir.errors import FhirError
from fhir_server.interactions.pipeline import error_response

_CODES = {404: "not-found", 405: "not-supported", 415: "not-supported"}


def install(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        code = _CODES.get(error.status_code, "processing")
        diagnostics = f"{request.method} {request.url.path}: {error.detail}"
        return to_http(error_response(FhirError.of(error.status_code, code, diagnostics)))
