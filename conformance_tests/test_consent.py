"""The patient's consent decides every read and search (docs/consent.md, STANDARDS §1–2, §5.2), as scenarios:
grant, deny, block, mask and unmask, read-only profession, revoke, break-the-glass and its refusal,
the identity lookup. Each scenario builds its own record through the API; the grants and denials it
adds are the patient's own Consents.
"""

from __future__ import annotations

from typing import Any

import pytest
from conformance_harness import (
    A07,
    ACT_REASON,
    CONFIDENTIALITY,
    INS_NIR_TEST,
    Fhir,
    Record,
    actor,
    document_resource,
    ids,
)

MASKED = {"coding": [{"system": A07, "code": "MASQUE_PS"}]}
NORMAL = {"coding": [{"system": CONFIDENTIALITY, "code": "N"}]}


def _sees(fhir: Fhir, role: str, record: Record, document: dict[str, Any]) -> bool:
    """Whether `role` can both read the document and find it by a search of the patient's documents;
    a hidden document must be neither readable (404, existence not revealed) nor found."""
    read = fhir.get(f"DocumentReference/{document['id']}", who=role)
    assert read.status_code in (200, 404), f"{role} read: {read.status_code} {read.text[:300]}"
    bundle = fhir.search("DocumentReference", [("patient", record.reference), ("_count", "100")], who=role)
    found = document["id"] in ids(bundle)
    assert found == (read.status_code == 200), f"{role}: read {read.status_code} but found in search: {found}"
    if not found:
        assert bundle.get("total", 0) == len(ids(bundle)) or bundle.get("total") is None
    return found


def _revoke(record: Record, consent_id: str) -> None:
    response = record.as_patient(
        "PATCH",
        f"Consent/{consent_id}",
        json_body=[{"op": "replace", "path": "/status", "value": "inactive"}],
        content_type="application/json-patch+json",
    )
    assert response.status_code == 200, f"the patient revokes Consent/{consent_id}: {response.text[:300]}"


def _opt_out(record: Record) -> str:
    """The patient refuses every professional (a root deny naming no actor)."""
    return record.consent({"type": "deny"})


def test_granted_gp_reads_and_finds_the_documents(fhir: Fhir, record: Record) -> None:
    """A professional the patient's Consent permits reads and finds the record's documents."""
    document = record.document()
    assert _sees(fhir, "gp", record, document)


def test_professional_without_consent_sees_nothing_under_opt_in(
    fhir: Fhir, record: Record, consent_default: str
) -> None:
    """With the opt-in default, a professional no Consent names can neither read nor find the documents
    (404 on read: existence is not revealed)."""
    if consent_default != "deny":
        pytest.skip("the server's default policy is permit (opt-out)")
    document = record.document()
    assert not _sees(fhir, "stranger", record, document)


def test_opt_out_hides_the_record_from_every_professional_but_the_author(fhir: Fhir, record: Record) -> None:
    """A patient's denial (root deny) hides her documents from every professional, whatever the default
    and other grants (deny wins); the document's author still sees it; the patient still sees it."""
    document = record.document()
    record.grant("specialist")
    assert _sees(fhir, "specialist", record, document)
    _opt_out(record)
    assert not _sees(fhir, "specialist", record, document)
    assert _sees(fhir, "gp", record, document)
    assert record.as_patient("GET", f"DocumentReference/{document['id']}").status_code == 200


def test_blocked_professional_is_denied_despite_a_grant(fhir: Fhir, record: Record) -> None:
    """A professional the patient blocks (deny naming the actor) sees nothing, even with a grant; the
    block applies to the very next request and does not affect others."""
    document = record.document()
    record.grant("specialist")
    assert _sees(fhir, "specialist", record, document)
    record.consent({"type": "deny", "actor": [actor("specialist")]})
    assert not _sees(fhir, "specialist", record, document)
    assert _sees(fhir, "gp", record, document)


def test_professional_named_by_national_identifier_is_granted(fhir: Fhir, record: Record) -> None:
    """A Consent may name the professional by national identifier (IDNPS) instead of a reference."""
    document = record.document()
    identifier = {"system": "urn:oid:1.2.250.1.71.4.2.1", "value": "810002345678"}
    record.consent(
        {
            "type": "deny",
            "provision": [
                {
                    "type": "permit",
                    "actor": [
                        {
                            "role": actor("specialist")["role"],
                            "reference": {"type": "Practitioner", "identifier": identifier},
                        }
                    ],
                }
            ],
        }
    )
    assert _sees(fhir, "specialist", record, document)
    assert not _sees(fhir, "stranger", record, document)


def test_masked_document_is_hidden_from_professionals_but_its_author_and_the_patient(
    fhir: Fhir, record: Record
) -> None:
    """DMP masking: the patient's JSON Patch setting `MASQUE_PS` hides the document from every professional
    but its author; unmasking (v3-Confidentiality N) shows it again."""
    document = record.document(labels=[(CONFIDENTIALITY, "N")])
    other = record.document()
    record.grant("specialist")
    assert _sees(fhir, "specialist", record, document)
    path = f"DocumentReference/{document['id']}"
    mask = record.as_patient(
        "PATCH",
        path,
        json_body=[{"op": "replace", "path": "/securityLabel/0", "value": MASKED}],
        content_type="application/json-patch+json",
    )
    assert mask.status_code == 200, mask.text[:300]
    assert not _sees(fhir, "specialist", record, document)
    assert _sees(fhir, "specialist", record, other)
    history = fhir.get(f"{path}/_history", who="specialist")
    assert history.status_code == 404 or not history.json().get("entry"), "earlier versions leak in history"
    assert fhir.get(f"{path}/_history/1", who="specialist").status_code == 404, (
        "vread shows the unmasked version"
    )
    assert _sees(fhir, "gp", record, document)
    assert record.as_patient("GET", path).status_code == 200
    unmask = record.as_patient(
        "PATCH",
        path,
        json_body=[{"op": "replace", "path": "/securityLabel/0", "value": NORMAL}],
        content_type="application/json-patch+json",
    )
    assert unmask.status_code == 200, unmask.text[:300]
    assert _sees(fhir, "specialist", record, document)


def test_consent_on_a_confidentiality_level_is_a_high_water_mark(fhir: Fhir, record: Record) -> None:
    """A provision on a confidentiality level covers that level and below: "deny, except permit N" shows
    the normal documents and hides the restricted ones."""
    restricted = record.document(labels=[(CONFIDENTIALITY, "R")])
    normal = record.document(labels=[(CONFIDENTIALITY, "N")])
    record.consent(
        {
            "type": "deny",
            "actor": [actor("specialist")],
            "provision": [{"type": "permit", "securityLabel": [{"system": CONFIDENTIALITY, "code": "N"}]}],
        }
    )
    assert _sees(fhir, "specialist", record, normal)
    assert not _sees(fhir, "specialist", record, restricted)


def test_osteopath_reads_but_never_writes(fhir: Fhir, record: Record) -> None:
    """A profession limited by law to reading (ostéopathe, TRE_R95 71) gets at most `access`, even when
    the Consent grants every action: create, update and patch are refused (403)."""
    document = record.document()
    record.grant("osteopath")
    assert _sees(fhir, "osteopath", record, document)
    path = f"DocumentReference/{document['id']}"
    new = document_resource(record.patient_id, author="Practitioner/conf-osteo-bernard")
    assert fhir.post("DocumentReference", new, who="osteopath").status_code == 403
    assert fhir.put(path, {**document, "description": "modifié"}, who="osteopath").status_code == 403
    patch = [{"op": "replace", "path": "/description", "value": "modifié"}]
    assert fhir.patch(path, patch, who="osteopath").status_code == 403


def test_revoking_a_block_restores_access_on_the_next_request(fhir: Fhir, record: Record) -> None:
    """Revocation is a status change (inactive): a revoked Consent stops applying at the next request."""
    document = record.document()
    record.grant("specialist")
    block = record.consent({"type": "deny", "actor": [actor("specialist")]})
    assert not _sees(fhir, "specialist", record, document)
    _revoke(record, block)
    assert _sees(fhir, "specialist", record, document)


def test_revoking_a_grant_ends_access_under_opt_in(fhir: Fhir, record: Record, consent_default: str) -> None:
    """With the opt-in default, revoking the osteopath's grant ends her access on the next request."""
    if consent_default != "deny":
        pytest.skip("the server's default policy is permit (opt-out)")
    document = record.document()
    grant = record.grant("osteopath", action=[{"coding": [{"code": "access"}]}])
    assert _sees(fhir, "osteopath", record, document)
    _revoke(record, grant)
    assert not _sees(fhir, "osteopath", record, document)


def test_expired_consent_does_not_apply(fhir: Fhir, record: Record) -> None:
    """A Consent whose provision.period has ended does not apply."""
    document = record.document()
    record.grant("specialist")
    record.consent({"type": "deny", "actor": [actor("specialist")], "period": {"end": "2020-01-01"}})
    assert _sees(fhir, "specialist", record, document)


def test_break_the_glass_reads_despite_a_denial_but_never_writes(fhir: Fhir, record: Record) -> None:
    """Break-the-glass: purpose BTG from an authorised profession (médecin) reads despite the patient's
    denial; the same physician without BTG does not; BTG never permits writing."""
    document = record.document()
    _opt_out(record)
    assert not _sees(fhir, "emergency", record, document)
    assert _sees(fhir, "emergency_btg", record, document)
    path = f"DocumentReference/{document['id']}"
    response = fhir.put(path, {**document, "description": "modifié en urgence"}, who="emergency_btg")
    assert response.status_code in (403, 404)


def test_break_the_glass_needs_an_authorised_profession(fhir: Fhir, record: Record) -> None:
    """Purpose BTG from a profession not allowed to break the glass (infirmier) reads nothing."""
    document = record.document()
    _opt_out(record)
    assert not _sees(fhir, "nurse_btg", record, document)


def test_patient_can_refuse_break_the_glass(fhir: Fhir, record: Record) -> None:
    """A provision that explicitly denies the BTG purpose refuses emergency access."""
    document = record.document()
    _opt_out(record)
    record.consent({"type": "deny", "purpose": [{"system": ACT_REASON, "code": "BTG"}]})
    assert not _sees(fhir, "emergency_btg", record, document)


def test_professional_without_consent_finds_a_patient_only_by_exact_identifier(
    fhir: Fhir, record: Record, consent_default: str
) -> None:
    """Identity: a professional with no permitting Consent finds the Patient only by an exact
    `identifier=system|value` search (the DMP existence check); read and other searches show nothing."""
    if consent_default != "deny":
        pytest.skip("the server's default policy is permit (opt-out)")
    nir = record.patient["identifier"][0]["value"]
    by_identifier = fhir.search("Patient", [("identifier", f"{INS_NIR_TEST}|{nir}")], who="stranger")
    assert ids(by_identifier) == {record.patient_id}
    assert fhir.get(record.reference, who="stranger").status_code == 404
    family = record.patient["name"][0]["family"]
    assert not ids(fhir.search("Patient", [("family", family)], who="stranger"))


def test_patient_sees_her_record_and_manages_her_consents(fhir: Fhir, record: Record) -> None:
    """A patient token reads its own Patient, documents and Consents; another patient's are hidden."""
    document = record.document()
    assert record.as_patient("GET", record.reference).status_code == 200
    assert record.as_patient("GET", f"DocumentReference/{document['id']}").status_code == 200
    consents = record.as_patient("GET", "Consent", params={"patient": record.reference}).json()
    assert set(record.consents) <= ids(consents)
    other = Record(fhir)
    assert record.as_patient("GET", other.reference).status_code in (403, 404)
