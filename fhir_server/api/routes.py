"""HTTP under `/fhir` -> the one table of interactions (interactions/dispatch.py). Thin: build the
request facts, resolve, run the pipeline, render.

Every method and every path under `/fhir` reaches `fhir`, so an unknown path is answered (404
OperationOutcome) and audited like any request, never by the framework's own 404/405.
https://hl7.org/fhir/R4/http.html
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from fhir_server.api.peer import client_address
from fhir_server.api.render import to_http
from fhir_server.fhir.errors import bad_request
from fhir_server.fhir.instants import now_utc
from fhir_server.interactions import dispatch, export
from fhir_server.interactions.context import RequestMeta
from fhir_server.interactions.pipeline import client_disconnected, execute
from fhir_server.interactions.services import Services

PREFIX = "/fhir"


class HttpBody:
    """The request body of a Starlette request, read on demand by the interaction. A client that goes
    away mid-body (or is cut off as too slow) is the client's error, audited as such (outcome 4)."""

    def __init__(self, request: Request) -> None:
        self._request = request

    @property
    def media_type(self) -> str:
        return self._request.headers.get("content-type", "").split(";")[0].strip().lower()

    async def read(self) -> bytes:
        try:
            return await self._request.body()
        except ClientDisconnect as error:
            raise client_disconnected() from error

    async def stream(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._request.stream():
                yield chunk
        except ClientDisconnect as error:
            raise client_disconnected() from error

    async def form(self) -> list[tuple[str, str]]:
        try:
            form = await self._request.form()
        except ClientDisconnect as error:
            raise client_disconnected() from error
        except (HTTPException, MultiPartException) as error:
            # A multipart body without a boundary, or that does not parse: the client's error.
            raise bad_request(f"The form body cannot be read: {getattr(error, 'detail', error)}") from error
        return [(key, value) for key, value in form.multi_items() if isinstance(value, str)]


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _export_worker(request: Request) -> export.ExportWorker:
    """The app's export worker (started by the lifespan when wired there, else on first use)."""
    worker: export.ExportWorker | None = getattr(request.app.state, "export_worker", None)
    if worker is None:
        worker = export.ExportWorker(_services(request))
        request.app.state.export_worker = worker
    worker.start()
    return worker


async def fhir(request: Request) -> Response:
    services = _services(request)
    request_id = request.headers.get("x-request-id") or str(uuid.uuid4())
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    meta = RequestMeta(
        method=request.method,
        target=target,
        base_url=services.base_url,
        request_id=request_id,
        client_address=client_address(
            request.client.host if request.client else None,
            request.headers.getlist("x-forwarded-for"),
            services.settings.trusted_proxy_addresses,
        ),
        headers={key.lower(): value for key, value in request.headers.items()},
    )
    resolved = dispatch.resolve(request.method, request.path_params.get("path", ""))
    handler = dispatch.bind(
        resolved,
        body=HttpBody(request),
        query=list(request.query_params.multi_items()),
        exports=lambda: _export_worker(request),
    )
    response = await execute(
        services,
        dispatch.context(resolved, meta, now_utc()),
        handler,
        authorization=request.headers.get("authorization"),
        anonymous_allowed=resolved.anonymous,
    )
    return to_http(response, request_id=request_id, head=request.method == "HEAD")


class _Door:
    """`fhir` as an ASGI app: Starlette routes every method to an app, but only GET to a function."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await fhir(Request(scope, receive))
        await response(scope, receive, send)


def install(app: FastAPI) -> None:
    """Every method on `/fhir` and below."""
    for path in (PREFIX, PREFIX + "/{path:path}"):
        app.router.routes.append(Route(path, _Door(), include_in_schema=False))
