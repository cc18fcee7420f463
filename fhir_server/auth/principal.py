"""Who is asking: the verified token claims (SMART v2 + IHE IUA) as one immutable value.

Built only from claims whose shape was checked (auth/claims.py): a malformed claim is a 401, never
a claim silently dropped. https://profiles.ihe.net/ITI/IUA/index.html#3714221-jwt-iua-extensions
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fhir_server.auth import claims as checked
from fhir_server.auth.purpose import ACT_REASON, BREAK_THE_GLASS, is_break_the_glass
from fhir_server.auth.scopes import Scope, parse_scopes

PURPOSE_OF_USE_SYSTEM = ACT_REASON


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
        """Same code; same system when both state one (used where matching more restricts more)."""
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
        """The patient acting for their own record: a `patient/` scope and `fhirUser` = that patient.

        Fail closed: a token without `fhirUser` is not the patient, whatever its `patient` claim (a
        professional's SMART EHR launch carries the patient in context, not as its user).
        """
        if self.patient is None or not any(scope.context == "patient" for scope in self.scopes):
            return False
        return self.fhir_user == f"Patient/{self.patient}"

    @property
    def has_user(self) -> bool:
        """A person stands behind the token: a `fhirUser`, a launch patient or an IUA person claim."""
        return any(
            (
                self.fhir_user,
                self.patient,
                self.name,
                self.roles,
                self.national_provider_identifier,
                self.person_id,
            )
        )

    @property
    def is_system(self) -> bool:
        """A backend client (regional platform, harness): `system/` scopes and no user at all.

        SMART Backend Services: `system/` scopes are for a client acting on its own behalf; a user's
        token that carries them gets nothing from them (auth/scopes.py: permitted_scopes).
        """
        return any(scope.context == "system" for scope in self.scopes) and not self.has_user

    @property
    def breaks_the_glass(self) -> bool:
        """The token states the purpose v3-ActReason|BTG (auth/purpose.py: the one matcher)."""
        return any(is_break_the_glass(coding) for coding in self.purpose_of_use)

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any], *, network_address: str | None = None) -> Principal:
        """The principal of verified claims; raises a 401 FhirError when a claim has the wrong shape."""
        iua = checked.iua(claims)
        return cls(
            subject=str(claims.get("sub", "")),
            client_id=str(claims.get("client_id", "")),
            scopes=parse_scopes(str(claims.get("scope", ""))),
            issuer=claims.get("iss"),
            token_id=claims.get("jti"),
            fhir_user=checked.fhir_user(claims),
            patient=checked.patient(claims),
            name=iua.get("subject_name"),
            roles=tuple(Coding.from_json(c) for c in iua.get("subject_role") or ()),
            organization=iua.get("subject_organization"),
            organization_id=iua.get("subject_organization_id"),
            purpose_of_use=tuple(Coding.from_json(c) for c in iua.get("purpose_of_use") or ()),
            national_provider_identifier=iua.get("national_provider_identifier"),
            person_id=iua.get("person_id"),
            network_address=network_address,
        )


__all__ = ["BREAK_THE_GLASS", "PURPOSE_OF_USE_SYSTEM", "Coding", "Principal"]
