"""FHIR Bulk Data Access v2 `$export` (system, Patient and Group level) with the async request pattern.

https://hl7.org/fhir/uv/bulkdata/export.html

One module per job, each reaching data only through the guarded repository and its job store:
- request.py: the kick-off's parameters, checked before anything is stored (no I/O);
- kickoff.py: kick-off, status polling and cancel;
- files.py: the completion manifest and the download of its files;
- jobs.py: a job's URLs, and the rule that only its kick-off's client reaches it (404 otherwise);
- worker.py: the per-process worker that claims jobs under a lease;
- runner.py: one job run, type by type, through the caller's consent, then its AuditEvents.

Audit: the kick-off, each poll, cancel and download are audited by the pipeline (operation
`$export`, `$export-poll-status`, `$export-file`); the runner records the completion's AuditEvents.
"""

from fhir_server.interactions.export.files import Download, download
from fhir_server.interactions.export.kickoff import cancel, kick_off, progress_text, status
from fhir_server.interactions.export.request import (
    EXPORT_TYPES,
    GROUP_LEVEL,
    NDJSON,
    PATIENT_LEVEL,
    SYSTEM_LEVEL,
)
from fhir_server.interactions.export.worker import ExportWorker

__all__ = [
    "EXPORT_TYPES",
    "GROUP_LEVEL",
    "NDJSON",
    "PATIENT_LEVEL",
    "SYSTEM_LEVEL",
    "Download",
    "ExportWorker",
    "cancel",
    "download",
    "kick_off",
    "progress_text",
    "status",
]
