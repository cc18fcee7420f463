"""`fhir-server export`: a Bulk Data client — kick-off, poll with a progress bar, download the files.

https://hl7.org/fhir/uv/bulkdata/export.html (the async request pattern, the completion manifest)
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx

BAR_WIDTH = 30
_PERCENT = re.compile(r"\s*(\d+)%")


@dataclass(frozen=True)
class ExportRequest:
    level: str
    """`system`, `patient` or `group`."""
    group: str | None = None
    types: Sequence[str] = ()
    since: str | None = None
    type_filters: Sequence[str] = ()

    def path(self) -> str:
        if self.level == "group":
            if not self.group:
                raise ValueError("a Group-level export needs a group id")
            return f"/Group/{self.group}/$export"
        return "/Patient/$export" if self.level == "patient" else "/$export"

    def params(self) -> list[tuple[str, str]]:
        params = [("_outputFormat", "application/fhir+ndjson")]
        if self.types:
            params.append(("_type", ",".join(self.types)))
        if self.since:
            params.append(("_since", self.since))
        params.extend(("_typeFilter", query) for query in self.type_filters)
        return params


class ExportFailed(Exception):
    pass


def progress_line(progress: str) -> str:
    """`[#####     ] 42% (...)` from an `X-Progress` header that starts with a percentage."""
    found = _PERCENT.match(progress)
    percent = min(100, int(found.group(1))) if found else 0
    return f"[{'#' * (percent * BAR_WIDTH // 100):<{BAR_WIDTH}}] {progress[:70]:<70}"


def run_export(
    client: httpx.Client,
    base_url: str,
    request: ExportRequest,
    *,
    token: str,
    output: Path,
    progress: TextIO,
    max_wait: float = 2.0,
) -> dict[str, Any]:
    """Run one export; the files land in `output` (and `manifest.json`); returns the manifest."""
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}
    kicked = client.get(
        base_url.rstrip("/") + request.path(),
        params=tuple(request.params()),
        headers={**headers, "Prefer": "respond-async"},
    )
    if kicked.status_code != 202:
        raise ExportFailed(f"kick-off refused: {kicked.status_code} {kicked.text}")
    status_url = kicked.headers["Content-Location"]
    while True:
        polled = client.get(status_url, headers=headers)
        if polled.status_code != 202:
            break
        progress.write("\r" + progress_line(polled.headers.get("X-Progress", "")))
        progress.flush()
        time.sleep(min(float(polled.headers.get("Retry-After") or 1), max_wait))
    if polled.status_code != 200:
        raise ExportFailed(f"export failed: {polled.status_code} {polled.text}")
    progress.write("\r" + progress_line("100% done") + "\n")
    manifest: dict[str, Any] = polled.json()
    output.mkdir(parents=True, exist_ok=True)
    for item in manifest["output"]:
        target = output / str(item["url"]).rsplit("/", 1)[-1]
        with client.stream("GET", item["url"], headers=headers) as response:
            if response.status_code != 200:
                raise ExportFailed(f"download of {item['url']} failed: {response.status_code}")
            with target.open("wb") as file:
                for chunk in response.iter_bytes():
                    file.write(chunk)
    (output / "manifest.json").write_text(polled.text)
    return manifest


__all__ = ["ExportFailed", "ExportRequest", "progress_line", "run_export"]
