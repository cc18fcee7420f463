"""The people of the story, as the tokens they present (docs/tokens.md: IUA claims, purpose of use)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

G15 = "https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante"
R95 = "https://mos.esante.gouv.fr/NOS/TRE_R95-UsagerTitre/FHIR/TRE-R95-UsagerTitre"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
IRCP = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]}


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
