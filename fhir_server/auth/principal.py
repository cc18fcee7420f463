"""Who is asking: the verified token claims of DESIGN §7 (SMART v2 + IHE IUA) as one immutable value.

https://profiles.ihe.net/ITI/IUA/index.html#3714221-jwt-iua-extensions
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fhir_server.auth.scopes import Scope, parse_scopes

PURPOSE_OF_USE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
BREAK_THE_GLASS = "BTG"


@dataclass(frozen=True)
class Coding:
    system: str | None
    code: str | None
    display: str | None = None

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Coding:
        return cls(value.get("system"), value.get("code"), value.get("display"))

    def to_fhir(self) -> dict[str, str]:
        out = {"system": self.system, "code": self.code, "display": self.display}
        return {key: item for key, item in out.items() if item is not None}

    def matches(self, other: Coding) -> bool:
        """Same code; same system when both state one."""
        if self.code != other.code:
            return False
        return self.system is None or other.system is None or self.system == other.system


@dataclass(frozen=True)
class Principal:
    """The authenticated caller. Built only from a verified token (auth/tokens.py)."""

    subject: str
    client_id: str
    scopes: tuple[Scope, ...]
    issuer: str | None = None
    token_id: str | None = None
    fhir_user: str | None = None
    """Relative reference of the user's resource: `Practitioner/123`, `Patient/abc`."""
    patient: str | None = None
    """Id of the patient in context (required for `patient/` scopes)."""
    name: str | None = None
    roles: tuple[Coding, ...] = ()
    organization: str | None = None
    organization_id: str | None = None
    purpose_of_use: tuple[Coding, ...] = ()
    national_provider_identifier: str | None = None
    person_id: str | None = None
    network_address: str | None = None

    @property
    def is_patient(self) -> bool:
        """A patient acting for their own record: patient-context scopes and no professional identity."""
        if self.patient is None or not any(scope.context == "patient" for scope in self.scopes):
            return False
        return self.fhir_user is None or self.fhir_user == f"Patient/{self.patient}"

    @property
    def is_system(self) -> bool:
        """A backend client (regional platform, harness) with `system/` scopes and no user."""
        return any(scope.context == "system" for scope in self.scopes) and not self.is_patient

    @property
    def breaks_the_glass(self) -> bool:
        return any(c.code == BREAK_THE_GLASS for c in self.purpose_of_use)

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any], *, network_address: str | None = None) -> Principal:
        iua: Mapping[str, Any] = (claims.get("extensions") or {}).get("ihe_iua") or {}
        fhir_user = claims.get("fhirUser")
        if isinstance(fhir_user, str) and "/" in fhir_user:
            parts = fhir_user.rstrip("/").split("/")
            fhir_user = f"{parts[-2]}/{parts[-1]}"
        return cls(
            subject=str(claims.get("sub", "")),
            client_id=str(claims.get("client_id", "")),
            scopes=parse_scopes(str(claims.get("scope", ""))),
            issuer=claims.get("iss"),
            token_id=claims.get("jti"),
            fhir_user=fhir_user,
            patient=claims.get("patient"),
            name=iua.get("subject_name"),
            roles=tuple(Coding.from_json(c) for c in iua.get("subject_role") or () if isinstance(c, Mapping)),
            organization=iua.get("subject_organization"),
            organization_id=iua.get("subject_organization_id"),
            purpose_of_use=tuple(
                Coding.from_json(c) for c in iua.get("purpose_of_use") or () if isinstance(c, Mapping)
            ),
            national_provider_identifier=iua.get("national_provider_identifier"),
            person_id=iua.get("person_id"),
            network_address=network_address,
        )
