"""The black-box harness: who calls (roles and their tokens), an HTTP client that records every
exchange, and patient records built through the API only.

Nothing here imports the server except `fhir_server.auth.devkeys`, and only to mint development
tokens with the key of a server's FHIR_DATA_DIR (`--dev-key-dir`). docs/configuration.md,
docs/tokens.md, docs/consent.md, docs/audit.md, STANDARDS §4, §6.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

FHIR_JSON = "application/fhir+json"
JSON_PATCH = "application/json-patch+json"
G15 = "https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante"
R95 = "https://mos.esante.gouv.fr/NOS/TRE_R95-UsagerTitre/FHIR/TRE-R95-UsagerTitre"
A07 = "https://mos.esante.gouv.fr/NOS/TRE_A07-StatutVisibiliteDocument/FHIR/TRE-A07-StatutVisibiliteDocument"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
CONSENT_ACTION = "http://terminology.hl7.org/CodeSystem/consentaction"
INS_NIR_TEST = "urn:oid:1.2.250.1.213.1.4.10"
IDNPS = "urn:oid:1.2.250.1.71.4.2.1"
LOINC = "http://loinc.org"
IRCP = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]}

# -- roles ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Role:
    """A caller of the scenarios: what its token says (docs/tokens.md) and how consents name it."""

    name: str
    subject: str
    scopes: tuple[str, ...]
    fhir_user: str | None = None
    profession: tuple[str, str] | None = None
    purpose: str | None = None
    npi: str | None = None
    display: str = ""
    client_id: str = "conformance-suite"

    def iua(self) -> dict[str, Any]:
        claims: dict[str, Any] = {"subject_name": self.display or self.subject}
        if self.profession:
            claims["subject_role"] = [{"system": self.profession[0], "code": self.profession[1]}]
        if self.purpose:
            claims["purpose_of_use"] = [{"system": ACT_REASON, "code": self.purpose}]
        if self.npi:
            claims["national_provider_identifier"] = self.npi
        return claims


def _professional(
    name: str, practitioner: str, display: str, *, profession: tuple[str, str], purpose: str, npi: str
) -> Role:
    return Role(
        name,
        practitioner,
        ("user/*.cruds",),
        fhir_user=f"Practitioner/{practitioner}",
        profession=profession,
        purpose=purpose,
        npi=npi,
        display=display,
    )


MEDECIN = (G15, "10")
ROLES: dict[str, Role] = {
    role.name: role
    for role in (
        Role("system", "conformance-platform", ("system/*.cruds",), client_id="conformance-platform"),
        _professional(
            "gp",
            "conf-gp-durand",
            "Dr Jeanne Durand",
            profession=MEDECIN,
            purpose="TREAT",
            npi="810001234567",
        ),
        _professional(
            "specialist",
            "conf-cardio-lefebvre",
            "Dr Marc Lefebvre",
            profession=MEDECIN,
            purpose="TREAT",
            npi="810002345678",
        ),
        _professional(
            "stranger",
            "conf-stranger-roux",
            "Dr Henri Roux",
            profession=MEDECIN,
            purpose="TREAT",
            npi="810003456789",
        ),
        _professional(
            "osteopath",
            "conf-osteo-bernard",
            "Lucie Bernard",
            profession=(R95, "71"),
            purpose="TREAT",
            npi="810004567890",
        ),
        _professional(
            "emergency",
            "conf-urg-haddad",
            "Dr Samir Haddad",
            profession=MEDECIN,
            purpose="TREAT",
            npi="810005678901",
        ),
        _professional(
            "emergency_btg",
            "conf-urg-haddad",
            "Dr Samir Haddad",
            profession=MEDECIN,
            purpose="BTG",
            npi="810005678901",
        ),
        _professional(
            "nurse_btg",
            "conf-ide-petit",
            "Anne Petit",
            profession=(G15, "60"),
            purpose="BTG",
            npi="810006789012",
        ),
        Role("reader", "conformance-reader", ("user/Patient.rs",), fhir_user="Practitioner/conf-reader"),
    )
}
PATIENT_ROLE = "patient"


class MissingToken(Exception):
    """The configured token source has no token for a role: the test is skipped, not failed."""


class TokenSource(Protocol):
    def token(self, role: str, *, patient: str | None = None) -> str: ...

    def fixed_patient(self) -> str | None:
        """The one patient whose token the source holds, when it cannot mint for any patient."""
        ...


@dataclass
class DevKeySource:
    """Mints tokens with the development key of a server's FHIR_DATA_DIR (docs/configuration.md)."""

    data_dir: Path
    audience: str

    def token(self, role: str, *, patient: str | None = None) -> str:
        from fhir_server.auth.devkeys import mint_token

        if role == PATIENT_ROLE:
            if patient is None:
                raise MissingToken("a patient token needs a patient id")
            return mint_token(
                self.data_dir,
                audience=self.audience,
                subject=f"patient-{patient}",
                scopes=["patient/*.cruds"],
                client_id="conformance-patient-app",
                fhir_user=f"Patient/{patient}",
                patient=patient,
                lifetime_seconds=1800,
            )
        spec = ROLES[role]
        return mint_token(
            self.data_dir,
            audience=self.audience,
            subject=spec.subject,
            scopes=list(spec.scopes),
            client_id=spec.client_id,
            fhir_user=spec.fhir_user,
            iua=spec.iua() if spec.fhir_user else None,
            lifetime_seconds=1800,
        )

    def fixed_patient(self) -> str | None:
        return None


@dataclass
class FileSource:
    """`{"system": "<jwt>", "gp": "<jwt>", ..., "patient": {"id": "<patient id>", "token": "<jwt>"}}`."""

    tokens: Mapping[str, Any]

    @classmethod
    def load(cls, path: Path) -> FileSource:
        return cls(json.loads(path.read_text(encoding="utf-8")))

    def token(self, role: str, *, patient: str | None = None) -> str:
        if role == PATIENT_ROLE and patient not in (None, self.fixed_patient()):
            raise MissingToken(f"the tokens file holds no token for Patient/{patient}")
        entry = self.tokens.get(role)
        if isinstance(entry, Mapping):
            entry = entry.get("token")
        if not isinstance(entry, str) or not entry:
            raise MissingToken(f"the tokens file has no token for role {role!r}")
        return entry

    def fixed_patient(self) -> str | None:
        entry = self.tokens.get(PATIENT_ROLE)
        return str(entry["id"]) if isinstance(entry, Mapping) and entry.get("id") else None


@dataclass
class CommandSource:
    """Runs a command template (`{role}`, `{patient}`, `{sub}`, `{fhir_user}`, `{scopes}`, `{profession}`,
    `{purpose}`, `{npi}` substituted) and reads the token on its standard output."""

    template: str
    cache: dict[tuple[str, str | None], str] = field(default_factory=dict)

    def token(self, role: str, *, patient: str | None = None) -> str:
        key = (role, patient)
        if key not in self.cache:
            spec = ROLES.get(role)
            values = {
                "role": role,
                "patient": patient or "",
                "sub": spec.subject if spec else f"patient-{patient}",
                "fhir_user": (spec.fhir_user if spec else f"Patient/{patient}") or "",
                "scopes": " ".join(spec.scopes) if spec else "patient/*.cruds",
                "profession": "|".join(spec.profession) if spec and spec.profession else "",
                "purpose": (spec.purpose if spec else "") or "",
                "npi": (spec.npi if spec else "") or "",
            }
            argv = [part.format(**values) for part in shlex.split(self.template)]
            done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
            if done.returncode != 0 or not done.stdout.strip():
                raise MissingToken(f"token command failed for role {role!r}: {done.stderr.strip()[:200]}")
            self.cache[key] = done.stdout.strip()
        return self.cache[key]

    def fixed_patient(self) -> str | None:
        return None


# -- recorded HTTP ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exchange:
    method: str
    url: str
    request_headers: tuple[tuple[str, str], ...]
    request_body: str
    status: int
    response_headers: tuple[tuple[str, str], ...]
    response_body: str


RECORDED: list[Exchange] = []
"""The exchanges of the running test (reset by the conftest before each test)."""

BODY_LIMIT = 6000


def _text(content: bytes) -> str:
    text = content.decode("utf-8", errors="replace")
    return text if len(text) <= BODY_LIMIT else text[:BODY_LIMIT] + f"\n… ({len(text) - BODY_LIMIT} more)"


def _redacted(headers: httpx.Headers) -> tuple[tuple[str, str], ...]:
    return tuple(
        (name, value[:20] + "…" if name.lower() == "authorization" else value)
        for name, value in headers.items()
    )


def _record(response: httpx.Response) -> None:
    response.read()
    request = response.request
    RECORDED.append(
        Exchange(
            request.method,
            str(request.url),
            _redacted(request.headers),
            _text(request.content),
            response.status_code,
            tuple(response.headers.items()),
            _text(response.content),
        )
    )


class Fhir:
    """The server under test, called as one of the roles (or anonymously with `who=None`)."""

    def __init__(self, base_url: str, tokens: TokenSource, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.tokens = tokens
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout, event_hooks={"response": [_record]})

    def close(self) -> None:
        self.http.close()

    def headers(self, who: str | None, *, patient: str | None = None, **extra: str) -> dict[str, str]:
        headers = {"Accept": FHIR_JSON, **{key.replace("_", "-"): value for key, value in extra.items()}}
        if who is not None:
            headers["Authorization"] = f"Bearer {self.tokens.token(who, patient=patient)}"
        return headers

    def request(
        self,
        method: str,
        path: str,
        *,
        who: str | None,
        patient: str | None = None,
        json_body: Any = None,
        content: bytes | None = None,
        content_type: str = FHIR_JSON,
        params: Sequence[tuple[str, str]] | Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        sent = self.headers(who, patient=patient)
        if json_body is not None or content is not None:
            sent["Content-Type"] = content_type
        sent.update(headers or {})
        body = json.dumps(json_body).encode() if json_body is not None else content
        return self.http.request(method, path, content=body, params=params, headers=sent)

    def get(self, path: str, *, who: str | None, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, who=who, **kwargs)

    def post(self, path: str, body: Any, *, who: str | None, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, who=who, json_body=body, **kwargs)

    def put(self, path: str, body: Any, *, who: str | None, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", path, who=who, json_body=body, **kwargs)

    def patch(
        self, path: str, operations: list[dict[str, Any]], *, who: str | None, **kwargs: Any
    ) -> httpx.Response:
        return self.request("PATCH", path, who=who, json_body=operations, content_type=JSON_PATCH, **kwargs)

    def delete(self, path: str, *, who: str | None, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", path, who=who, **kwargs)

    def search(self, path: str, params: Any, *, who: str | None, **kwargs: Any) -> dict[str, Any]:
        """A search that must succeed: the searchset Bundle."""
        response = self.get(path, who=who, params=params, **kwargs)
        assert response.status_code == 200, (
            f"search {path} {params}: {response.status_code} {response.text[:300]}"
        )
        bundle = response.json()
        assert bundle.get("resourceType") == "Bundle" and bundle.get("type") == "searchset", bundle
        return dict(bundle)


def entries(bundle: Mapping[str, Any], *, mode: str = "match") -> list[dict[str, Any]]:
    return [
        entry["resource"]
        for entry in bundle.get("entry") or []
        if (entry.get("search") or {}).get("mode", "match") == mode and "resource" in entry
    ]


def ids(bundle: Mapping[str, Any]) -> set[str]:
    return {resource["id"] for resource in entries(bundle)}


def is_outcome(response: httpx.Response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    issues = body.get("issue") if isinstance(body, dict) else None
    return (
        body.get("resourceType") == "OperationOutcome"
        and bool(issues)
        and all(issue.get("severity") and issue.get("code") for issue in issues)
    )


# -- resources --------------------------------------------------------------------------------------


def unique() -> str:
    return uuid.uuid4().hex[:12]


def nir_test_value() -> str:
    """A test-range NIR (INS-NIR-TEST): 13 digits and the key 97 - (n mod 97)."""
    body = "2" + str(uuid.uuid4().int % 10**12).zfill(12)
    return f"{body}{97 - int(body) % 97:02d}"


def patient_resource(*, family: str, given: str = "Claire", nir: str | None = None) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"use": "official", "system": INS_NIR_TEST, "value": nir or nir_test_value()}],
        "active": True,
        "name": [{"use": "official", "family": family, "given": [given]}],
        "gender": "female",
        "birthDate": "1984-03-12",
    }


def document_resource(
    patient: str,
    *,
    author: str | None,
    loinc: str = "11488-4",
    date: str = "2026-09-14T10:20:00+02:00",
    labels: Sequence[tuple[str, str]] = (),
    description: str = "Compte rendu de consultation",
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{uuid.uuid4()}"},
        "status": "current",
        "type": {"coding": [{"system": LOINC, "code": loinc}]},
        "subject": {"reference": f"Patient/{patient}"},
        "date": date,
        "description": description,
        "content": [{"attachment": {"contentType": "text/plain", "url": f"urn:uuid:{uuid.uuid4()}"}}],
    }
    if author:
        resource["author"] = [{"reference": author}]
    if labels:
        resource["securityLabel"] = [
            {"coding": [{"system": system, "code": code}]} for system, code in labels
        ]
    return resource


def actor(role: str) -> dict[str, Any]:
    spec = ROLES[role]
    return {"role": IRCP, "reference": {"reference": spec.fhir_user, "display": spec.display}}


def consent_resource(patient: str, provision: dict[str, Any], *, status: str = "active") -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "status": status,
        "scope": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
            ]
        },
        "category": [{"coding": [{"system": LOINC, "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient}"},
        "dateTime": "2026-09-01T09:00:00+02:00",
        "performer": [{"reference": f"Patient/{patient}"}],
        "policy": [{"uri": "https://profiles.ihe.net/ITI/PCF/Policy-basic-normal"}],
        "provision": provision,
    }


class Record:
    """One patient's record built through the API: the Patient (by the system role), then Consents
    (by the patient) and documents (by professionals). `close()` removes the Consents and documents it
    made, so a record shared across scenarios (a tokens file names one patient) starts clean."""

    def __init__(self, fhir: Fhir, *, patient_id: str | None = None) -> None:
        self.fhir = fhir
        family = f"Conformance{unique()}"
        if patient_id is None:
            response = fhir.post("Patient", patient_resource(family=family), who="system")
            assert response.status_code == 201, f"creating the scenario's Patient: {response.text[:300]}"
            self.patient_id = str(response.json()["id"])
        else:
            resource = {**patient_resource(family=family), "id": patient_id}
            response = fhir.put(f"Patient/{patient_id}", resource, who="system")
            assert response.status_code in (200, 201), (
                f"preparing Patient/{patient_id}: {response.text[:300]}"
            )
            self.patient_id = patient_id
        self.patient = response.json()
        self.consents: list[str] = []
        self.documents: list[tuple[str, str]] = []

    @property
    def reference(self) -> str:
        return f"Patient/{self.patient_id}"

    def as_patient(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.fhir.request(method, path, who=PATIENT_ROLE, patient=self.patient_id, **kwargs)

    def consent(self, provision: dict[str, Any], *, status: str = "active") -> str:
        response = self.as_patient(
            "POST", "Consent", json_body=consent_resource(self.patient_id, provision, status=status)
        )
        assert response.status_code == 201, (
            f"the patient records a Consent: {response.status_code} {response.text[:300]}"
        )
        consent_id = str(response.json()["id"])
        self.consents.append(consent_id)
        return consent_id

    def grant(self, role: str, **criteria: Any) -> str:
        return self.consent({"type": "permit", "actor": [actor(role)], **criteria})

    def document(self, *, by: str = "gp", **kwargs: Any) -> dict[str, Any]:
        author = ROLES[by].fhir_user
        response = self.fhir.post(
            "DocumentReference", document_resource(self.patient_id, author=author, **kwargs), who=by
        )
        assert response.status_code == 201, (
            f"{by} files a document: {response.status_code} {response.text[:300]}"
        )
        created = dict(response.json())
        self.documents.append((by, str(created["id"])))
        return created

    def close(self) -> None:
        for by, document_id in reversed(self.documents):
            self.fhir.delete(f"DocumentReference/{document_id}", who=by)
        for consent_id in reversed(self.consents):
            self.as_patient("DELETE", f"Consent/{consent_id}")


def records(fhir: Fhir, tokens: TokenSource) -> Iterator[Record]:
    """A new record (or the tokens file's patient, cleaned afterwards) with the GP granted."""
    record = Record(fhir, patient_id=tokens.fixed_patient())
    try:
        record.grant("gp")
        yield record
    finally:
        record.close()
