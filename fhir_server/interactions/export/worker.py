"""The export worker: an asyncio task per server process that claims and runs `$export` jobs.

It claims pending jobs with a lease held in MongoDB (storage/exports.py), so a job survives a
restart (another process claims it once the lease lapses, or at once after a graceful stop) and
runs on one instance at a time; each claimed job is run by export/runner.py. Expired and cancelled
jobs are deleted here.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from datetime import datetime, timedelta

from pymongo.errors import PyMongoError

from fhir_server.fhir.errors import FhirError
from fhir_server.fhir.instants import now_utc
from fhir_server.interactions.export.runner import Runner
from fhir_server.interactions.services import Services
from fhir_server.storage.exports import ExportJob, JobStatus, LeaseLost

STOP_SECONDS = 5.0
log = logging.getLogger("fhir_server.export")


class ExportWorker:
    """Claims and runs export jobs in this process; deletes expired and cancelled ones."""

    def __init__(
        self,
        services: Services,
        *,
        lease: timedelta = timedelta(seconds=30),
        poll_seconds: float = 1.0,
        retention: timedelta = timedelta(hours=1),
        part_bytes: int = 64 * 1024 * 1024,
        concurrency: int = 2,
    ) -> None:
        self.services = services
        self.store = services.repository.exports
        self.owner = uuid.uuid4().hex
        self.lease = lease
        self.retention = retention
        self.part_bytes = part_bytes
        self._poll_seconds = poll_seconds
        self._concurrency = concurrency
        self._wake = asyncio.Event()
        self._indexed = False
        self._indexing = asyncio.Lock()
        self._loop_task: asyncio.Task[None] | None = None
        self._running: dict[str, asyncio.Task[None]] = {}

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._loop(), name="export-worker")

    async def stop(self) -> None:
        """Stop claiming, stop the running jobs and give their leases back for another instance."""
        tasks = [task for task in [self._loop_task, *self._running.values()] if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded: a task stuck in a database call that ignores its cancellation must not hold the
            # server's (or a test's) shutdown; its lease lapses on its own.
            done, pending = await asyncio.wait(tasks, timeout=STOP_SECONDS)
            for task in done:
                if not task.cancelled():
                    task.exception()  # retrieved: a failure was already recorded by the job
            for task in pending:
                log.warning("export worker: %s did not stop within %.0f s", task.get_name(), STOP_SECONDS)
        for job_id in list(self._running):
            try:
                await self.store.release(job_id, self.owner)
            except PyMongoError:
                log.warning("export job %s: lease not released, it lapses on its own", job_id)
        self._running.clear()
        self._loop_task = None

    def wake(self) -> None:
        self._wake.set()

    async def ready(self) -> None:
        """Create the job collections and indexes once, before any job is stored: the embedded
        database may deadlock when one request creates a collection by inserting into it while
        another creates it with its indexes."""
        async with self._indexing:
            if not self._indexed:
                await self.store.ensure_indexes()
                self._indexed = True

    async def _loop(self) -> None:
        await self.ready()
        while True:
            try:
                await self._tick()
            except PyMongoError:
                log.exception("export worker: database unavailable, retrying")
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 a cancellation that races wait_for's
                # timeout comes out as TimeoutError, and the worker would never stop.
                async with asyncio.timeout(self._poll_seconds):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    async def _tick(self) -> None:
        now = now_utc()
        for job_id in await self.store.lapsed(now):
            if job_id not in self._running:
                await self.store.delete(job_id)
        while len(self._running) < self._concurrency:
            job = await self.store.claim(self.owner, now=now, lease=self.lease, running=list(self._running))
            if job is None:
                return
            task = asyncio.create_task(self._run(job), name=f"export-{job.id}")
            self._running[job.id] = task
            task.add_done_callback(functools.partial(self._finished, job.id))

    def _finished(self, job_id: str, _task: asyncio.Task[None]) -> None:
        self._running.pop(job_id, None)
        self._wake.set()

    async def _run(self, job: ExportJob) -> None:
        runner = Runner(self, job)
        try:
            await runner.run()
        except LeaseLost:
            log.info("export job %s: stopped (cancelled, expired or taken over)", job.id)
            await runner.discard_partial()
        except Exception as error:  # the task boundary: record the failure for the client's next poll
            log.exception("export job %s failed", job.id)
            await runner.discard_partial()
            message = error.message if isinstance(error, FhirError) else f"{type(error).__name__}"
            try:
                await self.store.update(
                    job.id,
                    self.owner,
                    {"$set": {"status": str(JobStatus.FAILED), "error": message, "expires": self.expiry()}},
                )
            except (LeaseLost, PyMongoError):
                log.warning("export job %s: failure not recorded", job.id)

    def expiry(self) -> datetime:
        """When a job finishing now expires (its files deleted)."""
        return now_utc() + self.retention
