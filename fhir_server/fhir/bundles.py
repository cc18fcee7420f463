"""Bundle helpers shared by search, history and transaction responses. https://hl7.org/fhir/R4/bundle.html"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from fhir_server.fhir.instants import instant


def bundle(
    bundle_type: str,
    *,
    now: datetime,
    entries: Sequence[Mapping[str, Any]],
    links: Sequence[tuple[str, str]] = (),
    total: int | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": instant(now)},
        "type": bundle_type,
    }
    if total is not None:
        body["total"] = total
    if links:
        body["link"] = [{"relation": relation, "url": url} for relation, url in links]
    body["entry"] = list(entries)
    return body
