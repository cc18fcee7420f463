"""The Binary rule (consent/binary.py): owner decides, uploader alone reaches an unowned Binary,
ownership is the server's, a reference never transfers it."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from fhir_server.auth.principal import Principal
from fhir_server.auth.scopes import parse_scopes
from fhir_server.consent.binary import (
    UPLOADER_EXTENSION,
    Reference,
    decide_binary,
    may_reference,
    owner_id,
    uploader,
    uploader_of,
    with_ownership,
)
from fhir_server.consent.model import Decision

ALICE = Principal(subject="alice", client_id="ehr", scopes=parse_scopes("user/*.cruds"))
MALLORY = Principal(subject="mallory", client_id="ehr", scopes=parse_scopes("user/*.cruds"))
PLATFORM = Principal(subject="platform", client_id="platform", scopes=parse_scopes("system/*.cruds"))
PERMIT = Decision.allow("consent", consents=("Consent/c1",))
DENY = Decision.deny("default-deny", consents=("Consent/c2",))


def binary(*, owner: str | None = None, by: Principal | None = ALICE) -> dict[str, Any]:
    return with_ownership(
        {"resourceType": "Binary", "id": "b1", "contentType": "text/plain", "data": "eA=="},
        owner=owner,
        uploaded_by=uploader_of(by) if by is not None else None,
    )


def test_an_owned_binary_is_decided_by_its_document() -> None:
    owned = binary(owner="d1")
    assert decide_binary(MALLORY, owned, PERMIT) == PERMIT
    denied = decide_binary(ALICE, owned, DENY)
    assert not denied.permit and denied.consents == DENY.consents


def test_an_owned_binary_whose_document_is_gone_is_reached_by_nobody() -> None:
    assert not decide_binary(ALICE, binary(owner="d1"), None).permit


def test_an_unowned_binary_is_its_uploaders_only() -> None:
    unowned = binary()
    assert decide_binary(ALICE, unowned, None).permit
    assert not decide_binary(MALLORY, unowned, PERMIT).permit
    assert not decide_binary(PLATFORM, unowned, None).permit


def test_a_binary_without_recorded_uploader_or_owner_is_reached_by_nobody() -> None:
    legacy = binary(by=None)
    nobody = Principal(subject="", client_id="", scopes=())
    for principal in (ALICE, PLATFORM, nobody):
        assert not decide_binary(principal, legacy, None).permit


def test_a_deleted_binary_is_reached_by_nobody() -> None:
    assert not decide_binary(ALICE, None, PERMIT).permit


def test_client_ownership_fields_are_replaced_by_the_servers() -> None:
    forged = {
        "resourceType": "Binary",
        "securityContext": {"reference": "DocumentReference/victim"},
        "meta": {
            "extension": [
                {
                    "url": UPLOADER_EXTENSION,
                    "extension": [
                        {"url": "client", "valueString": "ehr"},
                        {"url": "subject", "valueString": "alice"},
                    ],
                }
            ]
        },
    }
    cleaned = with_ownership(forged, owner=None, uploaded_by=uploader_of(MALLORY))
    assert owner_id(cleaned) is None
    assert uploader(cleaned) == ("ehr", "mallory")
    assert owner_id(with_ownership(forged, owner="d9", uploaded_by=None)) == "d9"
    assert uploader(with_ownership(forged, owner="d9", uploaded_by=None)) is None


def test_a_document_references_what_it_owns_claims_or_may_read() -> None:
    assert may_reference(MALLORY, binary(owner="d1"), "d1", DENY) is Reference.OWNED
    assert may_reference(ALICE, binary(), "d2", PERMIT) is Reference.CLAIM
    assert may_reference(MALLORY, binary(owner="d1"), "d2", PERMIT) is Reference.READABLE
    assert may_reference(MALLORY, binary(), "d2", DENY) is None
    assert may_reference(MALLORY, binary(owner="d1"), "d2", DENY) is None
    assert may_reference(ALICE, None, "d2", PERMIT) is None


@given(
    owner=st.one_of(st.none(), st.sampled_from(["d1", "d2"])),
    by=st.sampled_from([ALICE, MALLORY, None]),
    caller=st.sampled_from([ALICE, MALLORY, PLATFORM]),
    read=st.sampled_from([PERMIT, DENY]),
    document=st.sampled_from(["d1", "d2", "d3"]),
)
def test_referencing_never_transfers_ownership(
    owner: str | None, by: Principal | None, caller: Principal, read: Decision, document: str
) -> None:
    """Only an unowned Binary can change hands, only to its uploader's document; a refusal is one
    answer whatever the Binary (an unknown one included)."""
    stored = binary(owner=owner, by=by)
    verdict = may_reference(caller, stored, document, read)
    if verdict is Reference.CLAIM:
        assert owner is None and by == caller
    if owner is not None and owner != document:
        assert verdict in (Reference.READABLE, None)
        assert (verdict is Reference.READABLE) == read.permit
    if verdict is None:
        assert may_reference(caller, None, document, read) is None
