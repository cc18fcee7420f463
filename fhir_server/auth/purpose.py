"""The one purpose-of-use matcher: every rule that reads a purpose asks this module (pure).

Permitting by `provision.purpose`, the break-the-glass override and a patient's explicit refusal of
break-the-glass all compare purposes here, so they can never disagree (docs/security.md).
- A coding is compared on its system and code; a coding without a system (or without a code)
  means nothing: it matches no purpose and is never break-the-glass.
- v3-ActReason is one system whatever its spelling: its canonical URL or its OID
  (`urn:oid:2.16.840.1.113883.5.8`).
- Break-the-glass is exactly `http://terminology.hl7.org/CodeSystem/v3-ActReason|BTG`.
- Within v3-ActReason, a purpose covers its specialisations: TREAT ⊃ ETREAT ⊃ {BTG, ERTREAT}.
https://terminology.hl7.org/CodeSystem-v3-ActReason.html
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
ACT_REASON_OID = "urn:oid:2.16.840.1.113883.5.8"
BREAK_THE_GLASS = "BTG"

SUBSUMES: Mapping[str, frozenset[str]] = {
    "TREAT": frozenset({"TREAT", "ETREAT", "BTG", "ERTREAT"}),
    "ETREAT": frozenset({"ETREAT", "BTG", "ERTREAT"}),
}
"""v3-ActReason subsumption; the other codes cover only themselves."""

_SAME_SYSTEM = {ACT_REASON_OID: ACT_REASON, f"{ACT_REASON}/": ACT_REASON}


class CodingLike(Protocol):
    @property
    def system(self) -> str | None: ...

    @property
    def code(self) -> str | None: ...


def canonical_system(system: Any) -> str | None:
    """The system's canonical spelling, or None when there is no usable system."""
    if not isinstance(system, str) or not system:
        return None
    return _SAME_SYSTEM.get(system, system)


def _key(coding: CodingLike | Mapping[str, Any]) -> tuple[str, str] | None:
    """(canonical system, code), or None for a coding that means nothing."""
    if isinstance(coding, Mapping):
        system, code = coding.get("system"), coding.get("code")
    else:
        system, code = coding.system, coding.code
    canonical = canonical_system(system)
    if canonical is None or not isinstance(code, str) or not code:
        return None
    return canonical, code


def is_break_the_glass(coding: CodingLike | Mapping[str, Any]) -> bool:
    return _key(coding) == (ACT_REASON, BREAK_THE_GLASS)


def purpose_covers(pattern: CodingLike | Mapping[str, Any], actual: CodingLike | Mapping[str, Any]) -> bool:
    """`pattern` (a rule's purpose) covers `actual` (the request's purpose of use)."""
    rule, asked = _key(pattern), _key(actual)
    if rule is None or asked is None or rule[0] != asked[0]:
        return False
    if rule[0] != ACT_REASON:
        return rule[1] == asked[1]
    return asked[1] in SUBSUMES.get(rule[1], frozenset({rule[1]}))


__all__ = [
    "ACT_REASON",
    "ACT_REASON_OID",
    "BREAK_THE_GLASS",
    "SUBSUMES",
    "canonical_system",
    "is_break_the_glass",
    "purpose_covers",
]
