"""A request body as the interactions see it: from HTTP (read once, streamed, or as form fields) or
from a Bundle entry (already in memory)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from fhir_server.fhir.errors import FhirError

JSON_MEDIA = ("application/fhir+json", "application/json", "application/json-patch+json")


class Body(Protocol):
    """A request body, read once: all of it, as a stream, or as form fields."""

    @property
    def media_type(self) -> str:
        """The Content-Type without parameters, lower-cased ("" when none was sent)."""
        ...

    async def read(self) -> bytes: ...

    def stream(self) -> AsyncIterator[bytes]: ...

    async def form(self) -> list[tuple[str, str]]: ...


@dataclass(frozen=True)
class BytesBody:
    """A body already in memory: a Bundle entry's resource, or its JSON Patch."""

    content: bytes = b""
    media_type: str = ""

    async def read(self) -> bytes:
        return self.content

    async def stream(self) -> AsyncIterator[bytes]:
        if self.content:
            yield self.content

    async def form(self) -> list[tuple[str, str]]:
        return []


async def json_body(body: Body) -> bytes:
    """The body, after checking it is declared as JSON (415 otherwise)."""
    if body.media_type and body.media_type not in JSON_MEDIA:
        message = f"Content-Type {body.media_type} is not supported: send application/fhir+json"
        raise FhirError.of(415, "not-supported", message)
    return await body.read()
