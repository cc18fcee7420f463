"""What the story checks in an answer beyond its status, and the one-line summary it prints."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fhir_server.demo.records import Made

Check = Callable[[dict[str, Any], Made], tuple[bool, str]]
"""An answer's body and what the story made -> whether it is as promised, and what to print."""


def summary(payload: Mapping[str, Any]) -> str:
    kind = payload.get("resourceType")
    if kind == "OperationOutcome":
        issues = payload.get("issue") or [{}]
        return str(issues[0].get("diagnostics") or issues[0].get("code") or "OperationOutcome")
    if kind == "Bundle":
        return f"{len(_matches(payload))} result(s)"
    if kind:
        return f"{kind}/{payload.get('id')} version {(payload.get('meta') or {}).get('versionId')}"
    return "no body"


def _matches(bundle: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        entry["resource"]
        for entry in bundle.get("entry") or []
        if "resource" in entry and (entry.get("search") or {}).get("mode", "match") == "match"
    ]


def documents(count: int | None = None, *, at_least: int | None = None) -> Check:
    """The searchset holds `count` documents (or `at_least` that many), listed by title."""

    def check(bundle: dict[str, Any], _made: Made) -> tuple[bool, str]:
        found = _matches(bundle)
        titles = ", ".join(str(item.get("description", item.get("id"))) for item in found) or "none"
        ok = len(found) == count if count is not None else len(found) >= (at_least or 0)
        return ok, f"{len(found)} document(s): {titles}"

    return check


def _who(agent: Mapping[str, Any], patient_id: str) -> str:
    who = agent.get("who") or {}
    reference = str(who.get("reference") or "")
    if reference.endswith(f"Patient/{patient_id}"):
        return "Claire Martin (patiente)"
    return str(who.get("display") or reference or (who.get("identifier") or {}).get("value") or "?")


def access_log(bundle: dict[str, Any], made: Made) -> tuple[bool, str]:
    """Claire's view of her AuditEvents, newest first; the break-the-glass access must be flagged."""
    rows = []
    broke_glass = False
    events = sorted(_matches(bundle), key=lambda event: str(event.get("recorded", "")), reverse=True)
    for event in events:
        agents = event.get("agent") or []
        user = next((agent for agent in agents if agent.get("requestor")), agents[0] if agents else {})
        purposes = {
            coding.get("code")
            for purpose in user.get("purposeOfUse") or []
            for coding in purpose.get("coding") or []
        }
        btg = "BTG" in purposes
        broke_glass = broke_glass or btg
        subtype = ",".join(str(coding.get("code")) for coding in event.get("subtype") or [])
        flag = "  ⚠ bris de glace" if btg else ""
        rows.append(
            f"{str(event.get('recorded', ''))[:19]}  {subtype:<11} outcome {event.get('outcome')}  "
            f"{_who(user, made['patient'])}{flag}"
        )
    table = "".join(f"\n        {row}" for row in rows[:40])
    return broke_glass, f"{len(rows)} access(es), break-the-glass flagged: {broke_glass}{table}"
