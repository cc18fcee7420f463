"""Watching the database while the server runs: is it answering, and is the embedded one alive?

A `DatabaseMonitor` pings the database every POLL_SECONDS through a client of its own (a few
connections, shared with `/health`: a busy request pool cannot delay it), each ping bounded by
PING_TIMEOUT_SECONDS. A
ping that fails or does not answer in time marks the database down; the next one that answers marks
it up again. While it is down, the API answers 503 at once and requests already waiting on it are
answered 503 too (api/availability.py), so a dead or frozen database costs a client seconds, not the
driver's socket timeout.

With the embedded database, the monitor also owns the child's life: when the process exits it is
started again on the same directory and port (the published URI stays right, the driver reconnects
by itself), at once the first time and then with a growing delay while it keeps failing, each
attempt logged. A database that stays up for STABLE_SECONDS resets the delay. A frozen process
(SIGSTOP) is reported down, never killed: it may only be slow, and it resumes where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import pymongo
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from fhir_server.storage.embedded import STARTUP_TIMEOUT_SECONDS, EmbeddedDatabase

POLL_SECONDS = 0.5
PING_TIMEOUT_SECONDS = 2.5
RESTART_DELAYS_SECONDS = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0)
"""Before the first restart attempt, the second... the last one repeats."""
STABLE_SECONDS = 60.0
MONITOR_CONNECTIONS = 4

log = logging.getLogger("fhir_server")


class DatabaseMonitor:
    """The database's availability as the API sees it, and the embedded database's supervisor."""

    def __init__(self, uri: str, *, embedded: EmbeddedDatabase | None = None) -> None:
        self._client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            uri, maxPoolSize=MONITOR_CONNECTIONS, serverSelectionTimeoutMS=int(PING_TIMEOUT_SECONDS * 1000)
        )
        self._embedded = embedded
        self._down = asyncio.Event()
        self._down_since = 0.0
        self._failures = 0
        self._up_since = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    @property
    def available(self) -> bool:
        return not self._down.is_set()

    async def wait_down(self) -> None:
        """Return when the database is (or goes) down."""
        await self._down.wait()

    async def ping(self) -> bool:
        """Whether the database answers a ping within PING_TIMEOUT_SECONDS."""
        try:
            with pymongo.timeout(PING_TIMEOUT_SECONDS):
                await self._client.admin.command("ping")
        except PyMongoError:
            return False
        return True

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="database monitor")

    async def stop(self) -> None:
        """Stop watching (no restart happens after this) and close the monitor's connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._client.close()

    async def _watch(self) -> None:
        while True:
            try:
                await self._check()
            except Exception:  # the watch must outlive any one failure, or supervision silently ends
                log.exception("database monitor: check failed")
            await asyncio.sleep(POLL_SECONDS)

    async def _check(self) -> None:
        code = None if self._embedded is None else self._embedded.exit_code()
        if code is not None:
            self._mark_down(f"the embedded database exited with code {code}")
            await self._restart()
        elif await self.ping():
            self._mark_up()
        else:
            self._mark_down(f"the database did not answer a ping within {PING_TIMEOUT_SECONDS} s")

    def _mark_down(self, reason: str) -> None:
        if self._down.is_set():
            return
        self._down.set()
        self._down_since = time.monotonic()
        log.error("database down: %s; answering 503 until it is back", reason)

    def _mark_up(self) -> None:
        if not self._down.is_set():
            if time.monotonic() - self._up_since > STABLE_SECONDS:
                self._failures = 0
            return
        self._down.clear()
        self._up_since = time.monotonic()
        log.warning("database up again after %.1f s", self._up_since - self._down_since)

    async def _restart(self) -> None:
        """Start the embedded database again until it answers, waiting longer after each failure."""
        assert self._embedded is not None
        while True:
            delay = RESTART_DELAYS_SECONDS[min(self._failures, len(RESTART_DELAYS_SECONDS) - 1)]
            self._failures += 1
            if delay:
                log.warning("restarting the embedded database in %.0f s", delay)
                await asyncio.sleep(delay)
            log.warning(
                "restarting the embedded database on %s (attempt %d); its log: %s",
                self._embedded.uri,
                self._failures,
                self._embedded.storage_path / "secantus.log",
            )
            try:
                self._embedded.respawn()  # from the event loop's thread, which lives as long as the server
            except OSError:
                log.exception("the embedded database could not be started")
                continue
            if await self._answers():
                self._mark_up()
                return

    async def _answers(self) -> bool:
        """Wait for the restarted database to answer; False if it exits or stays silent."""
        assert self._embedded is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            code = self._embedded.exit_code()
            if code is not None:
                log.error("the restarted embedded database exited with code %d", code)
                return False
            if await self.ping():
                return True
            await asyncio.sleep(0.1)
        log.error("the restarted embedded database did not answer within %.0f s", STARTUP_TIMEOUT_SECONDS)
        await asyncio.to_thread(self._embedded.stop_process)
        return False
