"""Token claims -> Principal (docs/tokens.md; IHE IUA extensions.ihe_iua; SMART fhirUser/patient)."""

from __future__ import annotations

from fhir_server.auth.principal import Coding, Principal
from fhir_server.auth.scopes import permitted_scopes
from fhir_server.fhir.interaction import Interaction

MEDECIN = "https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante"


def test_iua_claims_are_read() -> None:
    principal = Principal.from_claims(
        {
            "sub": "u1",
            "client_id": "ehr",
            "iss": "https://idp",
            "jti": "j1",
            "scope": "user/*.rs openid",
            "fhirUser": "https://fhir.example/fhir/Practitioner/123",
            "extensions": {
                "ihe_iua": {
                    "subject_name": "Dr Durand",
                    "subject_role": [{"system": MEDECIN, "code": "10"}],
                    "purpose_of_use": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "BTG"}
                    ],
                    "subject_organization_id": "urn:oid:1.2.250.1.71.4.2.2|10000000001",
                    "national_provider_identifier": "810002345678",
                }
            },
        },
        network_address="10.0.0.5",
    )
    assert principal.fhir_user == "Practitioner/123"
    assert principal.roles == (Coding(MEDECIN, "10"),)
    assert principal.breaks_the_glass
    assert principal.national_provider_identifier == "810002345678"
    assert principal.network_address == "10.0.0.5"
    assert not principal.is_patient
    assert not principal.is_system


def test_patient_token_for_own_record_is_patient() -> None:
    principal = Principal.from_claims(
        {"sub": "p", "client_id": "app", "scope": "patient/*.rs", "patient": "abc", "fhirUser": "Patient/abc"}
    )
    assert principal.is_patient


def test_patient_scopes_used_by_a_practitioner_are_not_patient_self() -> None:
    principal = Principal.from_claims(
        {
            "sub": "d",
            "client_id": "app",
            "scope": "patient/*.rs",
            "patient": "abc",
            "fhirUser": "Practitioner/1",
        }
    )
    assert not principal.is_patient


def test_system_client_is_system() -> None:
    principal = Principal.from_claims({"sub": "platform", "client_id": "platform", "scope": "system/*.rs"})
    assert principal.is_system
    assert principal.purpose_of_use == ()


def test_a_launch_without_fhiruser_is_not_the_patient() -> None:
    """Fail closed: the patient is the user whose fhirUser is Patient/<patient claim>, nothing less."""
    principal = Principal.from_claims(
        {
            "sub": "d",
            "client_id": "ehr",
            "scope": "patient/*.cruds",
            "patient": "abc",
            "extensions": {"ihe_iua": {"subject_role": [{"system": MEDECIN, "code": "10"}]}},
        }
    )
    assert not principal.is_patient
    assert not principal.is_system


def test_a_user_holding_system_scopes_is_not_a_system_client() -> None:
    """SMART Backend Services: system/ scopes are for a client without a user; a user gets nothing."""
    users = (
        {"fhirUser": "Practitioner/1"},
        {"patient": "abc"},
        {"extensions": {"ihe_iua": {"national_provider_identifier": "810002345678"}}},
        {"extensions": {"ihe_iua": {"subject_role": [{"system": MEDECIN, "code": "10"}]}}},
        {"extensions": {"ihe_iua": {"subject_name": "Dr Durand"}}},
    )
    for user in users:
        principal = Principal.from_claims({"sub": "u", "client_id": "ehr", "scope": "system/*.cruds", **user})
        assert not principal.is_system, user
        assert not permitted_scopes(
            principal.scopes,
            Interaction.READ,
            "AuditEvent",
            patient=principal.patient,
            system=principal.is_system,
        ), user
