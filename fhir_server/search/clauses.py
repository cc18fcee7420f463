"""One search parameter into its clause: plain, modified, `:missing`, chained (`a.b=`), reverse
chained (`_has:`); and the `_include`/`_revinclude` and `_sort` values. Pure: no I/O.

A modifier this server does not support on a parameter it knows is a 400 whatever the handling
asked (search/parse.py); a parameter it does not know raises `Unsupported`, which the caller turns
into a warning or, when strict, a 400.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

from fhir_server.fhir.errors import FhirError, bad_request
from fhir_server.search.registry import ANY_TYPE, SearchParameter, SearchRegistry
from fhir_server.search.request import ChainTarget, Clause, HasClause, Include, SortKey
from fhir_server.search.types import TYPES
from fhir_server.search.types.common import QueryContext, split_or

MAX_CHAIN_DEPTH = 3
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]+")


def unsupported_modifier(name: str, diagnostics: str) -> FhirError:
    return FhirError.of(
        400, "not-supported", f"Unsupported search modifier in {name}: {diagnostics}", expression=(name,)
    )


class Unsupported(Exception):
    """A parameter (or modifier) this server does not support: a warning, or a 400 when strict."""


class ClauseParser:
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
            raise Unsupported(f"{resource_type} has no search parameter {code}")
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
            except Unsupported as error:
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
        except Unsupported as error:
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
            raise Unsupported(f"{name}={raw}: wildcard includes are not supported")
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
                raise Unsupported(f"cannot sort on {code}")
            keys.append(SortKey(code, descending))
        return tuple(keys)
