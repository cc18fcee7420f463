"""The resource types this server stores, and which of them the API may write."""

PATIENT = "Patient"
DOCUMENT_REFERENCE = "DocumentReference"
CONSENT = "Consent"
BINARY = "Binary"
LIST = "List"
AUDIT_EVENT = "AuditEvent"

SUPPORTED_TYPES: tuple[str, ...] = (PATIENT, DOCUMENT_REFERENCE, CONSENT, BINARY, LIST, AUDIT_EVENT)
"""Every type with a collection, a CapabilityStatement entry and routes. List holds the IHE MHD
SubmissionSets and Folders (ITI-65, ITI-66)."""

CLIENT_WRITABLE_TYPES: frozenset[str] = frozenset({PATIENT, DOCUMENT_REFERENCE, CONSENT, BINARY, LIST})
"""AuditEvent is written by the server only (append-only through the API: 405)."""

REACHED_THROUGH_DOCUMENTS: frozenset[str] = frozenset({BINARY})
"""Document content: read (ITI-68), written and versioned, but never searched, listed in history or
exported, because its visibility is decided by the DocumentReferences that point to it."""
