"""Resource validation: R4 structure (fhir.resources R4B), required bindings and the profiles of
`profiles/` (JSON Schema). https://hl7.org/fhir/R4/validation.html"""

from fhir_server.fhir.ins import INS_SYSTEMS, NIR_SYSTEMS, is_valid_nir, nir_key
from fhir_server.validation.bindings import REQUIRED_BINDINGS, RequiredBinding
from fhir_server.validation.limits import check_bounds
from fhir_server.validation.profiles import Profile, server_profiles
from fhir_server.validation.validator import (
    VALIDATED_TYPES,
    has_errors,
    parse_resource_json,
    validate_or_raise,
    validate_resource,
    warm_up,
)

__all__ = [
    "INS_SYSTEMS",
    "NIR_SYSTEMS",
    "REQUIRED_BINDINGS",
    "VALIDATED_TYPES",
    "Profile",
    "RequiredBinding",
    "check_bounds",
    "has_errors",
    "is_valid_nir",
    "nir_key",
    "parse_resource_json",
    "server_profiles",
    "validate_or_raise",
    "validate_resource",
    "warm_up",
]
