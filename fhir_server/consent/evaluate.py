"""decide(): the access decision for one stored resource version (docs/consent.md, IHE PCF App. P.4.4).

Order of the rules, first that applies wins:
1. interactions without a consent action (capabilities, batch, transaction, operation) are refused:
   the caller decides their inner reads, searches and writes;
2. patient tokens: their own compartment is theirs (`patient-self`: read, write, manage own Consents)
   except resources labelled `INVISIBLE_PATIENT` and the deletion of their Patient; nothing outside it;
3. read-only professions (TRE_R95 `71` ostéopathe) get `access` only;
4. who writes and reads Consents, Patients and the audit trail (writers.py): consent management,
   identity creation and management, audit review, and the refusals of professionals;
5. no patient compartment (a Binary not yet linked...): nothing to consent to, and no patient who could;
   creation is allowed, reading only to `system/` clients (`no-patient-context`);
6. the author of a DocumentReference reads it, masked or not (`author`);
7. `MASQUE_PS` hides the resource from every other non-patient actor, break-the-glass included
   (`masked`, DMP practice);
8. the patient's consents, per compartment patient (all must permit): applicable consents whose root
   matches say deny or permit (deepest matching provision decides, deny wins among siblings and across
   consents); break-the-glass (purpose BTG, a role of FHIR_BREAK_GLASS_ROLES, reading only) overrides a
   deny or the default deny unless a deciding deny provision names purpose BTG itself; no consent
   says anything: FHIR_CONSENT_DEFAULT;
9. a professional searching a Patient by exact identifier sees it (`identity-lookup`) when 8 denies.
Data criteria read the stored document: `resource_type`, `id`, `security` (labels), the
resource JSON (`type.coding`, `author`, `context`, `relatesTo`, `entry.item`, `source`) and the `date`
/ `period` index ranges, so that filter.py can express the same test on the same stored fields.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

from fhir_server.consent.codes import (
    ACCESS,
    ACTION_OF,
    COLLECT,
    CONFIDENTIALITY_ORDER,
    CONFIDENTIALITY_SYSTEM,
    INVISIBLE_TO_PATIENT,
    MASKED_TO_PROFESSIONALS,
    READ_ONLY_PROFESSIONS,
    UNLABELLED_CONFIDENTIALITY,
    covers,
)
from fhir_server.consent.model import AccessRequest, ConsentPolicy, Decision
from fhir_server.consent.periods import aware
from fhir_server.consent.provisions import (
    AUTHORED_BY,
    DEPENDENTS,
    RELATED,
    CompiledConsent,
    DataItem,
    Label,
    Provision,
    RequestSide,
    compile_consents,
)
from fhir_server.consent.writers import patient_rule, role_rule
from fhir_server.fhir.resources import AUDIT_EVENT, DOCUMENT_REFERENCE, PATIENT
from fhir_server.storage.documents import StoredResource

LIST = "List"
NO_GROUPS: Mapping[str, Mapping[str, Any]] = MappingProxyType({})

ConsentSource = Callable[[str], Sequence[Mapping[str, Any]] | None]
"""The consents of one patient (any status), or None when they were not loaded (patient not visible)."""


def decide(
    request: AccessRequest,
    stored: StoredResource,
    consents: Sequence[Mapping[str, Any]],
    *,
    policy: ConsentPolicy,
    groups: Mapping[str, Mapping[str, Any]] = NO_GROUPS,
    identity_lookup: bool = False,
) -> Decision:
    """The decision for one stored version; `consents` are the Consents of its patient(s), any status.

    `groups` maps a Group reference (`Group/<id>`, as written in `provision.actor.reference`) to the
    Group resource; `identity_lookup` is True for an exact `Patient?identifier=system|value` search.
    """
    evaluator = Evaluator(request, policy=policy, groups=groups, identity_lookup=identity_lookup)
    return evaluator.decide(stored, lambda _patient: consents)


def needs_consents(request: AccessRequest) -> bool:
    """False when no consent can change the decision: patient tokens, interactions without a consent
    action, and the fixed rules that decide a whole type for the caller (writers.py: e.g. a `system/`
    identity manager reading a Patient, anyone but the patient touching the audit trail)."""
    action = ACTION_OF.get(request.interaction)
    if request.principal.is_patient or action is None:
        return False
    return role_rule(request.principal, action, request.resource_type) is None


@dataclass(frozen=True)
class _Outcome:
    deny: bool
    path: str
    refusal: str | None
    """Path of a deciding deny provision that names purpose BTG (the patient refuses break-the-glass)."""


class Evaluator:
    """The request side of the decision, computed once and shared by decide() and the query filter."""

    def __init__(
        self,
        request: AccessRequest,
        *,
        policy: ConsentPolicy,
        groups: Mapping[str, Mapping[str, Any]] = NO_GROUPS,
        identity_lookup: bool = False,
    ) -> None:
        principal = request.principal
        self.request = request
        self.policy = policy
        self.groups = groups
        self.identity_lookup = identity_lookup
        self.action = ACTION_OF.get(request.interaction)
        self.read_only = any(
            role.matches(limited) for role in principal.roles for limited in READ_ONLY_PROFESSIONS
        )
        self.break_the_glass = (
            self.action == ACCESS
            and principal.breaks_the_glass
            and any(covers(allowed, role) for allowed in policy.break_glass_roles for role in principal.roles)
        )
        self._compiled: dict[tuple[str, str], tuple[CompiledConsent, ...]] = {}

    def default_permits(self, resource_type: str) -> bool:
        """The opt-out default serves care: it never opens a patient's audit trail."""
        return self.policy.default == "permit" and resource_type != AUDIT_EVENT

    def compiled(
        self, patient_id: str, consents: Sequence[Mapping[str, Any]], action: str
    ) -> tuple[CompiledConsent, ...]:
        """Compiled once per patient and action: a ConsentSource returns the same consents every time."""
        key = (patient_id, action)
        if key not in self._compiled:
            side = RequestSide(self.request.principal, action, self.request.now, self.groups)
            self._compiled[key] = compile_consents(consents, patient_id, side)
        return self._compiled[key]

    def is_author(self, stored: StoredResource) -> bool:
        principal = self.request.principal
        if stored.resource_type != DOCUMENT_REFERENCE:
            return False
        if principal.fhir_user is not None and principal.fhir_user in path_values(
            stored.resource, "author.reference"
        ):
            return True
        npi = principal.national_provider_identifier
        return npi is not None and npi in path_values(stored.resource, "author.identifier.value")

    def decide(self, stored: StoredResource, consents_of: ConsentSource) -> Decision:
        principal = self.request.principal
        if self.action is None:
            return Decision.deny("unsupported-interaction")
        if principal.is_patient:
            if principal.patient not in stored.compartment:
                return Decision.deny("outside-patient-compartment")
            if INVISIBLE_TO_PATIENT in stored.security:
                return Decision.deny("invisible-to-patient")
            return patient_rule(self.request.interaction, stored.resource_type) or Decision.allow(
                "patient-self"
            )
        if self.read_only and self.action != ACCESS:
            return Decision.deny("read-only-profession")
        fixed = role_rule(principal, self.action, stored.resource_type)
        if fixed is not None:
            return fixed
        if not stored.compartment:
            if self.action == COLLECT or principal.is_system:
                return Decision.allow("no-patient-context")
            return Decision.deny("no-patient-context")
        author = self.is_author(stored)
        if author and self.action == ACCESS:
            return Decision.allow("author")
        if not author and MASKED_TO_PROFESSIONALS in stored.security:
            return Decision.deny("masked")
        decision = self._by_consent(stored, consents_of, self.action)
        if (
            not decision.permit
            and stored.resource_type == PATIENT
            and self.identity_lookup
            and self.action == ACCESS
        ):
            return Decision.allow("identity-lookup")
        return decision

    def _by_consent(self, stored: StoredResource, consents_of: ConsentSource, action: str) -> Decision:
        permits: list[Decision] = []
        for patient_id in stored.compartment:
            consents = consents_of(patient_id)
            if consents is None:
                return Decision.deny("patient-not-loaded")
            decision = self._for_patient(stored, self.compiled(patient_id, consents, action))
            if not decision.permit:
                return decision
            permits.append(decision)
        return Decision.allow(
            permits[0].rule,
            consents=tuple(dict.fromkeys(ref for d in permits for ref in d.consents)),
            break_the_glass=any(d.break_the_glass for d in permits),
        )

    def _for_patient(self, stored: StoredResource, consents: Iterable[CompiledConsent]) -> Decision:
        denies: list[tuple[str, _Outcome]] = []
        permits: list[tuple[str, _Outcome]] = []
        for consent in consents:
            if matches(consent.root, stored):
                outcome = _outcome(consent.root, stored)
                (denies if outcome.deny else permits).append((consent.reference, outcome))
        if denies:
            references = tuple(reference for reference, _ in denies)
            if self.break_the_glass and all(o.refusal is None for _, o in denies):
                return Decision.allow("break-the-glass", consents=references, break_the_glass=True)
            refusals = [o.refusal for _, o in denies if o.refusal is not None] if self.break_the_glass else []
            return Decision.deny((refusals or [denies[0][1].path])[0], consents=references)
        if permits:
            return Decision.allow(permits[0][1].path, consents=tuple(reference for reference, _ in permits))
        if self.default_permits(stored.resource_type):
            return Decision.allow("default-permit")
        if self.break_the_glass:
            return Decision.allow("break-the-glass", break_the_glass=True)
        return Decision.deny("default-deny")


def _outcome(provision: Provision, stored: StoredResource) -> _Outcome:
    """The result of a matching provision: its deepest matching descendants decide, deny wins."""
    nested = [_outcome(child, stored) for child in provision.provisions if matches(child, stored)]
    if not nested:
        return _Outcome(
            provision.deny, provision.path, provision.path if provision.explicit_btg_deny else None
        )
    denies = [outcome for outcome in nested if outcome.deny]
    if not denies:
        return nested[0]
    refusals = [outcome.refusal for outcome in denies if outcome.refusal is not None]
    return _Outcome(True, denies[0].path, refusals[0] if refusals else None)


def matches(provision: Provision, stored: StoredResource) -> bool:
    """All stated criteria match (AND); several values of one criterion are alternatives (OR)."""
    if not provision.request_match:
        return False
    if provision.classes is not None and stored.resource_type not in provision.classes:
        return False
    if provision.codes is not None and not _code_matches(provision.codes, stored):
        return False
    if provision.labels is not None and not any(
        label_matches(label, stored.security) for label in provision.labels
    ):
        return False
    if provision.data_period is not None and not _in_data_period(provision.data_period, stored):
        return False
    return provision.data is None or any(data_matches(item, stored) for item in provision.data)


def _code_matches(codes: Sequence[Any], stored: StoredResource) -> bool:
    if stored.resource_type != DOCUMENT_REFERENCE:
        return False
    for coding in path_values(stored.resource, "type.coding"):
        if not isinstance(coding, Mapping) or not isinstance(coding.get("code"), str):
            continue
        if any(code.code == coding["code"] and code.system in (None, coding.get("system")) for code in codes):
            return True
    return False


def confidentiality(security: Iterable[str]) -> int:
    """The highest v3-Confidentiality level among the stored labels (N when there is none)."""
    levels = [
        i for i, code in enumerate(CONFIDENTIALITY_ORDER) if f"{CONFIDENTIALITY_SYSTEM}|{code}" in security
    ]
    return max(levels) if levels else CONFIDENTIALITY_ORDER.index(UNLABELLED_CONFIDENTIALITY)


def label_matches(label: Label, security: Sequence[str]) -> bool:
    if label.level is not None:
        return confidentiality(security) <= label.level
    return label.key in security


def date_ranges(stored: StoredResource) -> list[Any]:
    """The `date` index ranges; for a DocumentReference without a date, its `period` (context.period)."""
    values = stored.index.get("date")
    if (not isinstance(values, list) or not values) and stored.resource_type == DOCUMENT_REFERENCE:
        values = stored.index.get("period")
    return values if isinstance(values, list) else []


def _in_data_period(bounds: tuple[datetime, datetime], stored: StoredResource) -> bool:
    """A date range of the resource overlaps the provision's dataPeriod."""
    start, end = bounds
    for value in date_ranges(stored):
        if isinstance(value, Mapping):
            low, high = value.get("lo"), value.get("hi")
            if (
                isinstance(low, datetime)
                and isinstance(high, datetime)
                and aware(low) <= end
                and aware(high) >= start
            ):
                return True
    return False


REFERENCE_PATHS: dict[str, dict[str, tuple[str, ...]]] = {
    RELATED: {DOCUMENT_REFERENCE: ("context.encounter.reference", "context.related.reference")},
    DEPENDENTS: {DOCUMENT_REFERENCE: ("relatesTo.target.reference",), LIST: ("entry.item.reference",)},
    AUTHORED_BY: {DOCUMENT_REFERENCE: ("author.reference",), LIST: ("source.reference",)},
}
"""Per data meaning and resource type, the resource-JSON paths whose reference names the data target."""


def data_matches(item: DataItem, stored: StoredResource) -> bool:
    if (
        item.meaning != AUTHORED_BY
        and stored.resource_type == item.target_type
        and stored.id == item.target_id
    ):
        return True
    paths = REFERENCE_PATHS.get(item.meaning, {}).get(stored.resource_type, ())
    return any(value in item.references for path in paths for value in path_values(stored.resource, path))


def path_values(value: Any, path: str) -> list[Any]:
    """The values at a dotted path, crossing arrays the way a MongoDB query path does."""
    current = [value]
    for key in path.split("."):
        found: list[Any] = []
        for item in current:
            for element in item if isinstance(item, list) else [item]:
                if isinstance(element, Mapping) and key in element:
                    found.append(element[key])
        current = found
    out: list[Any] = []
    for item in current:
        out.extend(item if isinstance(item, list) else [item])
    return out
