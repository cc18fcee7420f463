"""The ASGI application: `create_app(settings)` wires routes and a lifespan that owns the database.

The AsyncMongoClient belongs to one event loop, so it is created in the lifespan, never at import.
The lifespan also runs the database monitor (storage/supervisor.py): it restarts the embedded
database when it dies, and tells the API (api/availability.py) and `/health` when the database
does not answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from pymongo.monitoring import CommandListener
from starlette.responses import JSONResponse, Response

from fhir_server import validation
from fhir_server.api import errors, routes
from fhir_server.api.availability import DatabaseGate
from fhir_server.api.limits import RequestLimits
from fhir_server.audit.index import AuditIndexer
from fhir_server.audit.sink import MongoAuditSink
from fhir_server.auth import discovery
from fhir_server.auth.tokens import TokenVerifier, load_jwks
from fhir_server.fhir.resources import SUPPORTED_TYPES
from fhir_server.interactions.access import AccessControl
from fhir_server.interactions.services import Services
from fhir_server.search.registry import SearchRegistry
from fhir_server.settings import Settings
from fhir_server.storage.binary_owners import migrate_binary_owners
from fhir_server.storage.client import open_client
from fhir_server.storage.embedded import EmbeddedDatabase
from fhir_server.storage.repository import Repository
from fhir_server.storage.supervisor import DatabaseMonitor

log = logging.getLogger("fhir_server")
CLOSE_TIMEOUT_SECONDS = 5.0


async def _bounded(step: Awaitable[None], what: str) -> None:
    """Await a shutdown step for at most CLOSE_TIMEOUT_SECONDS: a step that talks to a database that
    has already gone waits for server selection (30 s by default), and a stop must stay quick."""
    try:
        await asyncio.wait_for(step, CLOSE_TIMEOUT_SECONDS)
    except TimeoutError:
        log.warning("%s: no answer from the database within %.0f s, gave up", what, CLOSE_TIMEOUT_SECONDS)


def create_app(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    event_listeners: Sequence[CommandListener] = (),
    embedded: EmbeddedDatabase | None = None,
) -> FastAPI:
    """`embedded`: a started embedded database for the app to supervise (`fhir-server serve` starts it
    before the app, to refuse a busy data directory at once); without it and without
    FHIR_MONGODB_URI, the lifespan starts and stops one itself."""
    base_url = settings.resolved_base_url(host, port)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        supervised = embedded
        owned: EmbeddedDatabase | None = None
        if supervised is not None:
            uri = supervised.uri
        elif settings.mongodb_uri is not None:
            uri = settings.mongodb_uri
        else:
            supervised = owned = EmbeddedDatabase(settings.data_dir.resolve() / "embedded-db").start()
            uri = owned.uri
            log.info("embedded database listening on %s", uri)
        client = open_client(uri, event_listeners=event_listeners)
        monitor = DatabaseMonitor(uri, embedded=supervised)
        try:
            database = client[settings.database]
            validation.warm_up()
            registry = SearchRegistry.load()
            repository = Repository(client, database, extract=registry.extract)
            await repository.ensure_indexes(SUPPORTED_TYPES, registry.index_keys)
            await migrate_binary_owners(repository, base_url=base_url)
            audit = MongoAuditSink(database, extract=AuditIndexer(registry))
            await audit.ensure_indexes()
            verifier = TokenVerifier(
                load_jwks(settings),
                audience=settings.auth_audience or base_url,
                issuer=settings.auth_issuer,
            )
            app.state.services = Services(
                settings=settings,
                base_url=base_url,
                repository=repository,
                registry=registry,
                verifier=verifier,
                audit=audit,
                access=AccessControl(repository, settings, registry=registry, base_url=base_url),
            )
            monitor.start()
            app.state.database_monitor = monitor
            yield
        finally:
            app.state.database_monitor = None
            await _bounded(monitor.stop(), "stopping the database monitor")
            worker = getattr(app.state, "export_worker", None)
            if worker is not None:
                await _bounded(worker.stop(), "stopping the export worker")
            await _bounded(client.close(), "closing the database client")
            if owned is not None:
                owned.stop()

    app = FastAPI(
        title="fhir-server",
        summary="FHIR R4 with consent on every access and an IHE BALP audit trail",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(RequestLimits, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(DatabaseGate, monitor=lambda: getattr(app.state, "database_monitor", None))
    errors.install(app)

    async def smart_configuration(request: Request) -> Response:
        services: Services = request.app.state.services
        return JSONResponse(discovery.smart_configuration(services.settings))

    app.add_api_route("/.well-known/smart-configuration", smart_configuration, include_in_schema=False)
    app.add_api_route("/fhir/.well-known/smart-configuration", smart_configuration, include_in_schema=False)
    routes.install(app)

    @app.get("/health", include_in_schema=False)
    async def health(request: Request) -> Response:
        """Answers within the monitor's ping timeout (2.5 s), at once when the database is known down."""
        monitor: DatabaseMonitor = request.app.state.database_monitor
        reachable = monitor.available and await monitor.ping()
        return JSONResponse(
            {"status": "pass" if reachable else "fail", "database": "up" if reachable else "down"},
            status_code=200 if reachable else 503,
        )

    return app
