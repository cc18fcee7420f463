"""decide() against a deliberately simple, independent reference evaluator on random consents.

The reference reads docs/consent.md literally and by brute force: a provision is reached when it and all its
ancestors match; the reached provisions with no reached child decide, and any deny among them makes
the consent deny. It reads the resource JSON and the raw stored document, never the consent package's
helpers. Covers docs/tokens.md, docs/consent.md and STANDARDS §1.3 and §2 (PCF nesting, break-glass).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from consent_builders import NOW
from consent_strategies import (
    GROUPS,
    INTERACTIONS,
    POLICIES,
    TYPES_BY_ID,
    applicable_consents,
    clinicians,
    consents,
    p1_documents,
    principals,
    stored_documents,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_server.auth.principal import Principal
from fhir_server.consent import AccessRequest, ConsentPolicy, Decision, decide
from fhir_server.fhir.interaction import Interaction
from fhir_server.record.documents import StoredResource

ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
CONF = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
LEVELS = "ULMNRV"
BELOW = {"TREAT": {"TREAT", "ETREAT", "BTG", "ERTREAT"}, "ETREAT": {"ETREAT", "BTG", "ERTREAT"}}
READ = {"read", "vread", "search-type", "search-system", "history-instance", "history-type", "history-system"}


def action_of(interaction: Interaction) -> str | None:
    if interaction.value in READ:
        return "access"
    return {"create": "collect", "update": "correct", "patch": "correct", "delete": "correct"}.get(
        interaction.value
    )


def last_two(text: str) -> str:
    parts = text.split("/")
    return "/".join(parts[-2:])


def labels_of(resource: dict[str, Any] | None, document: dict[str, Any]) -> list[tuple[str | None, str]]:
    """From the raw resource when there is one; a deleted version keeps only the stored `sec` keys."""
    if resource is None:
        return [tuple(key.split("|", 1)) if "|" in key else (None, key) for key in document.get("sec", [])]
    codings = list(resource.get("meta", {}).get("security", []))
    if resource["resourceType"] == "DocumentReference":
        for concept in resource.get("securityLabel", []):
            codings += concept.get("coding", [])
    return [(c.get("system"), c["code"]) for c in codings]


def actor_is(principal: Principal, reference: dict[str, Any], contained: list[dict[str, Any]]) -> bool:
    text = reference.get("reference")
    if text:
        if text.startswith("#"):
            groups = [g for g in contained if "#" + g["id"] == text]
            return bool(groups) and in_group(principal, groups[0])
        if last_two(text) == principal.fhir_user:
            return True
        if text in GROUPS:
            return in_group(principal, GROUPS[text])
        if principal.organization_id and text == "Organization/" + principal.organization_id:
            return True
        if principal.is_system and text == "Device/" + principal.client_id:
            return True
    value = reference.get("identifier", {}).get("value")
    kind = reference.get("type")
    if value is None:
        return False
    if value == principal.national_provider_identifier and kind in (None, "Practitioner", "PractitionerRole"):
        return True
    if value == principal.organization_id and kind in (None, "Organization"):
        return True
    return principal.is_system and value == principal.client_id and kind in (None, "Device")


def in_group(principal: Principal, group: dict[str, Any]) -> bool:
    for member in group.get("member", []):
        if member["entity"]["reference"] == principal.fhir_user:
            return True
    if not group.get("characteristic"):
        return False
    for characteristic in group["characteristic"]:
        concept = characteristic.get("valueCodeableConcept") or (
            characteristic["code"] if characteristic.get("valueBoolean") else {}
        )
        held = False
        for coding in concept.get("coding", []):
            for role in principal.roles:
                if coding["code"] == role.code and coding.get("system") in (None, role.system):
                    held = True
        if held == bool(characteristic.get("exclude")):
            return False
    return True


def in_range(text_period: dict[str, str], low: datetime, high: datetime) -> bool:
    """Overlap of [low, high] with a consent period given at day/month/year or second precision."""
    start = text_period.get("start")
    end = text_period.get("end")
    if start and high < bound(start, low=True):
        return False
    return not (end and low > bound(end, low=False))


def bound(text: str, *, low: bool) -> datetime:
    if "T" in text:
        return (
            datetime.fromisoformat(text.replace("Z", "+00:00"))
            if low
            else datetime.fromisoformat(text.replace("Z", "+00:00")).replace(microsecond=999999)
        )
    parts = [int(p) for p in text.split("-")]
    if low:
        return datetime(
            parts[0], parts[1] if len(parts) > 1 else 1, parts[2] if len(parts) > 2 else 1, tzinfo=UTC
        )
    year, month = parts[0], parts[1] if len(parts) > 1 else 12
    if len(parts) > 2:
        day = parts[2]
    else:
        day = 31 if month == 12 else (datetime(year, month + 1, 1) - datetime(year, month, 1)).days
    return datetime(year, month, day, 23, 59, 59, 999999, tzinfo=UTC)


def provision_matches(
    provision: dict[str, Any],
    principal: Principal,
    action: str,
    document: dict[str, Any],
    rtype: str,
    contained: list[Any],
) -> bool:
    resource = document.get("res")
    if "actor" in provision and not any(
        actor_is(principal, a["reference"], contained) for a in provision["actor"]
    ):
        return False
    if "action" in provision and action not in [c["coding"][0]["code"] for c in provision["action"]]:
        return False
    if "purpose" in provision and not any(
        q.code in BELOW.get(p["code"], {p["code"]}) and q.system == ACT_REASON
        for p in provision["purpose"]
        for q in principal.purpose_of_use
    ):
        return False
    if "period" in provision and not in_range(provision["period"], NOW, NOW):
        return False
    if "class" in provision and rtype not in [c["code"] for c in provision["class"]]:
        return False
    if "code" in provision:
        mine = (resource or {}).get("type", {}).get("coding", []) if rtype == "DocumentReference" else []
        if not any(
            c["code"] == m["code"] and c.get("system") in (None, m.get("system"))
            for c in provision["code"][0]["coding"]
            for m in mine
        ):
            return False
    if "securityLabel" in provision:
        labels = labels_of(resource, document)
        level = max([LEVELS.index(c) for s, c in labels if s == CONF] or [LEVELS.index("N")])
        ok = False
        for label in provision["securityLabel"]:
            if label.get("system") == CONF:
                ok = ok or level <= LEVELS.index(label["code"])
            elif label.get("system"):
                ok = ok or (label["system"], label["code"]) in labels
            else:
                ok = ok or label["code"] in [c for _, c in labels]
        if not ok:
            return False
    if "dataPeriod" in provision:
        ranges = document["idx"].get("date") or (
            document["idx"].get("period") if rtype == "DocumentReference" else None
        )
        if not any(in_range(provision["dataPeriod"], r["lo"], r["hi"]) for r in ranges or []):
            return False
    if "data" in provision:
        return any(data_covers(item, document, rtype) for item in provision["data"])
    return True


def data_covers(item: dict[str, Any], document: dict[str, Any], rtype: str) -> bool:
    target = item["reference"]["reference"]
    resource = document.get("res") or {}
    me = f"{rtype}/{document.get('rid', document['_id'])}"
    if item["meaning"] == "instance":
        return me == target
    if item["meaning"] == "related":
        context = resource.get("context", {})
        refs = [r["reference"] for r in context.get("encounter", []) + context.get("related", [])]
        return me == target or (rtype == "DocumentReference" and target in refs)
    if item["meaning"] == "dependents":
        refs = [r["target"]["reference"] for r in resource.get("relatesTo", [])]
        return me == target or (rtype == "DocumentReference" and target in refs)
    refs = [a["reference"] for a in resource.get("author", []) if "reference" in a]
    return rtype == "DocumentReference" and target in refs


def leaves(provision: dict[str, Any], path: str, test: Any) -> list[tuple[str, dict[str, Any]]]:
    """The reached provisions without a reached child, in document order."""
    reached = [
        (f"{path}.provision[{i}]", child)
        for i, child in enumerate(provision.get("provision", []))
        if test(child)
    ]
    if not reached:
        return [(path, provision)]
    return [leaf for child_path, child in reached for leaf in leaves(child, child_path, test)]


def reference_decide(
    principal: Principal,
    interaction: Interaction,
    document: dict[str, Any],
    rtype: str,
    all_consents: list[dict[str, Any]],
    policy: ConsentPolicy,
    lookup: bool,
) -> Decision:
    action = action_of(interaction)
    resource = document.get("res")
    pat = document.get("pat") or []
    codes = [c for _, c in labels_of(resource, document)]
    if action is None:
        return Decision.deny("unsupported-interaction")
    if principal.is_patient:
        if principal.patient not in pat:
            return Decision.deny("outside-patient-compartment")
        if "INVISIBLE_PATIENT" in codes:
            return Decision.deny("invisible-to-patient")
        if rtype == "Patient" and interaction == Interaction.DELETE:
            return Decision.deny("identity-writers")
        return Decision.allow("patient-self")
    if action != "access" and any(r.code == "71" for r in principal.roles):
        return Decision.deny("read-only-profession")
    system_types = {s.resource_type for s in principal.scopes if s.context == "system"}
    system_types = system_types if principal.is_system else set()
    if rtype == "Consent":
        if "Consent" in system_types:
            return Decision.allow("consent-management")
        if action != "access":
            return Decision.deny("consent-writers")
        if not principal.is_system:
            return Decision.deny("consent-readers")
    if rtype == "AuditEvent":
        if action == "access" and "AuditEvent" in system_types:
            return Decision.allow("audit-review")
        return Decision.deny("audit-readers")
    if rtype == "Patient" and action == "collect":
        return Decision.allow("identity-create")
    if rtype == "Patient" and system_types & {"Patient", "*"}:
        return Decision.allow("identity-management")
    if rtype == "Patient" and action != "access":
        return Decision.deny("identity-writers")
    if not pat:
        ok = action == "collect" or principal.is_system
        return Decision(ok, "no-patient-context")
    npi = principal.national_provider_identifier
    author = rtype == "DocumentReference" and any(
        (principal.fhir_user is not None and a.get("reference") == principal.fhir_user)
        or (npi is not None and a.get("identifier", {}).get("value") == npi)
        for a in (resource or {}).get("author", [])
    )
    if author and action == "access":
        return Decision.allow("author")
    if not author and "MASQUE_PS" in codes:
        return Decision.deny("masked")
    btg = (
        action == "access"
        and any(p.code == "BTG" for p in principal.purpose_of_use)
        and any(
            r.system == b.system and r.code == b.code
            for r in principal.roles
            for b in policy.break_glass_roles
        )
    )
    asked = action
    permits = []
    for patient in pat:
        denied, permitted, refusals = [], [], []
        for consent in all_consents:
            if consent["status"] != "active" or consent["scope"]["coding"][0]["code"] != "patient-privacy":
                continue
            if consent["patient"]["reference"] != f"Patient/{patient}":
                continue
            contained = consent.get("contained", [])

            def test(p: dict[str, Any], contained: list[Any] = contained) -> bool:
                return provision_matches(p, principal, asked, document, rtype, contained)

            if not test(consent["provision"]):
                continue
            deciding = leaves(consent["provision"], f"Consent/{consent['id']}#provision", test)
            deny_leaves = [(path, p) for path, p in deciding if p.get("type") != "permit"]
            ref = f"Consent/{consent['id']}"
            if deny_leaves:
                denied.append((ref, deny_leaves[0][0]))
                refusals += [
                    path for path, p in deny_leaves if any(c["code"] == "BTG" for c in p.get("purpose", []))
                ]
            else:
                permitted.append((ref, deciding[0][0]))
        if denied and btg and not refusals:
            decision = Decision.allow(
                "break-the-glass", consents=tuple(r for r, _ in denied), break_the_glass=True
            )
        elif denied:
            decision = Decision.deny(
                refusals[0] if btg else denied[0][1], consents=tuple(r for r, _ in denied)
            )
        elif permitted:
            decision = Decision.allow(permitted[0][1], consents=tuple(r for r, _ in permitted))
        elif policy.default == "permit" and rtype != "AuditEvent":
            decision = Decision.allow("default-permit")
        elif btg:
            decision = Decision.allow("break-the-glass", break_the_glass=True)
        else:
            decision = Decision.deny("default-deny")
        if not decision.permit:
            if rtype == "Patient" and lookup and action == "access":
                return Decision.allow("identity-lookup")
            return decision
        permits.append(decision)
    names = []
    for decision in permits:
        names += [c for c in decision.consents if c not in names]
    return Decision.allow(
        permits[0].rule, consents=tuple(names), break_the_glass=any(d.break_the_glass for d in permits)
    )


@settings(max_examples=300, deadline=None, database=None)
@given(
    principal=principals,
    interaction=st.sampled_from(INTERACTIONS),
    document=stored_documents,
    consent_list=consents,
    policy=st.sampled_from(POLICIES),
    lookup=st.booleans(),
)
def test_decide_agrees_with_the_reference_evaluator(
    principal: Principal,
    interaction: Interaction,
    document: dict[str, Any],
    consent_list: list[dict[str, Any]],
    policy: ConsentPolicy,
    lookup: bool,
) -> None:
    rtype = (document.get("res") or {}).get("resourceType") or TYPES_BY_ID[
        document.get("rid", document["_id"])
    ]
    stored = StoredResource.from_document(rtype, document)
    got = decide(
        AccessRequest(principal, interaction, rtype, NOW),
        stored,
        consent_list,
        policy=policy,
        groups=GROUPS,
        identity_lookup=lookup,
    )
    assert got == reference_decide(principal, interaction, document, rtype, consent_list, policy, lookup)


@settings(max_examples=400, deadline=None, database=None)
@given(
    principal=clinicians,
    interaction=st.sampled_from(INTERACTIONS),
    document=p1_documents,
    consent_list=applicable_consents,
    policy=st.sampled_from(POLICIES[1::2]),
)
def test_decide_agrees_with_the_reference_evaluator_when_every_consent_applies(
    principal: Principal,
    interaction: Interaction,
    document: dict[str, Any],
    consent_list: list[dict[str, Any]],
    policy: ConsentPolicy,
) -> None:
    stored = StoredResource.from_document("DocumentReference", document)
    got = decide(
        AccessRequest(principal, interaction, "DocumentReference", NOW),
        stored,
        consent_list,
        policy=policy,
        groups=GROUPS,
    )
    assert got == reference_decide(
        principal, interaction, document, "DocumentReference", consent_list, policy, False
    )
