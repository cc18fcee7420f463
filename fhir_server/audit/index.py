"""Search index values of an AuditEvent by plain element walks: no FHIRPath on the request path.

Every request stores at least one AuditEvent, and running the FHIRPath extractor (search/registry.py)
over each was most of the audit path's CPU. Every AuditEvent SearchParameter is a plain path
(`AuditEvent.agent.who`, `AuditEvent.meta.security`...), some filtered by `.where(resolve() is T)`,
so this module walks those paths over the JSON and hands the values to the same parameter types
(search/types/) that the registry uses: the stored `idx` is identical, which a unit test proves over
the BALP builders' outputs. The paths are read from the registry at start-up; an expression that is
not a plain path is refused there, so a new SearchParameter cannot be silently left unindexed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fhir_server.fhir.resources import AUDIT_EVENT
from fhir_server.search.registry import ANY_TYPE, SearchRegistry
from fhir_server.search.types import TYPES, ParameterType
from fhir_server.search.types.reference import reference_type

_BRANCH = re.compile(
    r"(?P<root>[A-Z][A-Za-z]*)(?P<path>(?:\.[a-z][A-Za-z]*)+)"
    r"(?:\.where\(\s*resolve\(\)\s+is\s+(?P<type>[A-Z][A-Za-z]+)\s*\))?"
)


@dataclass(frozen=True)
class _Path:
    elements: tuple[str, ...]
    resolve_type: str | None


@dataclass(frozen=True)
class _Parameter:
    code: str
    kind: ParameterType
    paths: tuple[_Path, ...]


def _walk(event: Mapping[str, Any], elements: tuple[str, ...]) -> list[Any]:
    """FHIRPath navigation over JSON: each step flattens lists and skips absent elements."""
    current: list[Any] = [event]
    for name in elements:
        following: list[Any] = []
        for item in current:
            child = item.get(name) if isinstance(item, dict) else None
            if isinstance(child, list):
                following.extend(value for value in child if value is not None)
            elif child is not None:
                following.append(child)
        current = following
    return current


def _references_to(values: Iterable[Any], resource_type: str) -> list[Any]:
    """The registry's `resolve() is T` rule: a reference of type T, or a logical one typed T."""
    kept = []
    for value in values:
        if not isinstance(value, Mapping):
            continue
        text = value.get("reference")
        if isinstance(text, str):
            if reference_type(text) == resource_type:
                kept.append(value)
        elif value.get("type") == resource_type:
            kept.append(value)
    return kept


class AuditIndexer:
    """`idx` of an AuditEvent, equal to `SearchRegistry.extract` on it, at a fraction of its cost."""

    def __init__(self, registry: SearchRegistry) -> None:
        parameters = []
        for parameter in registry.parameters_for(AUDIT_EVENT).values():
            if parameter.stored:
                continue
            paths = []
            for branch in (text.strip() for text in parameter.expression.split("|")):
                found = _BRANCH.fullmatch(branch)
                root = found.group("root") if found else branch.split(".")[0].lstrip("(")
                if root not in (AUDIT_EVENT, ANY_TYPE):
                    continue
                if found is None:
                    raise ValueError(
                        f"AuditEvent search parameter {parameter.code!r}: {branch!r} is not a path"
                    )
                elements = tuple(found.group("path").split(".")[1:])
                paths.append(_Path(elements, found.group("type")))
            if paths:
                parameters.append(_Parameter(parameter.code, TYPES[parameter.type], tuple(paths)))
        self._parameters = tuple(parameters)

    def __call__(self, event: Mapping[str, Any]) -> dict[str, Any]:
        index: dict[str, Any] = {}
        for parameter in self._parameters:
            values: list[Any] = []
            for path in parameter.paths:
                found = _walk(event, path.elements)
                if path.resolve_type is not None:
                    found = _references_to(found, path.resolve_type)
                values.extend(found)
            if values:
                index.update(parameter.kind.extract(parameter.code, values))
        return index


__all__ = ["AuditIndexer"]
