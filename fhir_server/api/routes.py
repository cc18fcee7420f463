"""HTTP paths -> interactions. Thin: build the context, run the pipeline, render.

https://hl7.org/fhir/R4/http.html
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from functools import partial

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response, StreamingResponse

from fhir_server.api.render import to_http
from fhir_server.fhir.errors import FhirError
from fhir_server.fhir.interaction import Interaction
from fhir_server.fhir.resources import BINARY, SUPPORTED_TYPES
from fhir_server.interactions import (
    binary,
    capabilities,
    export,
    history,
    operations,
    read,
    search,
    transaction,
    write,
)
from fhir_server.interactions.context import InteractionContext, RequestMeta
from fhir_server.interactions.pipeline import execute
from fhir_server.interactions.response import FhirResponse
from fhir_server.interactions.services import Services
from fhir_server.storage.documents import now_utc

Handler = Callable[[InteractionContext, Services], Awaitable[FhirResponse]]
JSON_MEDIA = ("application/fhir+json", "application/json", "application/json-patch+json")

router = APIRouter(prefix="/fhir")


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def _run(
    request: Request,
    interaction: Interaction,
    handler: Handler,
    *,
    resource_type: str | None = None,
    resource_id: str | None = None,
    anonymous_allowed: bool = False,
) -> Response:
    services = _services(request)
    request_id = request.headers.get("x-request-id") or str(uuid.uuid4())
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    meta = RequestMeta(
        method=request.method,
        target=target,
        base_url=services.base_url,
        request_id=request_id,
        client_address=request.client.host if request.client else None,
        headers={key.lower(): value for key, value in request.headers.items()},
    )
    ctx = InteractionContext(
        interaction=interaction,
        resource_type=resource_type,
        resource_id=resource_id,
        request=meta,
        now=now_utc(),
    )

    async def checked(ctx: InteractionContext, services: Services) -> FhirResponse:
        if resource_type is not None and resource_type not in SUPPORTED_TYPES:
            raise FhirError.of(404, "not-supported", f"Resource type {resource_type!r} is not supported here")
        return await handler(ctx, services)

    response = await execute(
        services,
        ctx,
        checked,
        authorization=request.headers.get("authorization"),
        anonymous_allowed=anonymous_allowed,
    )
    return to_http(response, request_id=request_id)


async def _json_body(request: Request) -> bytes:
    """The request body, after checking it is declared as JSON (415 otherwise)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media and media not in JSON_MEDIA:
        raise FhirError.of(
            415, "not-supported", f"Content-Type {media} is not supported: send application/fhir+json"
        )
    return await request.body()


def _with_body(request: Request, call: Callable[..., Awaitable[FhirResponse]], **kwargs: object) -> Handler:
    async def handler(ctx: InteractionContext, services: Services) -> FhirResponse:
        body = await _json_body(request)
        return await call(ctx, services, body=body, **kwargs)

    return handler


@router.get("/metadata")
async def metadata(request: Request) -> Response:
    return await _run(
        request, Interaction.CAPABILITIES, capabilities.capability_statement, anonymous_allowed=True
    )


@router.post("")
async def bundle_route(request: Request) -> Response:
    return await _run(request, Interaction.TRANSACTION, _with_body(request, transaction.process))


@router.get("")
async def system_search_get(request: Request) -> Response:
    async def handler(ctx: InteractionContext, services: Services) -> FhirResponse:
        return await search.search_system(ctx, services, params=list(request.query_params.multi_items()))

    return await _run(request, Interaction.SEARCH_SYSTEM, handler)


@router.post("/_search")
async def system_search_post(request: Request) -> Response:
    async def handler(ctx: InteractionContext, services: Services) -> FhirResponse:
        form = await request.form()
        params = list(request.query_params.multi_items()) + [
            (key, value) for key, value in form.multi_items() if isinstance(value, str)
        ]
        return await search.search_system(ctx, services, params=params)

    return await _run(request, Interaction.SEARCH_SYSTEM, handler)


# -- system history and bulk export: before the generic /{resource_type} routes, so they match first --


@router.get("/_history")
async def system_history(request: Request) -> Response:
    return await _run(request, Interaction.HISTORY_SYSTEM, history.history_system)


def _export_worker(request: Request) -> export.ExportWorker:
    """The app's export worker (started by the lifespan when wired there, else on first use)."""
    worker: export.ExportWorker | None = getattr(request.app.state, "export_worker", None)
    if worker is None:
        worker = export.ExportWorker(_services(request))
        request.app.state.export_worker = worker
    worker.start()
    return worker


def _kick_off(request: Request, level: str, group_id: str | None = None) -> Handler:
    async def handler(ctx: InteractionContext, services: Services) -> FhirResponse:
        body = await _json_body(request) if request.method == "POST" else b""
        return await export.kick_off(
            ctx, services, worker=_export_worker(request), level=level, group_id=group_id, body=body
        )

    return handler


@router.api_route("/$export", methods=["GET", "POST"])
async def export_system(request: Request) -> Response:
    return await _run(request, Interaction.OPERATION, _kick_off(request, export.SYSTEM_LEVEL))


@router.api_route("/Patient/$export", methods=["GET", "POST"])
async def export_patients(request: Request) -> Response:
    return await _run(request, Interaction.OPERATION, _kick_off(request, export.PATIENT_LEVEL))


@router.api_route("/Group/{group_id}/$export", methods=["GET", "POST"])
async def export_group(request: Request, group_id: str) -> Response:
    return await _run(request, Interaction.OPERATION, _kick_off(request, export.GROUP_LEVEL, group_id))


@router.get("/$export-status/{job_id}")
async def export_status(request: Request, job_id: str) -> Response:
    return await _run(request, Interaction.OPERATION, partial(export.status, job_id=job_id))


@router.delete("/$export-status/{job_id}")
async def export_cancel(request: Request, job_id: str) -> Response:
    handler = partial(export.cancel, worker=_export_worker(request), job_id=job_id)
    return await _run(request, Interaction.OPERATION, handler)


@router.get("/$export-file/{job_id}/{name}")
async def export_file(request: Request, job_id: str, name: str) -> Response:
    """Audited like any request, then streamed from GridFS chunk by chunk."""
    into = export.Download()
    handler = partial(export.download, job_id=job_id, name=name, into=into)
    response = await _run(request, Interaction.OPERATION, handler)
    if response.status_code != 200 or into.file_id is None:
        return response
    headers = {
        key: value for key, value in response.headers.items() if key not in ("content-length", "content-type")
    }
    return StreamingResponse(into.chunks(), media_type=export.NDJSON, headers=headers)


@router.get("/{resource_type}/{resource_id}/_history/{version}")
async def vread_route(request: Request, resource_type: str, resource_id: str, version: str) -> Response:
    handler = partial(read.vread, version=version)
    return await _run(
        request, Interaction.VREAD, handler, resource_type=resource_type, resource_id=resource_id
    )


@router.get("/{resource_type}/{resource_id}/_history")
async def instance_history(request: Request, resource_type: str, resource_id: str) -> Response:
    return await _run(
        request,
        Interaction.HISTORY_INSTANCE,
        history.history,
        resource_type=resource_type,
        resource_id=resource_id,
    )


@router.get("/{resource_type}/_history")
async def type_history(request: Request, resource_type: str) -> Response:
    return await _run(request, Interaction.HISTORY_TYPE, history.history, resource_type=resource_type)


@router.post("/{resource_type}/$validate")
async def validate_type(request: Request, resource_type: str) -> Response:
    return await _run(
        request, Interaction.OPERATION, _with_body(request, operations.validate), resource_type=resource_type
    )


@router.post("/{resource_type}/{resource_id}/$validate")
async def validate_instance(request: Request, resource_type: str, resource_id: str) -> Response:
    return await _run(
        request,
        Interaction.OPERATION,
        _with_body(request, operations.validate),
        resource_type=resource_type,
        resource_id=resource_id,
    )


@router.post("/{resource_type}/_search")
async def search_post(request: Request, resource_type: str) -> Response:
    async def handler(ctx: InteractionContext, services: Services) -> FhirResponse:
        form = await request.form()
        params = list(request.query_params.multi_items()) + [
            (key, value) for key, value in form.multi_items() if isinstance(value, str)
        ]
        return await search.search_type(ctx, services, params=params)

    return await _run(request, Interaction.SEARCH_TYPE, handler, resource_type=resource_type)


@router.get("/{resource_type}/{resource_id}")
async def read_route(request: Request, resource_type: str, resource_id: str) -> Response:
    return await _run(
        request, Interaction.READ, read.read, resource_type=resource_type, resource_id=resource_id
    )


@router.put("/{resource_type}/{resource_id}")
async def update_route(request: Request, resource_type: str, resource_id: str) -> Response:
    handler = _with_body(request, write.update)
    return await _run(
        request, Interaction.UPDATE, handler, resource_type=resource_type, resource_id=resource_id
    )


@router.put("/{resource_type}")
async def conditional_update_route(request: Request, resource_type: str) -> Response:
    return await _run(
        request, Interaction.UPDATE, _with_body(request, write.update), resource_type=resource_type
    )


def _patch_handler(request: Request) -> Handler:
    async def handler(ctx: InteractionContext, services: Services) -> FhirResponse:
        body = await request.body()
        return await write.patch(ctx, services, body=body, content_type=request.headers.get("content-type"))

    return handler


@router.patch("/{resource_type}/{resource_id}")
async def patch_route(request: Request, resource_type: str, resource_id: str) -> Response:
    return await _run(
        request,
        Interaction.PATCH,
        _patch_handler(request),
        resource_type=resource_type,
        resource_id=resource_id,
    )


@router.patch("/{resource_type}")
async def conditional_patch_route(request: Request, resource_type: str) -> Response:
    return await _run(request, Interaction.PATCH, _patch_handler(request), resource_type=resource_type)


@router.delete("/{resource_type}/{resource_id}")
async def delete_route(request: Request, resource_type: str, resource_id: str) -> Response:
    return await _run(
        request, Interaction.DELETE, write.delete, resource_type=resource_type, resource_id=resource_id
    )


@router.delete("/{resource_type}")
async def conditional_delete_route(request: Request, resource_type: str) -> Response:
    return await _run(request, Interaction.DELETE, write.delete, resource_type=resource_type)


@router.get("/{resource_type}")
async def search_get(request: Request, resource_type: str) -> Response:
    async def handler(ctx: InteractionContext, services: Services) -> FhirResponse:
        return await search.search_type(ctx, services, params=list(request.query_params.multi_items()))

    return await _run(request, Interaction.SEARCH_TYPE, handler, resource_type=resource_type)


@router.post("/{resource_type}")
async def create_route(request: Request, resource_type: str) -> Response:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if resource_type == BINARY and media and media not in JSON_MEDIA:
        return await _run(
            request, Interaction.CREATE, _raw_binary(request, media), resource_type=resource_type
        )
    return await _run(
        request, Interaction.CREATE, _with_body(request, write.create), resource_type=resource_type
    )


def _raw_binary(request: Request, content_type: str) -> Handler:
    """`POST [base]/Binary` with the document itself as the body (R4 binary.html), streamed to storage."""

    async def handler(ctx: InteractionContext, services: Services) -> FhirResponse:
        return await binary.create_raw(ctx, services, content_type=content_type, chunks=request.stream())

    return handler


def install(app: FastAPI) -> None:
    app.include_router(router)
