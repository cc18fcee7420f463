"""Every interaction leaves an IHE BALP AuditEvent, and the patient lists who accessed her record
(docs/audit.md, STANDARDS §3).
"""

from __future__ import annotations

from typing import Any

from conformance_harness import ACT_REASON, ROLES, Fhir, Record, entries

AUDIT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL = "http://hl7.org/fhir/restful-interaction"


def _log(record: Record, *params: tuple[str, str]) -> list[dict[str, Any]]:
    """The patient's own access log: `AuditEvent?patient=` with a patient token."""
    response = record.as_patient(
        "GET", "AuditEvent", params=[("patient", record.reference), ("_count", "200"), *params]
    )
    assert response.status_code == 200, f"the patient lists her access log: {response.text[:300]}"
    return entries(response.json())


def _by(event: dict[str, Any], role: str) -> bool:
    user = ROLES[role].fhir_user
    return any(
        (agent.get("who") or {}).get("reference", "").endswith(str(user))
        for agent in event.get("agent") or []
    )


def _target(entity: dict[str, Any]) -> str:
    """`Type/id` of an entity's `what` (BALP may name a version: `Type/id/_history/n`)."""
    parts = (entity.get("what") or {}).get("reference", "").split("/_history/")[0].split("/")
    return "/".join(parts[-2:])


def _subtype(event: dict[str, Any]) -> set[str]:
    return {coding.get("code") for coding in event.get("subtype") or []}


def test_patient_lists_who_read_her_documents(fhir: Fhir, record: Record) -> None:
    """The patient's `AuditEvent?patient=` lists the professional's read of her document."""
    document = record.document()
    assert fhir.get(f"DocumentReference/{document['id']}", who="gp").status_code == 200
    reads = [event for event in _log(record) if _by(event, "gp") and "read" in _subtype(event)]
    assert reads, "no AuditEvent of the GP's read in the patient's log"
    assert any(
        _target(entity) == f"DocumentReference/{document['id']}"
        for event in reads
        for entity in event.get("entity") or []
    )


def test_audit_events_follow_the_balp_rest_pattern(fhir: Fhir, record: Record) -> None:
    """Each AuditEvent is a BALP RESTful event: type rest, subtype a restful-interaction code, action,
    outcome, recorded, source observer, a requestor agent, and the patient entity."""
    document = record.document()
    fhir.get(f"DocumentReference/{document['id']}", who="gp")
    events = [event for event in _log(record) if _by(event, "gp")]
    assert events
    for event in events:
        assert event["type"]["system"] == AUDIT_TYPE and event["type"]["code"] == "rest"
        assert any(coding.get("system") == RESTFUL for coding in event.get("subtype") or [])
        assert event["action"] in {"C", "R", "U", "D", "E"}
        assert event["outcome"] in {"0", "4", "8", "12"}
        assert event.get("recorded")
        assert event["source"].get("observer")
        assert any(agent.get("requestor") is True for agent in event["agent"])
        assert any(_target(entity) == record.reference for entity in event.get("entity") or [])


def test_break_the_glass_access_is_flagged_for_the_patient(fhir: Fhir, record: Record) -> None:
    """A break-the-glass read appears in the patient's log with purpose of use BTG."""
    document = record.document()
    record.consent({"type": "deny"})
    assert fhir.get(f"DocumentReference/{document['id']}", who="emergency_btg").status_code == 200
    flagged = [
        event
        for event in _log(record)
        for agent in event.get("agent") or []
        for purpose in agent.get("purposeOfUse") or []
        for coding in purpose.get("coding") or []
        if coding.get("code") == "BTG" and coding.get("system") in (None, ACT_REASON)
    ]
    assert flagged, "the BTG access is not flagged in the patient's log"


def test_refused_interaction_is_audited_as_a_failure(fhir: Fhir, record: Record) -> None:
    """A refused request is audited too, with a failure outcome (4), in the patient's log."""
    document = record.document()
    record.grant("osteopath")
    patch = [{"op": "replace", "path": "/description", "value": "modifié"}]
    assert fhir.patch(f"DocumentReference/{document['id']}", patch, who="osteopath").status_code == 403
    refused = [event for event in _log(record) if _by(event, "osteopath") and event.get("outcome") == "4"]
    assert refused, "the refused patch is not in the patient's log with outcome 4"


def test_access_log_is_searchable_by_subtype_agent_and_outcome(fhir: Fhir, record: Record) -> None:
    """AuditEvent search by `subtype`, `agent`, `outcome` and `date` narrows the log."""
    document = record.document()
    fhir.get(f"DocumentReference/{document['id']}", who="gp")
    reads = _log(record, ("subtype", f"{RESTFUL}|read"))
    assert reads and all("read" in _subtype(event) for event in reads)
    by_gp = _log(record, ("agent", str(ROLES["gp"].fhir_user)))
    assert by_gp and all(_by(event, "gp") for event in by_gp)
    successes = _log(record, ("outcome", "0"), ("date", "ge2020-01-01"))
    assert successes and all(event["outcome"] == "0" for event in successes)


def test_professional_does_not_see_the_access_log_without_consent(fhir: Fhir, record: Record) -> None:
    """AuditEvents are in the patient's compartment: a professional the patient denies does not see them."""
    record.document()
    record.consent(
        {
            "type": "deny",
            "actor": [{"role": {"text": "IRCP"}, "reference": {"reference": ROLES["stranger"].fhir_user}}],
        }
    )
    response = fhir.get("AuditEvent", who="stranger", params={"patient": record.reference})
    assert response.status_code in (200, 403)
    if response.status_code == 200:
        assert not entries(response.json())
