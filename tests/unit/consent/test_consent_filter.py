"""The consent query filter selects exactly the stored documents decide() permits (docs/architecture.md I4,
docs/consent.md).

Property: for random consents, principals and stored documents (current, history and deleted
versions), the MongoDB filter of ConsentGuard.query_filter matches a document iff ConsentGuard.decide
permits it. The filter is evaluated by a small in-memory matcher (mongo_matcher.py) restricted to the
operator subset filter.py documents. Consents that do not read the data give a flat filter (no
top-level operator: planners, and the embedded database of docs/architecture.md, then use an index) for
anchored
searches and for callers who author nothing; past the bound on listed patients the filter stays exact.
Also the matcher itself, on MongoDB's array rules.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from unittest import mock

import pytest
from consent_builders import NOW
from consent_strategies import (
    GROUPS,
    INTERACTIONS,
    PATIENTS,
    POLICIES,
    TYPES_BY_ID,
    applicable_consents,
    clinicians,
    consents,
    p1_documents,
    principals,
    request_only_consents,
    stored_documents,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from mongo_matcher import matches

from fhir_server.auth.principal import Principal
from fhir_server.consent import AccessRequest, ConsentGuard, ConsentPolicy
from fhir_server.consent import filter as consent_filter
from fhir_server.fhir.interaction import Interaction
from fhir_server.record.documents import StoredResource


def resource_type(document: dict[str, Any]) -> str:
    return (document.get("res") or {}).get("resourceType") or TYPES_BY_ID[
        document.get("rid", document["_id"])
    ]


def _guard(
    principal: Principal,
    interaction: Interaction,
    consent_list: list[dict[str, Any]],
    policy: ConsentPolicy,
    loaded: set[str],
    all_patients: bool,
    lookup: bool = False,
) -> ConsentGuard:
    by_patient = {
        patient: [c for c in consent_list if c["patient"]["reference"] == f"Patient/{patient}"]
        for patient in loaded
    }
    return ConsentGuard(
        AccessRequest(principal, interaction, "DocumentReference", NOW),
        by_patient,
        policy=policy,
        all_patients=all_patients,
        identity_lookup=lookup,
        groups=GROUPS,
    )


def _authors_nothing(principal: Principal, kind: str) -> bool:
    return kind != "DocumentReference" or (
        principal.fhir_user is None and principal.national_provider_identifier is None
    )


@settings(max_examples=300, deadline=None, database=None)
@given(
    principal=principals,
    interaction=st.sampled_from(INTERACTIONS),
    documents=st.lists(stored_documents, min_size=1, max_size=4),
    consent_list=consents,
    policy=st.sampled_from(POLICIES),
    loaded=st.sets(st.sampled_from(PATIENTS)),
    all_patients=st.booleans(),
    lookup=st.booleans(),
)
def test_query_filter_matches_exactly_what_decide_permits(
    principal: Principal,
    interaction: Interaction,
    documents: list[dict[str, Any]],
    consent_list: list[dict[str, Any]],
    policy: ConsentPolicy,
    loaded: set[str],
    all_patients: bool,
    lookup: bool,
) -> None:
    guard = _guard(principal, interaction, consent_list, policy, loaded, all_patients, lookup)
    for document in documents:
        kind = resource_type(document)
        query = guard.query_filter(kind)
        permitted = guard.decide(StoredResource.from_document(kind, document)).permit
        assert (query is not None and matches(document, query)) is permitted, (query, document)


@settings(max_examples=300, deadline=None, database=None)
@given(
    principal=clinicians,
    interaction=st.sampled_from(INTERACTIONS),
    documents=st.lists(p1_documents, min_size=1, max_size=4),
    consent_list=applicable_consents,
    policy=st.sampled_from(POLICIES[1::2]),
)
def test_query_filter_matches_decide_when_every_consent_applies(
    principal: Principal,
    interaction: Interaction,
    documents: list[dict[str, Any]],
    consent_list: list[dict[str, Any]],
    policy: ConsentPolicy,
) -> None:
    guard = ConsentGuard(
        AccessRequest(principal, interaction, "DocumentReference", NOW),
        {"p1": consent_list},
        policy=policy,
        all_patients=False,
        groups=GROUPS,
    )
    query = guard.query_filter("DocumentReference")
    for document in documents:
        permitted = guard.decide(StoredResource.from_document("DocumentReference", document)).permit
        assert (query is not None and matches(document, query)) is permitted, (query, document)


@settings(max_examples=300, deadline=None, database=None)
@given(
    principal=principals,
    interaction=st.sampled_from(INTERACTIONS),
    documents=st.lists(stored_documents, min_size=1, max_size=4),
    consent_list=request_only_consents,
    policy=st.sampled_from(POLICIES),
    loaded=st.sets(st.sampled_from(PATIENTS)),
    all_patients=st.booleans(),
    lookup=st.booleans(),
)
def test_consents_that_do_not_read_the_data_give_an_exact_flat_filter(
    principal: Principal,
    interaction: Interaction,
    documents: list[dict[str, Any]],
    consent_list: list[dict[str, Any]],
    policy: ConsentPolicy,
    loaded: set[str],
    all_patients: bool,
    lookup: bool,
) -> None:
    guard = _guard(principal, interaction, consent_list, policy, loaded, all_patients, lookup)
    for document in documents:
        kind = resource_type(document)
        query = guard.query_filter(kind)
        permitted = guard.decide(StoredResource.from_document(kind, document)).permit
        assert (query is not None and matches(document, query)) is permitted, (query, document)
        if query is not None and (not all_patients or _authors_nothing(principal, kind)):
            assert not [key for key in query if key.startswith("$")], query


@settings(max_examples=200, deadline=None, database=None)
@given(
    principal=principals,
    interaction=st.sampled_from(INTERACTIONS),
    documents=st.lists(stored_documents, min_size=1, max_size=4),
    consent_list=request_only_consents,
    policy=st.sampled_from(POLICIES),
    loaded=st.sets(st.sampled_from(PATIENTS), min_size=2),
    all_patients=st.booleans(),
)
def test_filter_stays_exact_past_the_bound_on_listed_patients(
    principal: Principal,
    interaction: Interaction,
    documents: list[dict[str, Any]],
    consent_list: list[dict[str, Any]],
    policy: ConsentPolicy,
    loaded: set[str],
    all_patients: bool,
) -> None:
    guard = _guard(principal, interaction, consent_list, policy, loaded, all_patients)
    with mock.patch.object(consent_filter, "MAX_ENUMERATED_PATIENTS", 1):
        for document in documents:
            kind = resource_type(document)
            query = guard.query_filter(kind)
            permitted = guard.decide(StoredResource.from_document(kind, document)).permit
            assert (query is not None and matches(document, query)) is permitted, (query, document)


DAY = datetime(2024, 1, 1, tzinfo=UTC)
SAMPLE = {
    "_id": "d1",
    "pat": ["p1", "p2"],
    "sec": ["N", "urn:conf|N"],
    "idx": {"date": [{"lo": DAY, "hi": DAY}]},
    "res": {
        "author": [{"reference": "Practitioner/a"}, {"identifier": {"value": "x"}}],
        "type": {"coding": []},
    },
}
MATCHER = {
    "equality on an array element": ({"pat": "p2"}, True),
    "equality missing": ({"pat": "p3"}, False),
    "path across an array": ({"res.author.reference": "Practitioner/a"}, True),
    "path across an array, deeper": ({"res.author.identifier.value": "x"}, True),
    "$ne on an array": ({"sec": {"$ne": "R"}}, True),
    "$ne on a missing field": ({"nope": {"$ne": "R"}}, True),
    "$in": ({"pat": {"$in": ["p3", "p1"]}}, True),
    "$nin": ({"pat": {"$nin": ["p3", "p1"]}}, False),
    "$nin on a missing field": ({"nope": {"$nin": ["a"]}}, True),
    "numeric segment exists": ({"pat.1": {"$exists": True}}, True),
    "numeric segment beyond the end": ({"pat.2": {"$exists": False}}, True),
    "empty array has no first element": ({"res.type.coding.0": {"$exists": True}}, False),
    "$elemMatch on documents": (
        {"idx.date": {"$elemMatch": {"lo": {"$lte": DAY}, "hi": {"$gte": DAY}}}},
        True,
    ),
    "$elemMatch bound excluded": (
        {"idx.date": {"$elemMatch": {"lo": {"$gte": datetime(2024, 1, 2, tzinfo=UTC)}}}},
        False,
    ),
    "$elemMatch with an operator on scalars": ({"pat": {"$elemMatch": {"$nin": ["p1"]}}}, True),
    "$nor": ({"$nor": [{"pat": "p1"}]}, False),
    "$not on an element match": ({"pat": {"$not": {"$elemMatch": {"$nin": ["p1", "p2"]}}}}, True),
    "$not on a missing field": ({"nope": {"$not": {"$elemMatch": {"$nin": ["a"]}}}}, True),
    "$in and $not on one field": ({"pat": {"$in": ["p1"], "$not": {"$elemMatch": {"$nin": ["p1"]}}}}, False),
    "$and / $or": ({"$and": [{"$or": [{"pat": "x"}, {"pat": "p1"}]}, {"_id": "d1"}]}, True),
    "dates compare only with dates": ({"idx.date": {"$elemMatch": {"lo": {"$lte": "2025"}}}}, False),
}


@pytest.mark.parametrize(("query", "expected"), MATCHER.values(), ids=MATCHER.keys())
def test_matcher_follows_mongodb_array_rules(query: dict[str, Any], expected: bool) -> None:
    assert matches(SAMPLE, query) is expected
