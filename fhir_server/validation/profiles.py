"""The profiles of `profiles/`: each StructureDefinition with the JSON Schema (draft 2020-12) that
enforces it, applied to resources of its type.

https://hl7.org/fhir/R4/structuredefinition.html, https://json-schema.org/draft/2020-12

`profiles/<name>.structuredefinition.json` describes the profile for FHIR tools; the companion
`profiles/<name>.schema.json` is what the server checks. A schema's `description` on a subschema is
the message reported when that subschema fails; the format `fr-nir-key` checks the NIR key.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker, ValidationError

from fhir_server.fhir.errors import Issue
from fhir_server.fhir.ins import NIR_PATTERN, is_valid_nir
from fhir_server.paths import PROFILES_DIR

_REQUIRED_KEYWORDS = frozenset({"required", "minItems", "minContains"})
_STRUCTURE_KEYWORDS = frozenset({"type"})
_INVARIANT_KEYWORDS = frozenset({"anyOf", "oneOf", "not"})


def _format_checker() -> FormatChecker:
    checker = FormatChecker(formats=())

    def _nir_key(value: object) -> bool:
        # The shape is a separate rule (pattern): only a well-formed NIR has a key to check.
        return not isinstance(value, str) or not NIR_PATTERN.match(value) or is_valid_nir(value)

    checker.checks("fr-nir-key")(_nir_key)
    return checker


@dataclass(frozen=True)
class Profile:
    name: str
    url: str  # StructureDefinition canonical
    type: str  # the resource type it constrains
    validator: Draft202012Validator

    def issues(self, resource: Mapping[str, Any], *, root: str) -> list[Issue]:
        """Every violation of the profile, with expressions under `root` (e.g. `Patient`)."""
        found: list[Issue] = []
        for error in self.validator.iter_errors(resource):
            found.extend(self._issues_of(error, root))
        return found

    def _issues_of(self, error: ValidationError, root: str) -> Iterable[Issue]:
        path = root + "".join(
            f"[{step}]" if isinstance(step, int) else f".{step}" for step in error.absolute_path
        )
        keyword = str(error.validator)
        description = _description(error)
        if keyword == "required":
            instance = error.instance if isinstance(error.instance, dict) else {}
            for name in error.validator_value:
                if name not in instance:
                    text = description or f"Element '{name}' is required"
                    yield Issue("error", "required", f"{text} (profile {self.url})", (f"{path}.{name}",))
            return
        if keyword in _REQUIRED_KEYWORDS:
            code = "required"
        elif keyword in _STRUCTURE_KEYWORDS:
            code = "structure"
        elif keyword in _INVARIANT_KEYWORDS:
            code = "invariant"
        else:
            code = "value"
        yield Issue("error", code, f"{description or error.message} (profile {self.url})", (path,))


def _description(error: ValidationError) -> str | None:
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator in _INVARIANT_KEYWORDS and isinstance(error.validator_value, list):
        for alternative in error.validator_value:
            if isinstance(alternative, dict) and "description" in alternative:
                return str(alternative["description"])
    description = schema.get("description")
    return str(description) if description is not None else None


def load_profiles(directory: Path) -> dict[str, Profile]:
    """Profiles by the resource type they constrain (one profile per type)."""
    checker = _format_checker()
    profiles: dict[str, Profile] = {}
    for definition_path in sorted(directory.glob("*.structuredefinition.json")):
        name = definition_path.name.removesuffix(".structuredefinition.json")
        definition = json.loads(definition_path.read_text(encoding="utf-8"))
        schema = json.loads((directory / f"{name}.schema.json").read_text(encoding="utf-8"))
        Draft202012Validator.check_schema(schema)
        resource_type = definition["type"]
        if resource_type in profiles:
            raise ValueError(
                f"Two profiles constrain {resource_type}: {profiles[resource_type].name}, {name}"
            )
        validator = Draft202012Validator(schema, format_checker=checker)
        profiles[resource_type] = Profile(name, definition["url"], resource_type, validator)
    return profiles


@cache
def server_profiles() -> Mapping[str, Profile]:
    """The profiles shipped in `profiles/`, loaded once."""
    return load_profiles(PROFILES_DIR)
