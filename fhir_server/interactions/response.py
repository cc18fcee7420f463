"""The transport-free result of an interaction; api/render.py turns it into HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FhirResponse:
    status: int
    body: Mapping[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    """Raw bytes (Binary content) instead of a JSON body; `content_type` then says what they are."""
    content_type: str | None = None
    stream: Callable[[], AsyncIterator[bytes]] | None = None
    """Content streamed after the AuditEvent is recorded (export files), instead of `raw`."""
