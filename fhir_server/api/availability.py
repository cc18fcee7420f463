"""503 within seconds while the database is down, instead of requests hanging on it.

Every FHIR request needs the database (if only for its AuditEvent). While the database monitor
(storage/supervisor.py) reports it down, a request is answered 503 OperationOutcome at once, with
`Retry-After`. A request already running when the database goes down is cancelled and answered 503
too, unless its response has started. Nothing is acknowledged that way: a write and its AuditEvent
commit together or not at all (docs/architecture.md), so a cancelled write either rolls back or
commits with its AuditEvent, and its client, told 503, reads before retrying. No AuditEvent can
record these refusals: the audit trail lives in the database that is down (the server log says
when the database went down and came back).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from pymongo.errors import ConnectionFailure
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhir_server.api.render import to_http
from fhir_server.fhir.errors import unavailable
from fhir_server.interactions.pipeline import error_response
from fhir_server.storage.supervisor import DatabaseMonitor

log = logging.getLogger("fhir_server")

RETRY_AFTER_SECONDS = 5
GATED_PREFIX = "/fhir"
UNGATED_PREFIX = "/fhir/.well-known/"
"""SMART discovery is static: it is served while the database is down."""


async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
    error = unavailable("The database is unavailable; retry shortly")
    error.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    await to_http(error_response(error))(scope, receive, send)


class DatabaseGate:
    """Pure ASGI middleware: FHIR requests only run while the database is up (module docstring)."""

    def __init__(self, app: ASGIApp, *, monitor: Callable[[], DatabaseMonitor | None]) -> None:
        self.app = app
        self.monitor = monitor
        self._abandoned: set[asyncio.Future[None]] = set()
        """Cancelled requests whose clean-up (aborting a transaction) outlives their 503."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        monitor = self.monitor()
        path: str = scope.get("path", "")
        if (
            scope["type"] != "http"
            or monitor is None
            or not path.startswith(GATED_PREFIX)
            or path.startswith(UNGATED_PREFIX)
        ):
            await self.app(scope, receive, send)
            return
        if not monitor.available:
            await refuse(scope, receive, send)
            return
        await self._guarded(monitor, scope, receive, send)

    async def _guarded(self, monitor: DatabaseMonitor, scope: Scope, receive: Receive, send: Send) -> None:
        started = False
        taken_over = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if taken_over:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        request = asyncio.ensure_future(self.app(scope, receive, guarded_send))
        down = asyncio.ensure_future(monitor.wait_down())
        try:
            await asyncio.wait((request, down), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            request.cancel()
            raise
        finally:
            down.cancel()
        if not request.done() and not started:
            taken_over = True
            request.cancel()
            self._abandon(request)
            log.warning(
                "%s %s: the database went down while serving it, answered 503", scope["method"], scope["path"]
            )
            await refuse(scope, receive, send)
            return
        try:
            await request
        except ConnectionFailure:
            if started:
                raise
            log.exception("%s %s: database unreachable, answered 503", scope["method"], scope["path"])
            await refuse(scope, receive, send)

    def _abandon(self, request: asyncio.Future[None]) -> None:
        self._abandoned.add(request)

        def forget(task: asyncio.Future[None]) -> None:
            self._abandoned.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.warning("a request cancelled by the database outage ended with %r", task.exception())

        request.add_done_callback(forget)
