"""The policy decision point (docs/consent.md): pure, no I/O; time comes in the AccessRequest.

- `decide(request, stored, consents, *, policy, groups={}, identity_lookup=False) -> Decision`
  for one stored version and the Consents (any status) of its patient(s);
- `ConsentGuard(request, consents_by_patient, *, policy, all_patients, identity_lookup=False, groups={})`,
  the storage AccessGuard: `query_filter(resource_type)` (MongoDB filter, exact) and `decide(stored)`;
- `ConsentPolicy.from_settings(FHIR_CONSENT_DEFAULT, FHIR_BREAK_GLASS_ROLES)`;
- `needs_consents(request)`, `referenced_groups(consents)`: what the caller must load.
"""

from fhir_server.consent.evaluate import decide, needs_consents
from fhir_server.consent.guard import ConsentGuard
from fhir_server.consent.model import AccessRequest, ConsentPolicy, Decision
from fhir_server.consent.provisions import referenced_groups

__all__ = [
    "AccessRequest",
    "ConsentGuard",
    "ConsentPolicy",
    "Decision",
    "decide",
    "needs_consents",
    "referenced_groups",
]
