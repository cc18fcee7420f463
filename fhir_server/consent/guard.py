"""ConsentGuard: the storage AccessGuard (storage/guard.py) of one request, built from loaded consents.

Which consents to load (`consents_by_patient`, Consent JSON of any status, keyed by patient id):
- read, vread, instance history, update, patch, delete: the compartment patients of the resource;
- create: the compartment patients of the resource to be written;
- a search or history anchored on patients (`patient=`, `subject=`, compartment search): those
  patients, with `all_patients=False` — any other patient's data stays invisible;
- an unanchored search or history: every patient with an `active` Consent, with `all_patients=True`
  — the patients absent from the map have no consent and fall to FHIR_CONSENT_DEFAULT.
`needs_consents(request)` False means none are needed (patient tokens). `groups` holds the Group
resources named by the consents' actors (`referenced_groups(consents)`), keyed by that reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fhir_server.consent.evaluate import NO_GROUPS, Evaluator
from fhir_server.consent.filter import consent_filter, to_query
from fhir_server.consent.model import AccessRequest, ConsentPolicy, Decision
from fhir_server.record.documents import StoredResource


class ConsentGuard:
    """`query_filter` and `decide` agree on every stored document (the filter is exact, not a pre-filter)."""

    def __init__(
        self,
        request: AccessRequest,
        consents_by_patient: Mapping[str, Sequence[Mapping[str, Any]]],
        *,
        policy: ConsentPolicy,
        all_patients: bool,
        identity_lookup: bool = False,
        groups: Mapping[str, Mapping[str, Any]] = NO_GROUPS,
    ) -> None:
        self.request = request
        self.consents_by_patient = consents_by_patient
        self.all_patients = all_patients
        self._evaluator = Evaluator(request, policy=policy, groups=groups, identity_lookup=identity_lookup)

    def query_filter(self, resource_type: str) -> Mapping[str, Any] | None:
        return to_query(
            consent_filter(
                self._evaluator, resource_type, self.consents_by_patient, all_patients=self.all_patients
            )
        )

    def decide(self, stored: StoredResource) -> Decision:
        return self._evaluator.decide(stored, self._consents_of)

    def _consents_of(self, patient_id: str) -> Sequence[Mapping[str, Any]] | None:
        consents = self.consents_by_patient.get(patient_id)
        if consents is None and self.all_patients:
            return ()
        return consents
