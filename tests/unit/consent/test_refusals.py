"""refusal_reason(): a sentence for every rule by which the consent decision denies."""

from __future__ import annotations

import re
from pathlib import Path

from fhir_server.consent import evaluate
from fhir_server.consent.model import Decision
from fhir_server.consent.refusals import FIXED_RULES, refusal_reason

DENY_RULES = sorted(set(re.findall(r'Decision\.deny\("([a-z-]+)"', Path(evaluate.__file__).read_text())))


def test_every_fixed_deny_rule_of_the_evaluator_has_its_own_sentence() -> None:
    assert DENY_RULES, "no fixed deny rule found in consent/evaluate.py"
    assert set(DENY_RULES) <= {*FIXED_RULES, "default-deny"}


def test_default_deny_names_the_patient_and_the_policy() -> None:
    reason = refusal_reason(Decision.deny("default-deny"), ["p1", "p2"])
    assert reason.startswith("no Consent of Patient/p1, Patient/p2 permits it (default policy: deny")


def test_a_deny_by_consent_does_not_reveal_which_consent() -> None:
    reason = refusal_reason(Decision.deny("provision.provision[0]", consents=("Consent/secret",)), ["p1"])
    assert reason == "a Consent of Patient/p1 denies it"
