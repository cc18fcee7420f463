"""The story, as data: each step an actor, a request, the promised outcome; played by `play`.

Every step prints the FHIR request and its outcome, and is checked against what docs/consent.md and
docs/audit.md promise: any difference is recorded, and makes `run_demo` return 1.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

from fhir_server.auth.devkeys import mint_token
from fhir_server.demo.cast import CARDIOLOGIST, EMERGENCY, EMERGENCY_BTG, GP, OSTEOPATH, PLATFORM, Person
from fhir_server.demo.checks import Check, access_log, documents, summary
from fhir_server.demo.records import Body, consent, document, fixed, patient

FHIR_JSON = "application/fhir+json"
JSON_PATCH = "application/json-patch+json"
A07 = "https://mos.esante.gouv.fr/NOS/TRE_A07-StatutVisibiliteDocument/FHIR/TRE-A07-StatutVisibiliteDocument"
CLAIRE = "Claire Martin (patiente)"


@dataclass(frozen=True)
class Step:
    """One request of the story and the outcome it must have."""

    title: str
    actor: Person | None
    """Who sends it; None: Claire herself, with her patient app's token."""
    method: str
    path: str
    """Relative to the base; `{name}` is replaced by what the story made (`{patient}`, `{note}`...)."""
    expect: int
    """The HTTP status promised."""
    body: Body | None = None
    params: Mapping[str, str] | None = None
    """Search parameters, their values templates like `path`."""
    check: Check | None = None
    """What the answer's body must also show (with the expected status)."""
    keep: str | None = None
    """Keep the id of the resource this step creates under this name; without it the story stops."""


DOCUMENTS = "DocumentReference"
CLAIRES = {"patient": "Patient/{patient}"}
"""The search parameters of a search within Claire's record."""
MASK = {
    "op": "replace",
    "path": "/securityLabel/0",
    "value": {"coding": [{"system": A07, "code": "MASQUE_PS"}]},
}

STORY: tuple[Step, ...] = (
    Step(
        "The regional platform opens Claire Martin's record (INS test identity)",
        PLATFORM, "POST", "Patient", 201, body=patient, keep="patient",
    ),
    Step(
        "Dr Durand looks for Claire's record before any consent: hidden (opt-in)",
        GP, "GET", "Patient/{patient}", 404,
    ),
    Step(
        "Claire grants her GP, Dr Durand, access to her record",
        None, "POST", "Consent", 201, body=consent({"type": "permit", "actor": [GP.actor()]}),
    ),
    Step("Dr Durand now reads Claire's record", GP, "GET", "Patient/{patient}", 200),
    Step(
        "Dr Durand files a consultation note",
        GP, "POST", DOCUMENTS, 201, keep="note",
        body=document(
            loinc="11488-4", title="Consultation note", text="Toux persistante, auscultation normale."
        ),
    ),
    Step(
        "Dr Durand files a lab report",
        GP, "POST", DOCUMENTS, 201,
        body=document(loinc="11502-2", title="Laboratory report", text="Hémoglobine 13,4 g/dL."),
    ),
    Step(
        "Dr Durand finds Claire's documents",
        GP, "GET", DOCUMENTS, 200, params=CLAIRES, check=documents(2),
    ),
    Step(
        "Dr Roux, a cardiologist Claire has not authorised, finds nothing",
        CARDIOLOGIST, "GET", DOCUMENTS, 200, params=CLAIRES, check=documents(0),
    ),
    Step(
        "Claire authorises Dr Roux to read her record",
        None, "POST", "Consent", 201,
        body=consent(
            {"type": "permit", "actor": [CARDIOLOGIST.actor()], "action": [{"coding": [{"code": "access"}]}]}
        ),
    ),
    Step(
        "Dr Roux now finds her documents",
        CARDIOLOGIST, "GET", DOCUMENTS, 200, params=CLAIRES, check=documents(2),
    ),
    Step(
        "Claire blocks Dr Roux: a denial wins over her earlier authorisation",
        None, "POST", "Consent", 201, body=consent({"type": "deny", "actor": [CARDIOLOGIST.actor()]}),
    ),
    Step(
        "Dr Roux finds nothing any more",
        CARDIOLOGIST, "GET", DOCUMENTS, 200, params=CLAIRES, check=documents(0),
    ),
    Step(
        "Claire grants her osteopath, Lucie Bernard, access to her record",
        None, "POST", "Consent", 201, keep="osteo",
        body=consent({"type": "permit", "actor": [OSTEOPATH.actor()]}),
    ),
    Step(
        "Lucie Bernard reads Claire's documents",
        OSTEOPATH, "GET", DOCUMENTS, 200, params=CLAIRES, check=documents(2),
    ),
    Step(
        "Lucie Bernard tries to file a document: an osteopath may only read",
        OSTEOPATH, "POST", DOCUMENTS, 403,
        body=document(loinc="11488-4", title="Bilan ostéopathique", text="Bilan."),
    ),
    Step(
        "Claire masks her consultation note from professionals (DMP: MASQUE_PS)",
        None, "PATCH", "DocumentReference/{note}", 200, body=fixed([MASK]),
    ),
    Step(
        "Lucie Bernard no longer sees the masked note",
        OSTEOPATH, "GET", DOCUMENTS, 200, params=CLAIRES, check=documents(1),
    ),
    Step(
        "Dr Durand, its author, still reads the masked note",
        GP, "GET", "DocumentReference/{note}", 200,
    ),
    Step(
        "Claire revokes Lucie Bernard's access (status inactive)",
        None, "PATCH", "Consent/{osteo}", 200,
        body=fixed([{"op": "replace", "path": "/status", "value": "inactive"}]),
    ),
    Step(
        "Lucie Bernard finds nothing any more",
        OSTEOPATH, "GET", DOCUMENTS, 200, params=CLAIRES, check=documents(0),
    ),
    Step(
        "At the emergency room, Dr Haddad (not authorised) finds nothing",
        EMERGENCY, "GET", DOCUMENTS, 200, params=CLAIRES, check=documents(0),
    ),
    Step(
        "Dr Haddad breaks the glass (purpose of use BTG) and reads the record",
        EMERGENCY_BTG, "GET", DOCUMENTS, 200, params=CLAIRES, check=documents(at_least=1),
    ),
    Step(
        "Claire lists who accessed her record",
        None, "GET", "AuditEvent", 200,
        params={"patient": "Patient/{patient}", "_count": "200"}, check=access_log,
    ),
)  # fmt: skip


@dataclass
class Story:
    """The running story: the server, what was made along the way, the differences found."""

    client: httpx.Client
    data_dir: Path
    audience: str
    out: TextIO
    made: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    number: int = 0

    def token(self, person: Person | None) -> str:
        if person is None:
            patient_id = self.made.get("patient", "")
            return mint_token(
                self.data_dir,
                audience=self.audience,
                subject=f"patient-{patient_id}",
                scopes=["patient/*.cruds"],
                client_id="demo-patient-app",
                fhir_user=f"Patient/{patient_id}",
                patient=patient_id,
            )
        return mint_token(
            self.data_dir,
            audience=self.audience,
            subject=person.subject,
            scopes=list(person.scopes),
            client_id="demo-ehr" if person.profession else "demo-platform",
            fhir_user=person.fhir_user,
            iua=person.claims(),
        )

    def step(self, step: Step) -> dict[str, Any]:
        """One request, printed with its outcome; a status or check other than expected is a failure."""
        self.number += 1
        path = step.path.format_map(self.made)
        params = {key: value.format_map(self.made) for key, value in (step.params or {}).items()} or None
        body = step.body(self.made) if step.body is not None else None
        actor = step.actor.name if step.actor else CLAIRE
        self.out.write(f"\n{self.number:>2}. {step.title}\n    [{actor}]\n")
        query = "?" + "&".join(f"{key}={value}" for key, value in params.items()) if params else ""
        self.out.write(f"    → {step.method} /fhir/{path}{query}\n")
        headers = {"Authorization": f"Bearer {self.token(step.actor)}", "Accept": FHIR_JSON}
        content = None
        if body is not None:
            self.out.write(f"      {_short(body)}\n")
            headers["Content-Type"] = JSON_PATCH if step.method == "PATCH" else FHIR_JSON
            content = json.dumps(body).encode()
        response = self.client.request(step.method, path, params=params, content=content, headers=headers)
        payload = _json(response)
        self._judge(step, response, payload)
        return payload

    def _judge(self, step: Step, response: httpx.Response, payload: dict[str, Any]) -> None:
        """Print the outcome, marked as promised or not; record a difference as a failure."""
        ok, shown = response.status_code == step.expect, summary(payload)
        if ok and step.check is not None:
            ok, shown = step.check(payload, self.made)
        first, _, rest = shown.partition("\n")
        mark = "✓" if ok else "✗ (expected " + str(step.expect) + ")"
        self.out.write(f"    ← {response.status_code} {response.reason_phrase}: {first} {mark}\n")
        if rest:
            self.out.write(rest + "\n")
        if not ok:
            got = f"got {response.status_code} {shown}"
            self.failures.append(f"step {self.number} ({step.title}): expected {step.expect}, {got}")


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        payload = response.json()
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}


def _short(body: Any) -> str:
    text = json.dumps(body, ensure_ascii=False)
    return text if len(text) <= 150 else text[:147] + "..."


def play(story: Story, steps: tuple[Step, ...] = STORY) -> None:
    """Each step in turn; the story stops when a resource later steps name was not created."""
    for step in steps:
        payload = story.step(step)
        if step.keep is not None:
            made = str(payload.get("id", ""))
            if not made:
                return
            story.made[step.keep] = made


def run_demo(base_url: str, data_dir: Path, *, out: TextIO, audience: str | None = None) -> int:
    """Play the story against `base_url`, minting tokens with the key in `data_dir`; 0 when every step
    had the expected outcome, else 1 (the differences are listed)."""
    with httpx.Client(base_url=base_url.rstrip("/"), timeout=30) as client:
        story = Story(client, data_dir, audience or base_url.rstrip("/"), out)
        out.write(f"fhir-server demo against {base_url}\n")
        play(story)
    if story.failures:
        out.write(
            "\nThe story did not go as expected:\n" + "".join(f"  - {item}\n" for item in story.failures)
        )
        return 1
    out.write(f"\nAll {story.number} steps went as expected.\n")
    return 0
