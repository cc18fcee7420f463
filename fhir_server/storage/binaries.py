"""Binary content: inline in the Binary document when small, in GridFS when large.

https://hl7.org/fhir/R4/binary.html, https://www.mongodb.com/docs/manual/core/gridfs/

Layout. Content up to `INLINE_LIMIT` bytes stays in the resource's `data` (base64), in the Binary
document and its history entry, written in the request's transaction like any resource. Larger
content goes to the GridFS bucket `binary` (`binary.files`, `binary.chunks`, 255 kB chunks, so
past the 16 MB document limit) and the stored resource keeps, instead of `data`, a pointer on the
primitive: `_data.extension[CONTENT_EXTENSION]` with the file id, the size and the SHA-1 (base64).
The pointer is server-owned: one sent by a client is dropped, and a file is only served for the
Binary id recorded in its own metadata, so a forged pointer reaches nothing.

Transactional guarantee. The driver refuses GridFS inside a multi-document transaction, so a
large content is uploaded before the transaction, its file marked `state: pending`; the transaction
that writes the Binary version sets `state: committed` on that file (a plain update in the same
session), so the marker commits, or not, with the Binary document. Afterwards every file still
pending from that request is deleted (`Staging.release`). A process that dies between upload and
release leaves a pending file that no Binary version names: each later large upload first deletes
pending files older than `ORPHAN_AGE` (longer than any transaction may last). Hence: a stored Binary
version always has its complete content; a refused or failed write leaves no file once the request
ends, or, if the process died, until the next large upload after `ORPHAN_AGE`. Committed files are
never deleted: every version in history keeps its content (vread).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId
from gridfs import AsyncGridFSBucket, NoFile
from pymongo import ASCENDING
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from fhir_server.fhir.errors import bad_request

BUCKET = "binary"
FILES = f"{BUCKET}.files"
CHUNKS = f"{BUCKET}.chunks"
INLINE_LIMIT = 256 * 1024
"""Content up to this many bytes is kept inline (one document write); above, it goes to GridFS."""
CONTENT_EXTENSION = "https://fhir-server.example.org/StructureDefinition/binary-content"
PENDING = "pending"
COMMITTED = "committed"
ORPHAN_AGE = timedelta(hours=1)
"""A pending file older than this belongs to no transaction still running (MongoDB's default
transaction lifetime is 60 s)."""


def sha1_base64(data: bytes) -> str:
    """The attachment `hash` of content (R4 Attachment.hash: SHA-1, base64)."""
    return base64.b64encode(hashlib.sha1(data).digest()).decode("ascii")


@dataclass(frozen=True)
class ContentRef:
    """Where a GridFS-held content is, and what it is."""

    file_id: ObjectId
    size: int
    sha1: str

    def extension(self) -> dict[str, Any]:
        return {
            "url": CONTENT_EXTENSION,
            "extension": [
                {"url": "file", "valueId": str(self.file_id)},
                {"url": "size", "valueDecimal": self.size},
                {"url": "hash", "valueBase64Binary": self.sha1},
            ],
        }


def content_ref(resource: Mapping[str, Any]) -> ContentRef | None:
    """The GridFS pointer of a stored Binary, None when its content is inline (or absent)."""
    holder = resource.get("_data")
    if not isinstance(holder, Mapping):
        return None
    for extension in holder.get("extension") or []:
        if extension.get("url") != CONTENT_EXTENSION:
            continue
        parts = {item.get("url"): item for item in extension.get("extension") or []}
        try:
            return ContentRef(
                ObjectId(str(parts["file"]["valueId"])),
                int(parts["size"]["valueDecimal"]),
                str(parts["hash"]["valueBase64Binary"]),
            )
        except (KeyError, TypeError, ValueError, InvalidId):
            return None
    return None


def without_pointer(resource: Mapping[str, Any]) -> dict[str, Any]:
    """The resource without the server's content pointer (other `_data` extensions kept)."""
    body = dict(resource)
    holder = body.pop("_data", None)
    if isinstance(holder, Mapping):
        kept = {key: value for key, value in holder.items() if key != "extension"}
        extensions = [e for e in holder.get("extension") or [] if e.get("url") != CONTENT_EXTENSION]
        if extensions:
            kept["extension"] = extensions
        if kept:
            body["_data"] = kept
    return body


def decode_data(resource: Mapping[str, Any], *, expression: str = "Binary.data") -> bytes:
    """The inline content of a Binary (empty when it has none); 400 when `data` is not base64."""
    data = resource.get("data")
    if not data:
        return b""
    try:
        return base64.b64decode(str(data), validate=True)
    except (binascii.Error, ValueError) as error:
        raise bad_request("Binary.data is not valid base64", expression=(expression,)) from error


class BinaryStore:
    """The GridFS bucket of Binary content, with the pending/committed marker of the module docstring."""

    def __init__(self, database: AsyncDatabase[dict[str, Any]]) -> None:
        self._database = database
        self._bucket = AsyncGridFSBucket(database, bucket_name=BUCKET)
        self._indexed = False

    async def upload(
        self, binary_id: str, chunks: AsyncIterable[bytes], *, content_type: str, now: datetime
    ) -> ContentRef:
        """Stream content into a new pending file for Binary `binary_id`, hashing it on the way."""
        await self._sweep(now)
        digest = hashlib.sha1()
        size = 0
        file_id = ObjectId()
        upload = self._bucket.open_upload_stream_with_id(
            file_id, binary_id, metadata={"state": PENDING, "binary": binary_id, "contentType": content_type}
        )
        try:
            async for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                await upload.write(chunk)
        except BaseException:
            await upload.abort()
            raise
        await upload.close()
        return ContentRef(file_id, size, base64.b64encode(digest.digest()).decode("ascii"))

    async def commit(self, file_ids: list[ObjectId], *, session: AsyncClientSession) -> None:
        """Mark the files committed, inside the transaction that writes the Binary versions naming them."""
        if file_ids:
            await self._database[FILES].update_many(
                {"_id": {"$in": file_ids}, "metadata.state": PENDING},
                {"$set": {"metadata.state": COMMITTED}},
                session=session,
            )

    async def discard_pending(self, file_ids: list[ObjectId]) -> None:
        """Delete those of the files that did not commit (their chunks first go with them)."""
        if not file_ids:
            return
        pending = [
            item["_id"]
            async for item in self._database[FILES].find(
                {"_id": {"$in": file_ids}, "metadata.state": PENDING}, projection={"_id": 1}
            )
        ]
        await self._remove(pending)

    async def _remove(self, file_ids: list[ObjectId]) -> None:
        if file_ids:
            await self._database[FILES].delete_many({"_id": {"$in": file_ids}, "metadata.state": PENDING})
            await self._database[CHUNKS].delete_many({"files_id": {"$in": file_ids}})

    async def _sweep(self, now: datetime) -> None:
        """Delete pending files left by a process that died between upload and release."""
        if not self._indexed:
            await self._database[FILES].create_index(
                [("metadata.state", ASCENDING), ("uploadDate", ASCENDING)]
            )
            self._indexed = True
        cutoff = now.astimezone(UTC) - ORPHAN_AGE
        orphans = [
            item["_id"]
            async for item in self._database[FILES].find(
                {"metadata.state": PENDING, "uploadDate": {"$lt": cutoff}}, projection={"_id": 1}
            )
        ]
        await self._remove(orphans)

    async def chunks(self, ref: ContentRef, *, binary_id: str) -> AsyncIterator[bytes]:
        """The committed content of Binary `binary_id`, chunk by chunk; LookupError when it is not there."""
        try:
            download = await self._bucket.open_download_stream(ref.file_id)
        except NoFile as error:
            raise LookupError(f"no content file {ref.file_id}") from error
        metadata = download.metadata or {}
        if metadata.get("binary") != binary_id or metadata.get("state") != COMMITTED:
            raise LookupError(f"content file {ref.file_id} does not belong to Binary/{binary_id}")
        return _chunks_of(download)

    async def content(self, ref: ContentRef, *, binary_id: str) -> bytes:
        return b"".join([chunk async for chunk in await self.chunks(ref, binary_id=binary_id)])

    def staging(self, now: datetime) -> Staging:
        return Staging(self, now)


async def _chunks_of(download: Any) -> AsyncIterator[bytes]:
    while chunk := await download.readchunk():
        yield chunk


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _prefixed(head: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield head
    async for chunk in rest:
        yield chunk


class Staging:
    """The large contents one request uploads: committed with its transaction, else deleted on exit.

    Use as `async with store.staging(now) as staging:`; `offload` before the transaction, `commit`
    inside it, and leaving the block deletes whatever did not commit.
    """

    def __init__(self, store: BinaryStore, now: datetime) -> None:
        self._store = store
        self._now = now
        self._files: list[ObjectId] = []

    async def __aenter__(self) -> Staging:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self._store.discard_pending(self._files)

    async def offload(self, resource: dict[str, Any], *, content: bytes | None = None) -> None:
        """Drop a client-sent pointer; move content larger than INLINE_LIMIT to a pending GridFS file.

        `content`: the decoded `data` when the caller already has it.
        """
        if resource.get("resourceType") != "Binary":
            return
        cleaned = without_pointer(resource)
        resource.clear()
        resource.update(cleaned)
        data = decode_data(resource) if content is None else content
        if len(data) <= INLINE_LIMIT:
            return
        ref = await self._upload(str(resource["id"]), _once(data), content_type=str(resource["contentType"]))
        del resource["data"]
        resource["_data"] = {**(resource.get("_data") or {})}
        resource["_data"]["extension"] = [*resource["_data"].get("extension", []), ref.extension()]

    async def receive(self, resource: dict[str, Any], chunks: AsyncIterable[bytes]) -> None:
        """Content streamed in (a raw upload): inline when it fits INLINE_LIMIT, else streamed to a
        pending file without ever being held whole in memory."""
        iterator = aiter(chunks)
        head = bytearray()
        async for chunk in iterator:
            head += chunk
            if len(head) > INLINE_LIMIT:
                break
        else:
            resource["data"] = base64.b64encode(bytes(head)).decode("ascii")
            return
        ref = await self._upload(
            str(resource["id"]), _prefixed(bytes(head), iterator), content_type=str(resource["contentType"])
        )
        resource["_data"] = {"extension": [ref.extension()]}

    async def _upload(self, binary_id: str, chunks: AsyncIterable[bytes], *, content_type: str) -> ContentRef:
        ref = await self._store.upload(binary_id, chunks, content_type=content_type, now=self._now)
        self._files.append(ref.file_id)
        return ref

    async def commit(self, session: AsyncClientSession) -> None:
        await self._store.commit(self._files, session=session)
