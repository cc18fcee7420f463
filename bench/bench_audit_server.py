"""Server launcher for bench_audit.py only: `create_app(settings)` under uvicorn, with the real audit sink
or, with `--discard-audit`, a sink that drops every AuditEvent (the baseline the audit cost is measured
against). The discarding sink exists only in this benchmark file: no setting of the server selects it.

Started by bench_audit.py: bench_audit_server.py --port P --mongodb-uri U --data-dir D [--discard-audit]
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from pymongo.asynchronous.client_session import AsyncClientSession

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fhir_server.app import create_app
from fhir_server.interactions.services import Services
from fhir_server.settings import Settings


class DiscardingSink:
    """An AuditSink that stores nothing: the AuditEvents are still built by the pipeline, then dropped."""

    async def record(
        self, events: Sequence[Mapping[str, Any]], *, session: AsyncClientSession | None = None
    ) -> list[str]:
        return [str(uuid.uuid4()) for _ in events]


def build(settings: Settings, *, port: int, discard_audit: bool) -> FastAPI:
    app = create_app(settings, port=port)
    started = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
        async with started(app) as state:
            if discard_audit:
                services: Services = app.state.services
                services.audit = DiscardingSink()
            yield state

    app.router.lifespan_context = lifespan
    return app


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mongodb-uri", required=True)
    parser.add_argument("--database", default="fhir")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--audience", required=True)
    parser.add_argument("--discard-audit", action="store_true")
    options = parser.parse_args()
    settings = Settings(
        mongodb_uri=options.mongodb_uri,
        database=options.database,
        data_dir=options.data_dir,
        auth_audience=options.audience,
        consent_default="permit",
    )
    app = build(settings, port=options.port, discard_audit=options.discard_audit)
    uvicorn.run(app, host="127.0.0.1", port=options.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
