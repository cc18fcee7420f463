"""Request limits enforced while the request arrives, before any work is done on it.

- The body: `FHIR_MAX_BODY_BYTES`. A declared `Content-Length` over the limit, or a streamed body
  that grows past it, raises a 413 FhirError from the body read itself, so the interaction that
  reads it fails the usual way (rendered and audited by the pipeline) and nothing past the limit is
  ever buffered.
- `X-Request-Id`: recorded in every AuditEvent, so it is bounded; a longer or unprintable value is
  replaced by a server-generated id, returned in the response's `X-Request-Id` (which tells the
  client its own was not used).
"""

from __future__ import annotations

import logging
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhir_server.fhir.errors import FhirError

log = logging.getLogger("fhir_server")

MAX_REQUEST_ID_CHARACTERS = 200
REQUEST_ID = b"x-request-id"


def body_too_large(limit: int) -> FhirError:
    return FhirError.of(413, "too-long", f"The request body exceeds the limit of {limit} bytes")


class RequestLimits:
    """Pure ASGI middleware (no buffering) applying the limits above to every HTTP request."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope = dict(scope, headers=_bounded_request_id(scope["headers"]))
        await self.app(scope, self._limited(scope, receive), send)

    def _limited(self, scope: Scope, receive: Receive) -> Receive:
        limit = self.max_body_bytes
        declared = _content_length(scope["headers"])
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            if declared is not None and declared > limit:
                raise body_too_large(limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise body_too_large(limit)
            return message

        return limited_receive


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _bounded_request_id(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    bounded: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if name == REQUEST_ID and not _acceptable_request_id(value):
            replacement = str(uuid.uuid4())
            log.warning("X-Request-Id of %d bytes refused, replaced by %s", len(value), replacement)
            value = replacement.encode()
        bounded.append((name, value))
    return bounded


def _acceptable_request_id(value: bytes) -> bool:
    return 0 < len(value) <= MAX_REQUEST_ID_CHARACTERS and all(0x21 <= byte <= 0x7E for byte in value)
