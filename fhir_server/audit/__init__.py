"""IHE BALP audit trail: pure AuditEvent builders, the tamper-evident hash chain, the sink, verification."""

from fhir_server.audit.balp import InteractionFacts, build_audit_events
from fhir_server.audit.chain import ChainLink, Finding, Problem, link, verify_chain
from fhir_server.audit.sink import AuditChainConflict, AuditSink, AuditUnavailable, MongoAuditSink
from fhir_server.audit.verify import VerificationReport, run_verify, verify_audit_chains

__all__ = [
    "AuditChainConflict",
    "AuditSink",
    "AuditUnavailable",
    "ChainLink",
    "Finding",
    "InteractionFacts",
    "MongoAuditSink",
    "Problem",
    "VerificationReport",
    "build_audit_events",
    "link",
    "run_verify",
    "verify_audit_chains",
    "verify_chain",
]
