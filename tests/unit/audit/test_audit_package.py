"""The audit package's public API (STYLE §7: `__all__` in each package's `__init__.py`)."""

from __future__ import annotations

import fhir_server.audit as audit
from fhir_server.audit import balp, chain, sink, verify


def test_package_exports_resolve() -> None:
    for name in audit.__all__:
        assert hasattr(audit, name), name


def test_package_exports_the_pipeline_and_cli_entry_points() -> None:
    assert {
        "AuditSink",
        "AuditUnavailable",
        "InteractionFacts",
        "MongoAuditSink",
        "build_audit_events",
        "run_verify",
        "verify_audit_chains",
    } <= set(audit.__all__)


def test_module_exports_resolve() -> None:
    for module in (balp, chain, sink, verify):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_no_null_sink_is_offered_to_production_code() -> None:
    names = {name.lower() for module in (audit, balp, chain, sink, verify) for name in dir(module)}
    assert not any("null" in name for name in names)
