"""Query string -> SearchRequest: parameters, modifiers, prefixes, chains and result controls.

https://hl7.org/fhir/R4/search.html

Pure: no I/O. Unknown or unsupported parameters become warning issues on the request (lenient,
the default) or a 400 (`Prefer: handling=strict`); malformed values are always a 400 whose
OperationOutcome names the parameter (`expression`). A modifier this server does not support on a
parameter it knows is always a 400, lenient or not: R4 says a server SHALL reject it, since
ignoring it would answer a wider search than the one asked.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fhir_server.fhir.errors import FhirError, Issue, bad_request
from fhir_server.search.registry import ANY_TYPE, SearchParameter, SearchRegistry
from fhir_server.search.types import TYPES
from fhir_server.search.types.common import QueryContext, split_or

DEFAULT_COUNT = 20
MAX_COUNT = 1000
MAX_CHAIN_DEPTH = 3
TOTAL_MODES = frozenset({"none", "estimate", "accurate"})
SUMMARY_MODES = frozenset({"true", "count", "data", "false"})
IGNORED = frozenset({"_format", "_pretty"})
"""Handled by the HTTP layer, not by search."""
UNSUPPORTED_RESULT = frozenset(
    {"_contained", "_containedType", "_score", "_text", "_content", "_list", "_query", "_filter"}
)

_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]+")
_ELEMENT = re.compile(r"[a-z][A-Za-z0-9]*(\[x\])?")


@dataclass(frozen=True)
class Clause:
    """One search parameter occurrence: its values are alternatives (OR); clauses are ANDed."""

    parameter: SearchParameter
    context: QueryContext
    values: tuple[Any, ...] = ()
    """Parsed values (`search/types/`), or `(True,)`/`(False,)` for `:missing`."""
    chain: tuple[ChainTarget, ...] = ()
    """For a chained reference (`patient.identifier=...`): the sub-search per candidate target type."""

    @property
    def modifier(self) -> str | None:
        return self.context.modifier


@dataclass(frozen=True)
class ChainTarget:
    resource_type: str
    clause: Clause


@dataclass(frozen=True)
class HasClause:
    """Reverse chain `_has:<resource_type>:<reference>:<clause>`."""

    resource_type: str
    reference: SearchParameter
    clause: Clause | HasClause


@dataclass(frozen=True)
class Include:
    """`_include` (reverse=False) or `_revinclude`: follow `parameter` of `source_type` resources."""

    source_type: str
    parameter: SearchParameter
    target_type: str | None
    iterate: bool
    reverse: bool


@dataclass(frozen=True)
class SortKey:
    code: str
    descending: bool


@dataclass(frozen=True)
class SearchRequest:
    resource_type: str | None
    """None for a system-level search (`types` then lists `_type`, empty for all types)."""
    clauses: tuple[Clause | HasClause, ...] = ()
    types: tuple[str, ...] = ()
    includes: tuple[Include, ...] = ()
    sort: tuple[SortKey, ...] = ()
    count: int = DEFAULT_COUNT
    total: str = "accurate"
    summary: str | None = None
    elements: tuple[str, ...] = ()
    cursor: str | None = None
    issues: tuple[Issue, ...] = ()
    """Warnings about parameters that were ignored."""
    applied: tuple[tuple[str, str], ...] = field(default=())
    """The parameters actually used, in request order (for the `self` link); `_cursor` excluded."""

    @property
    def revincludes(self) -> tuple[Include, ...]:
        return tuple(include for include in self.includes if include.reverse)

    @property
    def forward_includes(self) -> tuple[Include, ...]:
        return tuple(include for include in self.includes if not include.reverse)


def unsupported_modifier(name: str, diagnostics: str) -> FhirError:
    return FhirError.of(
        400, "not-supported", f"Unsupported search modifier in {name}: {diagnostics}", expression=(name,)
    )


class _Unsupported(Exception):
    """A parameter (or modifier) this server does not support: a warning, or a 400 when strict."""


class _Parser:
    def __init__(self, registry: SearchRegistry, *, base_url: str, now: datetime) -> None:
        self.registry = registry
        self.base_url = base_url
        self.now = now
        self.known_types = frozenset(registry.resource_types())

    def malformed(self, name: str, diagnostics: str) -> FhirError:
        return bad_request(f"Invalid search parameter {name}: {diagnostics}", expression=(name,))

    def clause(
        self, resource_type: str, name: str, raw: str, *, depth: int = 0, label: str | None = None
    ) -> Clause | HasClause:
        """`label` is the parameter as the client wrote it, named in errors about its inner links."""
        label = label or name
        if name.startswith("_has:"):
            return self.has(resource_type, name, raw, depth=depth, label=label)
        head, _, rest = name.partition(".")
        code, _, modifier = head.partition(":")
        parameter = self.registry.parameter(resource_type, code)
        if parameter is None:
            raise _Unsupported(f"{resource_type} has no search parameter {code}")
        context = QueryContext(
            code=code,
            modifier=modifier or None,
            targets=parameter.targets,
            base_url=self.base_url,
            now=self.now,
            scalar=parameter.stored,
        )
        if rest:
            return self.chained(parameter, context, label, rest, raw, depth=depth)
        self.check_modifier(parameter, context.modifier, label)
        if context.modifier == "missing":
            if raw not in ("true", "false"):
                raise self.malformed(label, ":missing takes true or false")
            return Clause(parameter, context, (raw == "true",))
        kind = TYPES[parameter.type]
        try:
            values = tuple(kind.parse_value(part, context) for part in split_or(raw))
        except ValueError as error:
            raise self.malformed(label, str(error)) from None
        return Clause(parameter, context, values)

    def check_modifier(self, parameter: SearchParameter, modifier: str | None, label: str) -> None:
        """A modifier this server cannot apply is a 400 whatever the handling asked (module docstring)."""
        if modifier is None or modifier == "missing":
            return
        if parameter.type == "reference" and _RESOURCE_TYPE.fullmatch(modifier):
            if parameter.targets and ANY_TYPE not in parameter.targets and modifier not in parameter.targets:
                raise unsupported_modifier(label, f"{parameter.code} cannot refer to {modifier}")
            return
        allowed = TYPES[parameter.type].MODIFIERS & set(parameter.modifiers)
        if parameter.stored:
            allowed &= {"not"}
        if modifier not in allowed:
            raise unsupported_modifier(label, f"modifier :{modifier} is not supported on {parameter.code}")

    def chained(
        self, parameter: SearchParameter, context: QueryContext, name: str, rest: str, raw: str, *, depth: int
    ) -> Clause:
        if parameter.type != "reference":
            raise self.malformed(name, f"{parameter.code} is not a reference and cannot be chained")
        if depth + 1 >= MAX_CHAIN_DEPTH:
            raise self.malformed(name, f"chains are limited to {MAX_CHAIN_DEPTH} levels")
        if context.modifier is not None:
            if not _RESOURCE_TYPE.fullmatch(context.modifier):
                raise self.malformed(name, f"a chain takes a resource type modifier, not :{context.modifier}")
            candidates: tuple[str, ...] = (context.modifier,)
        elif not parameter.targets or ANY_TYPE in parameter.targets:
            candidates = tuple(sorted(self.known_types))
        else:
            candidates = parameter.targets
        next_code = rest.partition(".")[0].partition(":")[0]
        targets = []
        for target in candidates:
            if target not in self.known_types or self.registry.parameter(target, next_code) is None:
                continue
            try:
                inner = self.clause(target, rest, raw, depth=depth + 1, label=name)
            except _Unsupported as error:
                raise self.malformed(name, str(error)) from None
            if not isinstance(inner, Clause):
                raise self.malformed(name, "_has cannot follow a chain")
            targets.append(ChainTarget(target, inner))
        if not targets:
            raise self.malformed(
                name, f"no searchable target of {parameter.code} has a parameter {next_code}"
            )
        return Clause(parameter, context, chain=tuple(targets))

    def has(self, resource_type: str, name: str, raw: str, *, depth: int, label: str) -> HasClause:
        parts = name.split(":", 3)
        if len(parts) != 4 or not all(parts[1:]):
            raise self.malformed(label, "expected _has:<type>:<reference parameter>:<parameter>")
        _, source_type, reference_code, inner_name = parts
        if depth + 1 >= MAX_CHAIN_DEPTH:
            raise self.malformed(label, f"reverse chains are limited to {MAX_CHAIN_DEPTH} levels")
        if source_type not in self.known_types:
            raise self.malformed(label, f"{source_type} is not a searchable resource type")
        reference = self.registry.parameter(source_type, reference_code)
        if reference is None or reference.type != "reference":
            raise self.malformed(label, f"{source_type} has no reference parameter {reference_code}")
        if reference.targets and ANY_TYPE not in reference.targets and resource_type not in reference.targets:
            raise self.malformed(label, f"{source_type}.{reference_code} does not refer to {resource_type}")
        try:
            inner = self.clause(source_type, inner_name, raw, depth=depth + 1, label=label)
        except _Unsupported as error:
            raise self.malformed(label, str(error)) from None
        return HasClause(source_type, reference, inner)

    def include(self, resource_types: Sequence[str], name: str, raw: str) -> Include:
        reverse = name.startswith("_revinclude")
        modifier = name.partition(":")[2]
        if modifier not in ("", "iterate", "recurse"):
            raise self.malformed(name, f"unknown modifier :{modifier}")
        iterate = bool(modifier)
        parts = raw.split(":")
        if len(parts) not in (2, 3) or not all(parts):
            raise self.malformed(name, "expected <type>:<parameter>[:<target type>]")
        source_type, code = parts[0], parts[1]
        target_type = parts[2] if len(parts) == 3 else None
        if code == "*":
            raise _Unsupported(f"{name}={raw}: wildcard includes are not supported")
        parameter = self.registry.parameter(source_type, code) if source_type in self.known_types else None
        if parameter is None or parameter.type != "reference":
            raise self.malformed(name, f"{source_type} has no reference parameter {code}")
        if target_type is not None and parameter.targets and ANY_TYPE not in parameter.targets:
            if target_type not in parameter.targets:
                raise self.malformed(name, f"{source_type}.{code} does not refer to {target_type}")
        if not reverse and not iterate and resource_types and source_type not in resource_types:
            raise self.malformed(name, f"{source_type} is not the type searched (use :iterate)")
        return Include(source_type, parameter, target_type, iterate, reverse)

    def sort(self, resource_type: str, name: str, raw: str) -> tuple[SortKey, ...]:
        keys = []
        for item in raw.split(","):
            code = item.strip()
            descending = code.startswith("-")
            code = code.removeprefix("-")
            if not code:
                raise self.malformed(name, "empty sort key")
            if self.registry.parameter(resource_type, code) is None:
                raise _Unsupported(f"cannot sort on {code}")
            keys.append(SortKey(code, descending))
        return tuple(keys)


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
    parser = _Parser(registry, base_url=base_url, now=now or datetime.now(UTC))
    types = _system_types(parser, params) if resource_type is None else ()
    scope = resource_type or (types[0] if len(types) == 1 else ANY_TYPE)
    found = _Found(resource_type, types, scope)
    for name, raw in params:
        raw = raw.strip()
        try:
            if _handler(name)(parser, found, name, raw):
                found.applied.append((name, raw))
        except _Unsupported as error:
            if strict:
                raise FhirError.of(
                    400, "not-supported", f"Unsupported search parameter {name}: {error}", expression=(name,)
                ) from None
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


def _system_types(parser: _Parser, params: Sequence[tuple[str, str]]) -> tuple[str, ...]:
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


_Handler = Callable[[_Parser, _Found, str, str], bool]
"""Parses one parameter into `_Found`; True when the parameter counts as applied (the `self` link)."""


def _handler(name: str) -> _Handler:
    """The parser of a parameter's kind: a result control, an include, `_has`, or a criterion."""
    control = _CONTROLS.get(name)
    if control is not None:
        return control
    if name.split(":")[0] in UNSUPPORTED_RESULT:
        return _unsupported
    if name.startswith(("_include", "_revinclude")):
        return _include
    if name.startswith("_has"):
        return _has
    return _criterion


def _ignored(_parser: _Parser, _found: _Found, _name: str, _raw: str) -> bool:
    return False


def _type(_parser: _Parser, _found: _Found, _name: str, _raw: str) -> bool:
    """Read before the other parameters (`_system_types`); only kept for the `self` link here."""
    return True


def _cursor(_parser: _Parser, found: _Found, _name: str, raw: str) -> bool:
    found.options["cursor"] = raw
    return False


def _count(parser: _Parser, found: _Found, name: str, raw: str) -> bool:
    if not raw.isdigit():
        raise parser.malformed(name, "expected a non-negative integer")
    found.options["count"] = min(int(raw), MAX_COUNT)
    return True


def _total(parser: _Parser, found: _Found, name: str, raw: str) -> bool:
    if raw not in TOTAL_MODES:
        raise parser.malformed(name, f"expected one of {', '.join(sorted(TOTAL_MODES))}")
    found.options["total"] = raw
    return True


def _summary(parser: _Parser, found: _Found, name: str, raw: str) -> bool:
    if raw not in SUMMARY_MODES:
        raise parser.malformed(name, f"expected one of {', '.join(sorted(SUMMARY_MODES))}")
    found.options["summary"] = None if raw == "false" else raw
    return True


def _elements(parser: _Parser, found: _Found, name: str, raw: str) -> bool:
    elements = tuple(item.strip() for item in raw.split(",") if item.strip())
    if not elements or not all(_ELEMENT.fullmatch(item) for item in elements):
        raise parser.malformed(name, "expected a comma-separated list of element names")
    found.options["elements"] = elements
    return True


def _sort(parser: _Parser, found: _Found, name: str, raw: str) -> bool:
    found.options["sort"] = parser.sort(found.scope, name, raw)
    return True


def _unsupported(_parser: _Parser, _found: _Found, name: str, _raw: str) -> bool:
    raise _Unsupported(f"{name} is not supported")


def _include(parser: _Parser, found: _Found, name: str, raw: str) -> bool:
    searched = (found.resource_type,) if found.resource_type else found.types
    found.includes.append(parser.include(searched, name, raw))
    return True


def _has(parser: _Parser, found: _Found, name: str, raw: str) -> bool:
    if raw and found.resource_type is None:
        raise _Unsupported("_has needs a resource type")
    return _criterion(parser, found, name, raw)


def _criterion(parser: _Parser, found: _Found, name: str, raw: str) -> bool:
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
