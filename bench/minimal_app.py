"""Baseline for bench/run.py: the smallest FastAPI app that serves a stored Patient, one `find_one` by `_id`.

No auth, no consent, no audit: what the framework and the driver cost, on the same database, so that
the server's reads are compared with the floor the stack allows on this machine.
Started by run.py: minimal_app.py --port P --mongodb-uri U --database D
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI, Request
from pymongo import AsyncMongoClient
from starlette.responses import Response


def build(uri: str, database: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True)
        app.state.patients = client[database].Patient
        yield
        await client.close()

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.get("/patient/{patient_id}")
    async def read(patient_id: str, request: Request) -> Response:
        found = await request.app.state.patients.find_one({"_id": patient_id})
        if found is None:
            return Response(status_code=404)
        return Response(orjson.dumps(found["res"]), media_type="application/fhir+json")

    @app.get("/health")
    async def health() -> Response:
        return Response(b"{}", media_type="application/json")

    return app


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mongodb-uri", required=True)
    parser.add_argument("--database", default="fhir")
    options = parser.parse_args()
    app = build(options.mongodb_uri, options.database)
    uvicorn.run(app, host="127.0.0.1", port=options.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
