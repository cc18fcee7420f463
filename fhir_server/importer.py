"""`fhir-server import FILE...`: seed a server from NDJSON files or Bundles, over its FHIR API.

- NDJSON (`.ndjson`, one resource per line) and `collection` Bundles are sent as `batch` Bundles of up
  to `batch_size` entries: PUT `[type]/[id]` when the resource has an id (create-or-update), else POST.
- `batch` Bundles are sent as they are (each entry succeeds or fails on its own); `transaction`
  Bundles are sent as they are (all or nothing: a refusal refuses every entry, with the server's reason).

A progress bar goes to stderr (plain text, no dependency); the summary counts what was created,
updated or refused, with the reason of each refusal (the OperationOutcome's diagnostics).
https://hl7.org/fhir/R4/http.html#transaction, docs/configuration.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

FHIR_JSON = "application/fhir+json"
BAR_WIDTH = 30


@dataclass(frozen=True)
class Item:
    """One resource to import, or one input line that could not become a resource."""

    source: str
    """`file:line` (NDJSON) or `file#entry` (Bundle): where the user finds it."""
    resource: dict[str, Any] | None
    problem: str = ""


@dataclass(frozen=True)
class Refusal:
    source: str
    target: str
    reason: str


@dataclass
class ImportSummary:
    created: dict[str, int] = field(default_factory=dict)
    updated: dict[str, int] = field(default_factory=dict)
    refused: list[Refusal] = field(default_factory=list)

    def count(self, status: str, resource_type: str) -> None:
        bucket = self.created if status.startswith("201") else self.updated
        bucket[resource_type] = bucket.get(resource_type, 0) + 1

    @property
    def ok(self) -> bool:
        return not self.refused

    def render(self, *, limit: int = 50) -> str:
        def counts(values: Mapping[str, int]) -> str:
            total = sum(values.values())
            detail = ", ".join(f"{name} {number}" for name, number in sorted(values.items()))
            return f"{total}" + (f" ({detail})" if detail else "")

        lines = [
            f"created: {counts(self.created)}",
            f"updated: {counts(self.updated)}",
            f"refused: {len(self.refused)}",
        ]
        lines += [f"  {item.source} {item.target}: {item.reason}" for item in self.refused[:limit]]
        if len(self.refused) > limit:
            lines.append(f"  … and {len(self.refused) - limit} more")
        return "\n".join(lines)


class Progress:
    """`\\r[#####-----] 120/500 name` on a terminal; one line per tenth otherwise (CI logs)."""

    def __init__(self, stream: TextIO, name: str, total: int) -> None:
        self.stream, self.name, self.total, self.done = stream, name, total, 0
        self.terminal = stream.isatty()
        self._last_tenth = -1

    def advance(self, count: int) -> None:
        self.done += count
        share = self.done / self.total if self.total else 1.0
        filled = int(share * BAR_WIDTH)
        line = f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {self.done}/{self.total} {self.name}"
        if self.terminal:
            self.stream.write("\r" + line)
            if self.done >= self.total:
                self.stream.write("\n")
        elif int(share * 10) != self._last_tenth:
            self._last_tenth = int(share * 10)
            self.stream.write(line + "\n")
        self.stream.flush()


def read_ndjson(path: Path) -> list[Item]:
    items = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            source = f"{path.name}:{number}"
            try:
                resource = json.loads(line)
            except ValueError as error:
                items.append(Item(source, None, f"not JSON: {error}"))
                continue
            if not isinstance(resource, dict) or not resource.get("resourceType"):
                items.append(Item(source, None, "not a FHIR resource (no resourceType)"))
            else:
                items.append(Item(source, resource))
    return items


def _entry(resource: Mapping[str, Any]) -> dict[str, Any]:
    resource_type = resource["resourceType"]
    if resource.get("id"):
        return {
            "resource": resource,
            "request": {"method": "PUT", "url": f"{resource_type}/{resource['id']}"},
        }
    return {"resource": resource, "request": {"method": "POST", "url": resource_type}}


def _chunks(items: Sequence[Item], size: int) -> Iterator[Sequence[Item]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _reason(body: Any, status: str | int) -> str:
    """The diagnostics of an OperationOutcome (first two issues), else the HTTP status."""
    if isinstance(body, Mapping) and body.get("resourceType") == "OperationOutcome":
        texts = [
            str(issue.get("diagnostics") or issue.get("code") or "")
            + (f" [{', '.join(issue['expression'])}]" if issue.get("expression") else "")
            for issue in (body.get("issue") or [])[:2]
        ]
        return f"{status}: " + "; ".join(text for text in texts if text)
    return f"HTTP {status}"


def _target(resource: Mapping[str, Any] | None) -> str:
    if not resource:
        return "?"
    return (
        f"{resource.get('resourceType')}/{resource['id']}"
        if resource.get("id")
        else str(resource.get("resourceType"))
    )


class Importer:
    def __init__(
        self, client: httpx.Client, *, base_url: str, token: str, progress: TextIO, batch_size: int = 100
    ) -> None:
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
        self.progress = progress
        self.batch_size = batch_size
        self.summary = ImportSummary()

    def import_files(self, paths: Iterable[Path]) -> ImportSummary:
        for path in paths:
            self.import_file(path)
        return self.summary

    def import_file(self, path: Path) -> None:
        if path.suffix in (".ndjson", ".jsonl"):
            self._send_items(path.name, read_ndjson(path))
            return
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            self.summary.refused.append(Refusal(path.name, "?", f"unreadable: {error}"))
            return
        if not isinstance(document, dict) or not document.get("resourceType"):
            self.summary.refused.append(Refusal(path.name, "?", "not a FHIR resource (no resourceType)"))
        elif document["resourceType"] == "Bundle" and document.get("type") in ("batch", "transaction"):
            self._send_bundle(path.name, document)
        elif document["resourceType"] == "Bundle" and document.get("type") == "collection":
            items = [
                Item(
                    f"{path.name}#{index}",
                    entry.get("resource"),
                    "" if entry.get("resource") else "no resource",
                )
                for index, entry in enumerate(document.get("entry") or [])
            ]
            self._send_items(path.name, items)
        else:
            self._send_items(path.name, [Item(path.name, document)])

    def _send_items(self, name: str, items: Sequence[Item]) -> None:
        bar = Progress(self.progress, name, len(items))
        for chunk in _chunks(items, self.batch_size):
            for item in chunk:
                if item.resource is None:
                    self.summary.refused.append(Refusal(item.source, "?", item.problem))
            sendable = [item for item in chunk if item.resource is not None]
            if sendable:
                bundle = {
                    "resourceType": "Bundle",
                    "type": "batch",
                    "entry": [_entry(i.resource or {}) for i in sendable],
                }
                self._post(bundle, [(item.source, item.resource) for item in sendable])
            bar.advance(len(chunk))

    def _send_bundle(self, name: str, bundle: dict[str, Any]) -> None:
        entries = bundle.get("entry") or []
        bar = Progress(self.progress, name, len(entries))
        self._post(
            bundle, [(f"{name}#{index}", entry.get("resource")) for index, entry in enumerate(entries)]
        )
        bar.advance(len(entries))

    def _post(
        self, bundle: Mapping[str, Any], sources: Sequence[tuple[str, Mapping[str, Any] | None]]
    ) -> None:
        try:
            response = self.client.post(
                self.base_url, content=json.dumps(bundle).encode(), headers=self.headers
            )
        except httpx.HTTPError as error:
            self.summary.refused += [
                Refusal(source, _target(resource), f"not sent: {error}") for source, resource in sources
            ]
            return
        body = response.json() if response.content else {}
        if response.status_code != 200:
            reason = _reason(body, response.status_code)
            self.summary.refused += [
                Refusal(source, _target(resource), reason) for source, resource in sources
            ]
            return
        for (source, resource), entry in zip(sources, body.get("entry") or [], strict=False):
            result = entry.get("response") or {}
            status = str(result.get("status", ""))
            if status[:1] == "2":
                self.summary.count(status, str((resource or {}).get("resourceType") or "?"))
            else:
                self.summary.refused.append(
                    Refusal(source, _target(resource), _reason(result.get("outcome"), status))
                )


def run_import(
    paths: Sequence[Path], *, base_url: str, token: str, progress: TextIO, batch_size: int = 100
) -> ImportSummary:
    with httpx.Client(timeout=120) as client:
        importer = Importer(client, base_url=base_url, token=token, progress=progress, batch_size=batch_size)
        return importer.import_files(paths)
