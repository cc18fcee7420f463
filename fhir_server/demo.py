"""`fhir-server demo`: the story of a patient and her care team, played step by step over HTTP.

Claire Martin's record is opened by a platform; she grants her GP, authorises then blocks a cardiologist,
grants her osteopath read-only access, masks a document, revokes the osteopath, an emergency physician
breaks the glass, and Claire lists who accessed her record. Every step prints the FHIR request and its
outcome, and is checked against what docs/consent.md, docs/audit.md promise: any difference makes the exit
status 1.

The story assumes the default opt-in policy (`FHIR_CONSENT_DEFAULT=deny`). Without `--base-url` the
demo starts its own server on the embedded database in a temporary directory (`local_server`), which
the conformance launcher reuses. Tokens are minted with the development key of the server's
FHIR_DATA_DIR (docs/configuration.md, docs/tokens.md).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

from fhir_server.auth.devkeys import mint_token

FHIR_JSON = "application/fhir+json"
JSON_PATCH = "application/json-patch+json"
G15 = "https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante"
R95 = "https://mos.esante.gouv.fr/NOS/TRE_R95-UsagerTitre/FHIR/TRE-R95-UsagerTitre"
A07 = "https://mos.esante.gouv.fr/NOS/TRE_A07-StatutVisibiliteDocument/FHIR/TRE-A07-StatutVisibiliteDocument"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
INS_NIR_TEST = "urn:oid:1.2.250.1.213.1.4.10"
IRCP = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]}
SERVER_VARIABLES = (
    "FHIR_MONGODB_URI",
    "FHIR_BASE_URL",
    "FHIR_AUTH_JWKS",
    "FHIR_AUTH_ISSUER",
    "FHIR_AUTH_AUDIENCE",
    "FHIR_CONSENT_DEFAULT",
)


# -- a server of our own ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalServer:
    base_url: str
    data_dir: Path
    log: Path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def local_server(
    *, consent_default: str = "deny", log_dir: Path | None = None, startup_timeout: float = 180.0
) -> Iterator[LocalServer]:
    """`fhir-server serve` on a free port, on the embedded database in a temporary FHIR_DATA_DIR; stopped
    (and its files removed) on exit. Its log goes to `log_dir/server.log` (default: the temporary dir)."""
    with tempfile.TemporaryDirectory(prefix="fhir-server-") as temporary:
        data_dir = Path(temporary) / "data"
        port = _free_port()
        env = {key: value for key, value in os.environ.items() if key not in SERVER_VARIABLES}
        env.update({"FHIR_DATA_DIR": str(data_dir), "FHIR_CONSENT_DEFAULT": consent_default})
        log = (log_dir or Path(temporary)) / "server.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as output:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fhir_server.cli",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
            try:
                origin = f"http://127.0.0.1:{port}"
                _wait_healthy(origin, process, log, startup_timeout)
                yield LocalServer(f"{origin}/fhir", data_dir, log)
            finally:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _wait_healthy(origin: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"fhir-server serve exited with {process.returncode}:\n{_tail(log)}")
        try:
            if httpx.get(f"{origin}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"fhir-server did not become healthy within {timeout:.0f} s:\n{_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(encoding="utf-8", errors="replace")[-3000:]


# -- the cast ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    name: str
    subject: str
    scopes: tuple[str, ...]
    fhir_user: str | None = None
    profession: tuple[str, str] | None = None
    purpose: str | None = None
    npi: str | None = None

    def claims(self) -> dict[str, Any] | None:
        if self.profession is None:
            return None
        claims: dict[str, Any] = {
            "subject_name": self.name,
            "subject_role": [{"system": self.profession[0], "code": self.profession[1]}],
        }
        if self.purpose:
            claims["purpose_of_use"] = [{"system": ACT_REASON, "code": self.purpose}]
        if self.npi:
            claims["national_provider_identifier"] = self.npi
        return claims

    def actor(self) -> dict[str, Any]:
        return {"role": IRCP, "reference": {"reference": self.fhir_user, "display": self.name}}


def _practitioner(
    name: str,
    practitioner: str,
    rpps: str,
    *,
    profession: tuple[str, str] = (G15, "10"),
    purpose: str = "TREAT",
) -> Person:
    return Person(
        name,
        practitioner,
        ("user/*.cruds",),
        fhir_user=f"Practitioner/{practitioner}",
        profession=profession,
        purpose=purpose,
        npi=f"8{rpps}",
    )


PLATFORM = Person("Plateforme régionale", "demo-platform", ("system/*.cruds",))
GP = _practitioner("Dr Jeanne Durand (médecin traitant)", "dr-jeanne-durand", "10001234567")
CARDIOLOGIST = _practitioner("Dr Henri Roux (cardiologue)", "dr-henri-roux", "10003456789")
OSTEOPATH = _practitioner(
    "Lucie Bernard (ostéopathe)", "osteo-lucie-bernard", "10004567890", profession=(R95, "71")
)
EMERGENCY = _practitioner("Dr Samir Haddad (urgentiste)", "dr-samir-haddad", "10005678901")
EMERGENCY_BTG = _practitioner("Dr Samir Haddad (urgentiste)", "dr-samir-haddad", "10005678901", purpose="BTG")


# -- the story --------------------------------------------------------------------------------------


@dataclass
class Story:
    """The running story: the server, the patient once created, what was made along the way."""

    client: httpx.Client
    data_dir: Path
    audience: str
    out: TextIO
    patient_id: str = ""
    made: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    number: int = 0

    def token(self, person: Person | None) -> str:
        if person is None:
            return mint_token(
                self.data_dir,
                audience=self.audience,
                subject=f"patient-{self.patient_id}",
                scopes=["patient/*.cruds"],
                client_id="demo-patient-app",
                fhir_user=f"Patient/{self.patient_id}",
                patient=self.patient_id,
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

    def step(
        self,
        title: str,
        who: Person | None,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        expect: int,
        check: Callable[[dict[str, Any]], tuple[bool, str]] | None = None,
    ) -> dict[str, Any]:
        """One request, printed with its outcome; a status or check other than expected is a failure."""
        self.number += 1
        actor = who.name if who else "Claire Martin (patiente)"
        self.out.write(f"\n{self.number:>2}. {title}\n    [{actor}]\n")
        query = "?" + "&".join(f"{key}={value}" for key, value in params.items()) if params else ""
        self.out.write(f"    → {method} /fhir/{path}{query}\n")
        if body is not None:
            self.out.write(f"      {_short(body)}\n")
        headers = {"Authorization": f"Bearer {self.token(who)}", "Accept": FHIR_JSON}
        content = None
        if body is not None:
            headers["Content-Type"] = JSON_PATCH if method == "PATCH" else FHIR_JSON
            content = json.dumps(body).encode()
        response = self.client.request(method, path, params=params, content=content, headers=headers)
        payload = _json(response)
        ok, summary = response.status_code == expect, _summary(payload)
        if ok and check is not None:
            ok, summary = check(payload)
        first, _, rest = summary.partition("\n")
        mark = "✓" if ok else "✗ (expected " + str(expect) + ")"
        self.out.write(f"    ← {response.status_code} {response.reason_phrase}: {first} {mark}\n")
        if rest:
            self.out.write(rest + "\n")
        if not ok:
            self.failures.append(
                f"step {self.number} ({title}): expected {expect}, got {response.status_code} {summary}"
            )
        return payload


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        payload = response.json()
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}


def _short(body: Any) -> str:
    text = json.dumps(body, ensure_ascii=False)
    return text if len(text) <= 150 else text[:147] + "..."


def _summary(payload: Mapping[str, Any]) -> str:
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


def _documents(
    count: int | None = None, *, at_least: int | None = None
) -> Callable[[dict[str, Any]], tuple[bool, str]]:
    def check(bundle: dict[str, Any]) -> tuple[bool, str]:
        found = _matches(bundle)
        titles = ", ".join(str(item.get("description", item.get("id"))) for item in found) or "none"
        ok = len(found) == count if count is not None else len(found) >= (at_least or 0)
        return ok, f"{len(found)} document(s): {titles}"

    return check


def _nir() -> str:
    body = "2" + str(uuid.uuid4().int % 10**12).zfill(12)
    return f"{body}{97 - int(body) % 97:02d}"


def _patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"use": "official", "system": INS_NIR_TEST, "value": _nir()}],
        "name": [{"use": "official", "family": "Martin", "given": ["Claire"]}],
        "gender": "female",
        "birthDate": "1984-03-12",
        "address": [{"city": "Paris", "postalCode": "75006", "country": "FRA"}],
    }


def _document(patient_id: str, *, loinc: str, title: str, text: str) -> dict[str, Any]:
    raw = text.encode("utf-8")
    return {
        "resourceType": "DocumentReference",
        "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{uuid.uuid4()}"},
        "status": "current",
        "type": {"coding": [{"system": "http://loinc.org", "code": loinc, "display": title}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "date": "2026-09-14T10:20:00+02:00",
        "author": [{"reference": GP.fhir_user, "display": GP.name}],
        "description": title,
        "securityLabel": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}]}
        ],
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain",
                    "language": "fr-FR",
                    "data": base64.b64encode(raw).decode(),
                    "size": len(raw),
                    "hash": base64.b64encode(hashlib.sha1(raw).digest()).decode(),
                    "title": title,
                }
            }
        ],
    }


def _consent(patient_id: str, provision: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient_id}"},
        "dateTime": "2026-09-01T09:00:00+02:00",
        "performer": [{"reference": f"Patient/{patient_id}"}],
        "policy": [{"uri": "https://profiles.ihe.net/ITI/PCF/Policy-basic-normal"}],
        "provision": provision,
    }


def _who(agent: Mapping[str, Any], patient_id: str) -> str:
    who = agent.get("who") or {}
    reference = str(who.get("reference") or "")
    if reference.endswith(f"Patient/{patient_id}"):
        return "Claire Martin (patiente)"
    return str(who.get("display") or reference or (who.get("identifier") or {}).get("value") or "?")


def _access_log(patient_id: str) -> Callable[[dict[str, Any]], tuple[bool, str]]:
    """Claire's view of her AuditEvents, newest first; the break-the-glass access must be flagged."""

    def check(bundle: dict[str, Any]) -> tuple[bool, str]:
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
                f"{_who(user, patient_id)}{flag}"
            )
        table = "".join(f"\n        {row}" for row in rows[:40])
        return broke_glass, f"{len(rows)} access(es), break-the-glass flagged: {broke_glass}{table}"

    return check


def play(story: Story) -> None:
    documents = "DocumentReference"
    patient = story.step(
        "The regional platform opens Claire Martin's record (INS test identity)",
        PLATFORM,
        "POST",
        "Patient",
        body=_patient(),
        expect=201,
    )
    story.patient_id = str(patient.get("id", ""))
    if not story.patient_id:
        return
    record = {"patient": f"Patient/{story.patient_id}"}
    pid = story.patient_id
    story.step(
        "Dr Durand looks for Claire's record before any consent: hidden (opt-in)",
        GP,
        "GET",
        f"Patient/{pid}",
        expect=404,
    )
    story.step(
        "Claire grants her GP, Dr Durand, access to her record",
        None,
        "POST",
        "Consent",
        expect=201,
        body=_consent(pid, {"type": "permit", "actor": [GP.actor()]}),
    )
    story.step("Dr Durand now reads Claire's record", GP, "GET", f"Patient/{pid}", expect=200)
    note = story.step(
        "Dr Durand files a consultation note",
        GP,
        "POST",
        documents,
        expect=201,
        body=_document(
            pid, loinc="11488-4", title="Consultation note", text="Toux persistante, auscultation normale."
        ),
    )
    story.step(
        "Dr Durand files a lab report",
        GP,
        "POST",
        documents,
        expect=201,
        body=_document(pid, loinc="11502-2", title="Laboratory report", text="Hémoglobine 13,4 g/dL."),
    )
    story.step(
        "Dr Durand finds Claire's documents",
        GP,
        "GET",
        documents,
        params=record,
        expect=200,
        check=_documents(2),
    )
    story.step(
        "Dr Roux, a cardiologist Claire has not authorised, finds nothing",
        CARDIOLOGIST,
        "GET",
        documents,
        params=record,
        expect=200,
        check=_documents(0),
    )
    story.step(
        "Claire authorises Dr Roux to read her record",
        None,
        "POST",
        "Consent",
        expect=201,
        body=_consent(
            pid,
            {"type": "permit", "actor": [CARDIOLOGIST.actor()], "action": [{"coding": [{"code": "access"}]}]},
        ),
    )
    story.step(
        "Dr Roux now finds her documents",
        CARDIOLOGIST,
        "GET",
        documents,
        params=record,
        expect=200,
        check=_documents(2),
    )
    story.step(
        "Claire blocks Dr Roux: a denial wins over her earlier authorisation",
        None,
        "POST",
        "Consent",
        expect=201,
        body=_consent(pid, {"type": "deny", "actor": [CARDIOLOGIST.actor()]}),
    )
    story.step(
        "Dr Roux finds nothing any more",
        CARDIOLOGIST,
        "GET",
        documents,
        params=record,
        expect=200,
        check=_documents(0),
    )
    osteo = story.step(
        "Claire grants her osteopath, Lucie Bernard, access to her record",
        None,
        "POST",
        "Consent",
        expect=201,
        body=_consent(pid, {"type": "permit", "actor": [OSTEOPATH.actor()]}),
    )
    story.step(
        "Lucie Bernard reads Claire's documents",
        OSTEOPATH,
        "GET",
        documents,
        params=record,
        expect=200,
        check=_documents(2),
    )
    story.step(
        "Lucie Bernard tries to file a document: an osteopath may only read",
        OSTEOPATH,
        "POST",
        documents,
        expect=403,
        body=_document(pid, loinc="11488-4", title="Bilan ostéopathique", text="Bilan."),
    )
    story.step(
        "Claire masks her consultation note from professionals (DMP: MASQUE_PS)",
        None,
        "PATCH",
        f"DocumentReference/{note.get('id')}",
        expect=200,
        body=[
            {
                "op": "replace",
                "path": "/securityLabel/0",
                "value": {"coding": [{"system": A07, "code": "MASQUE_PS"}]},
            }
        ],
    )
    story.step(
        "Lucie Bernard no longer sees the masked note",
        OSTEOPATH,
        "GET",
        documents,
        params=record,
        expect=200,
        check=_documents(1),
    )
    story.step(
        "Dr Durand, its author, still reads the masked note",
        GP,
        "GET",
        f"DocumentReference/{note.get('id')}",
        expect=200,
    )
    story.step(
        "Claire revokes Lucie Bernard's access (status inactive)",
        None,
        "PATCH",
        f"Consent/{osteo.get('id')}",
        expect=200,
        body=[{"op": "replace", "path": "/status", "value": "inactive"}],
    )
    story.step(
        "Lucie Bernard finds nothing any more",
        OSTEOPATH,
        "GET",
        documents,
        params=record,
        expect=200,
        check=_documents(0),
    )
    story.step(
        "At the emergency room, Dr Haddad (not authorised) finds nothing",
        EMERGENCY,
        "GET",
        documents,
        params=record,
        expect=200,
        check=_documents(0),
    )
    story.step(
        "Dr Haddad breaks the glass (purpose of use BTG) and reads the record",
        EMERGENCY_BTG,
        "GET",
        documents,
        params=record,
        expect=200,
        check=_documents(at_least=1),
    )
    story.step(
        "Claire lists who accessed her record",
        None,
        "GET",
        "AuditEvent",
        params={"patient": f"Patient/{pid}", "_count": "200"},
        expect=200,
        check=_access_log(pid),
    )


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
