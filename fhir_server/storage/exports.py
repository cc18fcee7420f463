"""Bulk export job state and files, in MongoDB, so that any server instance can serve or resume a job.

https://hl7.org/fhir/uv/bulkdata/export.html

- `_export_jobs`: one document per job: what was asked (level, types, `_since`, `_typeFilter`,
  patients), who asked (the verified token claims, so consent is decided for the same actor after a
  restart), the status, a lease (`owner`, `lease`) and the finished files. A worker claims a job
  whose lease has lapsed with one atomic `find_one_and_update`, renews the lease while it runs, and
  every write it makes to the job is conditional on still holding it, so two instances never run
  the same job and a cancelled job stops at the runner's next renewal.
- GridFS bucket `export`: the NDJSON files, each with `metadata.job`. A file being written is named
  in the job (`writing`) before its first chunk, so a runner that dies leaves no file unaccounted
  for: the next owner (or the cleaner) deletes it, and that type is rewritten from its start. Files
  are written chunk by chunk (`FileWriter`, the GridFS layout): the driver's own writer buffers up to
  48 MB of chunks before inserting them, which would make memory grow with the export.
- `_export_patients`: the patients whose data went into a job's files (one document per job and
  patient), for the per-patient AuditEvents at completion without holding them in memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from bson import Binary, ObjectId
from gridfs import AsyncGridFSBucket, NoFile
from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

JOBS_COLLECTION = "_export_jobs"
PATIENTS_COLLECTION = "_export_patients"
BUCKET = "export"


class JobStatus(StrEnum):
    ACCEPTED = "accepted"
    RUNNING = "in-progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


PENDING = (JobStatus.ACCEPTED, JobStatus.RUNNING)


@dataclass(frozen=True)
class OutputFile:
    resource_type: str
    name: str
    file_id: ObjectId
    count: int

    def to_document(self) -> dict[str, Any]:
        return {"type": self.resource_type, "name": self.name, "file": self.file_id, "count": self.count}

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> OutputFile:
        return cls(document["type"], document["name"], document["file"], int(document["count"]))


@dataclass(frozen=True)
class ExportJob:
    """One job as stored: the request, the requester and where it stands."""

    id: str
    status: JobStatus
    client_id: str
    claims: Mapping[str, Any]
    client_address: str | None
    request_url: str
    request_id: str
    level: str
    types: tuple[str, ...]
    since: datetime | None
    type_filters: Mapping[str, tuple[str, ...]]
    patients: tuple[str, ...] | None
    group: str | None
    transaction_time: datetime
    created: datetime
    outputs: tuple[OutputFile, ...] = ()
    done_types: tuple[str, ...] = ()
    writing: ObjectId | None = None
    exported: int = 0
    estimated: int = 0
    current_type: str | None = None
    error: str | None = None
    expires: datetime | None = None

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> ExportJob:
        patients = document.get("patients")
        return cls(
            id=document["_id"],
            status=JobStatus(document["status"]),
            client_id=document["client_id"],
            claims=document["claims"],
            client_address=document.get("client_address"),
            request_url=document["request_url"],
            request_id=document["request_id"],
            level=document["level"],
            types=tuple(document["types"]),
            since=document.get("since"),
            type_filters={key: tuple(value) for key, value in (document.get("type_filters") or {}).items()},
            patients=None if patients is None else tuple(patients),
            group=document.get("group"),
            transaction_time=document["transaction_time"],
            created=document["created"],
            outputs=tuple(OutputFile.from_document(item) for item in document.get("outputs") or ()),
            done_types=tuple(document.get("done_types") or ()),
            writing=document.get("writing"),
            exported=int(document.get("exported") or 0),
            estimated=int(document.get("estimated") or 0),
            current_type=document.get("current_type"),
            error=document.get("error"),
            expires=document.get("expires"),
        )

    def to_document(self) -> dict[str, Any]:
        return {
            "_id": self.id,
            "status": str(self.status),
            "client_id": self.client_id,
            "claims": dict(self.claims),
            "client_address": self.client_address,
            "request_url": self.request_url,
            "request_id": self.request_id,
            "level": self.level,
            "types": list(self.types),
            "since": self.since,
            "type_filters": {key: list(value) for key, value in self.type_filters.items()},
            "patients": None if self.patients is None else list(self.patients),
            "group": self.group,
            "transaction_time": self.transaction_time,
            "created": self.created,
            "outputs": [item.to_document() for item in self.outputs],
            "done_types": list(self.done_types),
            "writing": self.writing,
            "exported": self.exported,
            "estimated": self.estimated,
            "current_type": self.current_type,
            "error": self.error,
            "expires": self.expires,
            "owner": None,
            "lease": None,
        }


CHUNK_BYTES = 255 * 1024
"""The GridFS default chunk size."""


class FileWriter:
    """One GridFS file, one chunk insert at a time: memory holds at most one chunk."""

    def __init__(
        self, database: AsyncDatabase[dict[str, Any]], file_id: ObjectId, name: str, job_id: str
    ) -> None:
        self.file_id = file_id
        self._files = database[f"{BUCKET}.files"]
        self._chunks = database[f"{BUCKET}.chunks"]
        self._name = name
        self._job_id = job_id
        self._buffer = bytearray()
        self._number = 0
        self._length = 0

    async def write(self, data: bytes) -> None:
        self._buffer += data
        self._length += len(data)
        while len(self._buffer) >= CHUNK_BYTES:
            await self._chunk(bytes(self._buffer[:CHUNK_BYTES]))
            del self._buffer[:CHUNK_BYTES]

    async def _chunk(self, data: bytes) -> None:
        await self._chunks.insert_one({"files_id": self.file_id, "n": self._number, "data": Binary(data)})
        self._number += 1

    async def close(self, *, now: datetime) -> None:
        if self._buffer:
            await self._chunk(bytes(self._buffer))
            self._buffer.clear()
        await self._files.insert_one(
            {
                "_id": self.file_id,
                "length": self._length,
                "chunkSize": CHUNK_BYTES,
                "uploadDate": now,
                "filename": self._name,
                "metadata": {"job": self._job_id},
            }
        )

    async def abort(self) -> None:
        await self._chunks.delete_many({"files_id": self.file_id})


class LeaseLost(Exception):
    """The job was cancelled, expired or claimed by another instance: its runner must stop."""


class JobStore:
    def __init__(self, database: AsyncDatabase[dict[str, Any]]) -> None:
        self._database = database
        self._jobs = database[JOBS_COLLECTION]
        self._patients = database[PATIENTS_COLLECTION]
        self._files = database[f"{BUCKET}.files"]
        self._bucket = AsyncGridFSBucket(database, bucket_name=BUCKET)

    async def ensure_indexes(self) -> None:
        await self._jobs.create_index([("status", ASCENDING), ("lease", ASCENDING)])
        await self._jobs.create_index([("expires", ASCENDING)])
        await self._patients.create_index([("job", ASCENDING)])
        await self._files.create_index([("metadata.job", ASCENDING)])
        await self._database[f"{BUCKET}.chunks"].create_index(
            [("files_id", ASCENDING), ("n", ASCENDING)], unique=True
        )

    async def create(self, job: ExportJob) -> None:
        await self._jobs.insert_one(job.to_document())

    async def get(self, job_id: str) -> ExportJob | None:
        found = await self._jobs.find_one({"_id": job_id})
        return None if found is None else ExportJob.from_document(found)

    async def claim(
        self, owner: str, *, now: datetime, lease: timedelta, running: Sequence[str] = ()
    ) -> ExportJob | None:
        """Take one pending job whose lease has lapsed (or was never taken), atomically; never one of
        `running` (this worker's own, whatever their lease says)."""
        found = await self._jobs.find_one_and_update(
            {
                "_id": {"$nin": list(running)},
                "status": {"$in": [str(status) for status in PENDING]},
                "$or": [{"lease": None}, {"lease": {"$lt": now}}],
            },
            {"$set": {"owner": owner, "lease": now + lease, "status": str(JobStatus.RUNNING)}},
            sort=[("created", ASCENDING)],
            return_document=ReturnDocument.AFTER,
        )
        return None if found is None else ExportJob.from_document(found)

    async def update(self, job_id: str, owner: str, changes: Mapping[str, Any]) -> None:
        """Apply `changes` (an update document) while `owner` holds the running job, else LeaseLost."""
        result = await self._jobs.update_one(
            {"_id": job_id, "owner": owner, "status": str(JobStatus.RUNNING)}, changes
        )
        if result.matched_count != 1:
            raise LeaseLost(job_id)

    async def release(self, job_id: str, owner: str) -> None:
        """Give the lease back (graceful stop): another instance may resume the job at once."""
        await self._jobs.update_one({"_id": job_id, "owner": owner}, {"$set": {"owner": None, "lease": None}})

    async def cancel(self, job_id: str, *, now: datetime) -> None:
        await self._jobs.update_one(
            {"_id": job_id},
            {"$set": {"status": str(JobStatus.CANCELLED), "owner": None, "lease": None, "expires": now}},
        )

    async def lapsed(self, now: datetime) -> list[str]:
        """Jobs to delete with their files: cancelled ones, and any whose files have expired."""
        cursor = self._jobs.find(
            {"$or": [{"status": str(JobStatus.CANCELLED)}, {"expires": {"$lt": now}}]}, projection={"_id": 1}
        )
        return [item["_id"] async for item in cursor]

    async def delete(self, job_id: str) -> None:
        job = await self._jobs.find_one({"_id": job_id}, projection={"writing": 1})
        if job is not None and job.get("writing") is not None:
            await self.delete_file(job["writing"])
        async for item in self._files.find({"metadata.job": job_id}, projection={"_id": 1}):
            await self.delete_file(item["_id"])
        await self._patients.delete_many({"job": job_id})
        await self._jobs.delete_one({"_id": job_id})

    # -- files ----------------------------------------------------------------------------------

    def open_file(self, job_id: str, name: str) -> FileWriter:
        return FileWriter(self._database, ObjectId(), name, job_id)

    async def delete_file(self, file_id: ObjectId) -> None:
        try:
            await self._bucket.delete(file_id)
        except NoFile:
            return  # chunks of an unfinished upload are deleted all the same

    async def read_file(self, file_id: ObjectId) -> AsyncIterator[bytes]:
        stream = await self._bucket.open_download_stream(file_id)
        try:
            while chunk := await stream.readchunk():
                yield chunk
        finally:
            await stream.close()

    # -- patients -------------------------------------------------------------------------------

    async def add_patients(self, job_id: str, patients: Iterable[str]) -> None:
        documents = [
            {"_id": f"{job_id}|{patient}", "job": job_id, "patient": patient} for patient in patients
        ]
        if not documents:
            return
        try:
            await self._patients.insert_many(documents, ordered=False)
        except BulkWriteError as error:
            if any(item.get("code") != 11000 for item in error.details.get("writeErrors", [])):
                raise

    async def patients(self, job_id: str) -> AsyncIterator[str]:
        async for item in self._patients.find({"job": job_id}, projection={"patient": 1}):
            yield item["patient"]


__all__ = [
    "BUCKET",
    "JOBS_COLLECTION",
    "PENDING",
    "ExportJob",
    "FileWriter",
    "JobStatus",
    "JobStore",
    "LeaseLost",
    "OutputFile",
]
