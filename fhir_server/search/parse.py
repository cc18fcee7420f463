"""Query string -> SearchRequest: parameters, modifiers, prefixes, chains and result controls.

https://hl7.org/fhir/R4/search.html

Pure: no I/O. Unknown or unsupported parameters become warning issues on the request (lenient,
the default) or a 400 (`Prefer: handling=strict`); malformed values are always a 400 whose
OperationOutcome names the parameter (`expression`). A modifier this server does not support on a
parameter it knows is always a 400, lenient or not: R4 says a server SHALL reject it, since
ignoring it would answer a wider search than the one asked. For the same reason the unsupported
parameters that narrow a search (`_filter`, `_text`, `_content`, `_list`, `_query`, and `_has`
without a resource type) are always a 400: ignored, they would widen the result.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fhir_server.fhir.errors import FhirError, Issue
from fhir_server.search.clauses import ClauseParser, Unsupported
from fhir_server.search.registry import ANY_TYPE, SearchRegistry
from fhir_server.search.request import (
    ChainTarget,
    Clause,
    HasClause,
    Include,
    SearchRequest,
    SortKey,
)

MAX_COUNT = 1000
TOTAL_MODES = frozenset({"none", "estimate", "accurate"})
SUMMARY_MODES = frozenset({"true", "count", "data", "false"})
IGNORED = frozenset({"_format", "_pretty"})
"""Handled by the HTTP layer, not by search."""
UNSUPPORTED_RESULT = frozenset({"_contained", "_containedType", "_score"})
"""Unsupported result controls: ignoring them never widens what is returned (a warning if lenient)."""
UNSUPPORTED_CRITERIA = frozenset({"_text", "_content", "_list", "_query", "_filter"})
"""Unsupported criteria: ignoring them would widen the result, so they are a 400 whatever the handling."""

_ELEMENT = re.compile(r"[a-z][A-Za-z0-9]*(\[x\])?")


def parse_search(
    resource_type: str | None,
    params: Sequence[tuple[str, str]],
    *,
    registry: SearchRegistry,
    strict: bool,
    base_url: str,
    now: datetime | None = None,
) -> SearchRequest:
    """Parse a type-level (`resource_type`) or system-level (None) search.

    Raises FhirError 400 for malformed values, and for unknown/unsupported parameters when `strict`.
    Each parameter goes to the parser of its kind (`_handler`), in request order.
    """
    parser = ClauseParser(registry, base_url=base_url, now=now or datetime.now(UTC))
    types = _system_types(parser, params) if resource_type is None else ()
    scope = resource_type or (types[0] if len(types) == 1 else ANY_TYPE)
    found = _Found(resource_type, types, scope)
    for name, raw in params:
        raw = raw.strip()
        try:
            if _handler(name)(parser, found, name, raw):
                found.applied.append((name, raw))
        except Unsupported as error:
            if strict:
                raise _unsupported_parameter(name, str(error)) from None
            found.issues.append(
                Issue("warning", "not-supported", f"Parameter {name} ignored: {error}", (name,))
            )
    return SearchRequest(
        resource_type=resource_type,
        clauses=tuple(found.clauses),
        types=types,
        includes=tuple(found.includes),
        issues=tuple(found.issues),
        applied=tuple(found.applied),
        **found.options,
    )


def _unsupported_parameter(name: str, diagnostics: str) -> FhirError:
    """The 400 of an unsupported parameter: always for a criterion, when strict for the others."""
    return FhirError.of(
        400, "not-supported", f"Unsupported search parameter {name}: {diagnostics}", expression=(name,)
    )


def _system_types(parser: ClauseParser, params: Sequence[tuple[str, str]]) -> tuple[str, ...]:
    """The types a system-level search names in `_type` (400 for a type this server does not know)."""
    types: tuple[str, ...] = ()
    for name, raw in params:
        if name == "_type":
            types += tuple(item.strip() for item in raw.split(",") if item.strip())
    unknown = [
        item for item in types if item not in parser.known_types and not parser.registry.parameters_for(item)
    ]
    if unknown:
        raise parser.malformed("_type", f"unknown resource type(s) {', '.join(unknown)}")
    return types


@dataclass
class _Found:
    """What the parameters parsed so far contribute to the SearchRequest."""

    resource_type: str | None
    types: tuple[str, ...]
    scope: str
    """The type clauses and sort keys are looked up on (ANY_TYPE for a multi-type system search)."""
    clauses: list[Clause | HasClause] = field(default_factory=list)
    includes: list[Include] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    applied: list[tuple[str, str]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)


_Handler = Callable[[ClauseParser, _Found, str, str], bool]
"""Parses one parameter into `_Found`; True when the parameter counts as applied (the `self` link)."""


def _handler(name: str) -> _Handler:
    """The parser of a parameter's kind: a result control, an include, `_has`, or a criterion."""
    control = _CONTROLS.get(name)
    if control is not None:
        return control
    if name.split(":")[0] in UNSUPPORTED_CRITERIA:
        return _unsupported_criterion
    if name.split(":")[0] in UNSUPPORTED_RESULT:
        return _unsupported
    if name.startswith(("_include", "_revinclude")):
        return _include
    if name.startswith("_has"):
        return _has
    return _criterion


def _ignored(_parser: ClauseParser, _found: _Found, _name: str, _raw: str) -> bool:
    return False


def _type(_parser: ClauseParser, _found: _Found, _name: str, _raw: str) -> bool:
    """Read before the other parameters (`_system_types`); only kept for the `self` link here."""
    return True


def _cursor(_parser: ClauseParser, found: _Found, _name: str, raw: str) -> bool:
    found.options["cursor"] = raw
    return False


def _count(parser: ClauseParser, found: _Found, name: str, raw: str) -> bool:
    if not raw.isdigit():
        raise parser.malformed(name, "expected a non-negative integer")
    found.options["count"] = min(int(raw), MAX_COUNT)
    return True


def _total(parser: ClauseParser, found: _Found, name: str, raw: str) -> bool:
    if raw not in TOTAL_MODES:
        raise parser.malformed(name, f"expected one of {', '.join(sorted(TOTAL_MODES))}")
    found.options["total"] = raw
    return True


def _summary(parser: ClauseParser, found: _Found, name: str, raw: str) -> bool:
    if raw not in SUMMARY_MODES:
        raise parser.malformed(name, f"expected one of {', '.join(sorted(SUMMARY_MODES))}")
    found.options["summary"] = None if raw == "false" else raw
    return True


def _elements(parser: ClauseParser, found: _Found, name: str, raw: str) -> bool:
    elements = tuple(item.strip() for item in raw.split(",") if item.strip())
    if not elements or not all(_ELEMENT.fullmatch(item) for item in elements):
        raise parser.malformed(name, "expected a comma-separated list of element names")
    found.options["elements"] = elements
    return True


def _sort(parser: ClauseParser, found: _Found, name: str, raw: str) -> bool:
    found.options["sort"] = parser.sort(found.scope, name, raw)
    return True


def _unsupported(_parser: ClauseParser, _found: _Found, name: str, _raw: str) -> bool:
    raise Unsupported(f"{name} is not supported")


def _unsupported_criterion(_parser: ClauseParser, _found: _Found, name: str, _raw: str) -> bool:
    raise _unsupported_parameter(name, f"{name} is not supported")


def _include(parser: ClauseParser, found: _Found, name: str, raw: str) -> bool:
    searched = (found.resource_type,) if found.resource_type else found.types
    found.includes.append(parser.include(searched, name, raw))
    return True


def _has(parser: ClauseParser, found: _Found, name: str, raw: str) -> bool:
    if raw and found.resource_type is None:
        raise _unsupported_parameter(name, "_has needs a resource type")
    return _criterion(parser, found, name, raw)


def _criterion(parser: ClauseParser, found: _Found, name: str, raw: str) -> bool:
    """A search parameter of the type (plain, modified or chained); an empty value is no criterion."""
    if not raw:
        return False
    found.clauses.append(parser.clause(found.scope, name, raw))
    return True


_CONTROLS: Mapping[str, _Handler] = {
    **{name: _ignored for name in IGNORED},
    "_type": _type,
    "_cursor": _cursor,
    "_count": _count,
    "_total": _total,
    "_summary": _summary,
    "_elements": _elements,
    "_sort": _sort,
}
"""The result parameters, by exact name."""


__all__ = [
    "MAX_COUNT",
    "ChainTarget",
    "Clause",
    "HasClause",
    "Include",
    "SearchRequest",
    "SortKey",
    "parse_search",
]
