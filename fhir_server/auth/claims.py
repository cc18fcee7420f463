"""The shape of every token claim the server reads, checked fail-closed (docs/security.md).

A claim of the wrong shape makes the whole token invalid (401 with WWW-Authenticate), it is never
dropped nor coerced: a `subject_role` sent as one object instead of an array would otherwise vanish,
and with it the rules it triggers (the ostéopathe's read-only limit). Absent optional claims are
fine. Claims the server does not read are not inspected.
https://profiles.ihe.net/ITI/IUA/index.html#3714221-jwt-iua-extensions,
https://build.fhir.org/ig/HL7/smart-app-launch/scopes-and-launch-context.html
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fhir_server.fhir.errors import FhirError, unauthorized

FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
USER_TYPES = ("Patient", "Practitioner", "PractitionerRole", "RelatedPerson", "Person")
_FHIR_USER = re.compile(
    r"(?:https?://[^\s/?#]+(?:/[^\s?#]*)?/)?"
    rf"(?P<type>{'|'.join(USER_TYPES)})/(?P<id>[A-Za-z0-9\-.]{{1,64}})"
)
NUMERIC_CLAIMS = ("exp", "iat", "nbf")
TEXT_CLAIMS = ("iss", "sub", "client_id", "jti")
IUA_TEXT_CLAIMS = (
    "subject_name",
    "subject_organization",
    "subject_organization_id",
    "home_community_id",
    "national_provider_identifier",
    "person_id",
)
IUA_CODING_CLAIMS = ("subject_role", "purpose_of_use")
_CODING_TEXT = ("system", "version", "code", "display")


def invalid(claim: str, expected: str) -> FhirError:
    return unauthorized(f"The bearer token's {claim!r} claim is invalid: expected {expected}")


def check_registered(claims: Mapping[str, Any]) -> None:
    """`exp`/`iat`/`nbf` are numbers, `iss`/`sub`/`client_id`/`jti` non-empty strings (when
    present: which are required is the verifier's rule), `aud` a string or an array of strings."""
    for name in NUMERIC_CLAIMS:
        value = claims.get(name)
        if name in claims and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise invalid(name, "a number (seconds since the epoch)")
    for name in TEXT_CLAIMS:
        if name in claims and not _text(claims[name]):
            raise invalid(name, "a non-empty string")
    audience = claims.get("aud")
    if "aud" in claims and not (
        _text(audience) or (isinstance(audience, list) and audience and all(_text(a) for a in audience))
    ):
        raise invalid("aud", "a string or an array of strings")


def fhir_user(claims: Mapping[str, Any]) -> str | None:
    """`Type/id` of the `fhirUser` claim (relative, or an absolute URL ending in Type/id)."""
    value = claims.get("fhirUser")
    if value is None:
        return None
    match = _FHIR_USER.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise invalid("fhirUser", f"a reference to one of {', '.join(USER_TYPES)} (Type/id or its URL)")
    return f"{match['type']}/{match['id']}"


def patient(claims: Mapping[str, Any]) -> str | None:
    value = claims.get("patient")
    if value is None:
        return None
    if not isinstance(value, str) or not FHIR_ID.fullmatch(value):
        raise invalid("patient", "a Patient id")
    return value


def iua(claims: Mapping[str, Any]) -> Mapping[str, Any]:
    """`extensions.ihe_iua`, checked; empty when the token has none."""
    extensions = claims.get("extensions")
    if extensions is None:
        return {}
    if not isinstance(extensions, Mapping):
        raise invalid("extensions", "a JSON object")
    value = extensions.get("ihe_iua")
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise invalid("extensions.ihe_iua", "a JSON object")
    for name in IUA_TEXT_CLAIMS:
        if value.get(name) is not None and not _text(value[name]):
            raise invalid(f"extensions.ihe_iua.{name}", "a non-empty string")
    for name in IUA_CODING_CLAIMS:
        codings = value.get(name)
        if codings is not None and not (isinstance(codings, list) and all(_coding(c) for c in codings)):
            raise invalid(f"extensions.ihe_iua.{name}", "an array of Codings (objects with a code)")
    return value


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _coding(value: Any) -> bool:
    """A FHIR Coding: string elements where stated, a code always (a coding without one says nothing)."""
    if not isinstance(value, Mapping) or not _text(value.get("code")):
        return False
    if any(name in value and not _text(value[name]) for name in _CODING_TEXT):
        return False
    return "userSelected" not in value or isinstance(value["userSelected"], bool)


__all__ = ["check_registered", "fhir_user", "iua", "patient"]
