"""The SearchParameters the server supports, read from `capability/`, and index extraction.

https://hl7.org/fhir/R4/searchparameter.html

Each parameter's FHIRPath expression is compiled once (fhirpathpy, R4 model) per resource type it
applies to. fhirpathpy has no `resolve()`: an `X.where(resolve() is T)` branch is evaluated as `X`
and keeps the references whose type is `T` (`T/id`, `.../T/id`, or `Reference.type`).
`_id` and `_lastUpdated` are answered by the stored document's `_id` and `lu`, not by `idx`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fhirpathpy import compile as compile_fhirpath
from fhirpathpy.models import models

from fhir_server.paths import CAPABILITY_DIR
from fhir_server.record.documents import VISIBILITY
from fhir_server.search.types import TYPES, ParameterType
from fhir_server.search.types.reference import reference_type

DEFAULT_PATH = CAPABILITY_DIR / "search-parameters.json"

ANY_TYPE = "Resource"
STORED_FIELDS: Mapping[str, str] = {"_id": "_id", "_lastUpdated": "lu"}
"""Parameters answered by a field of the stored document (record/documents.py) rather than `idx`."""

_RESOLVE = re.compile(r"(?P<path>.+)\.where\(\s*resolve\(\)\s+is\s+(?P<type>[A-Z][A-Za-z]+)\s*\)")
_ROOT = re.compile(r"\(?\s*(?P<type>[A-Z][A-Za-z]+)\.(?P<element>[a-z][A-Za-z]*)")
_COMPUTED = ("exists(", "empty(", " and ", " or ", "not(")


@dataclass(frozen=True)
class SearchParameter:
    code: str
    type: str
    base: tuple[str, ...]
    expression: str
    targets: tuple[str, ...]
    url: str
    modifiers: tuple[str, ...] = ()

    @property
    def field(self) -> str:
        """The stored-document field searched: `idx.<code>`, or `_id` / `lu`."""
        return STORED_FIELDS.get(self.code) or f"idx.{self.code}"

    @property
    def stored(self) -> bool:
        """Answered by a document field with one scalar per document rather than extracted values."""
        return self.code in STORED_FIELDS

    @classmethod
    def from_fhir(cls, resource: Mapping[str, Any]) -> SearchParameter:
        return cls(
            code=resource["code"],
            type=resource["type"],
            base=tuple(resource["base"]),
            expression=resource.get("expression", ""),
            targets=tuple(resource.get("target") or ()),
            url=resource["url"],
            modifiers=tuple(resource.get("modifier") or ()),
        )


@dataclass(frozen=True)
class _Branch:
    evaluate: Callable[[Mapping[str, Any], Mapping[str, Any] | None], list[Any]]
    """fhirpathpy's compiled expression: (resource, context variables)."""
    resolve_type: str | None
    root_element: str | None
    """When set, a resource without an element starting with this name yields nothing (fast path)."""


@dataclass(frozen=True)
class _Extractor:
    code: str
    kind: ParameterType
    branches: tuple[_Branch, ...]


def _split_union(expression: str) -> list[str]:
    """Top-level `|` branches of a FHIRPath expression."""
    branches: list[str] = []
    depth = 0
    quoted = False
    start = 0
    for position, char in enumerate(expression):
        if char == "'":
            quoted = not quoted
        elif quoted:
            continue
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "|" and depth == 0:
            branches.append(expression[start:position].strip())
            start = position + 1
    branches.append(expression[start:].strip())
    return [branch for branch in branches if branch]


def _compile_branch(resource_type: str, branch: str) -> _Branch | None:
    root = _ROOT.match(branch)
    if root is None or root.group("type") not in (resource_type, ANY_TYPE):
        return None
    if root.group("type") == ANY_TYPE:
        branch = branch.replace(f"{ANY_TYPE}.", f"{resource_type}.", 1)
    resolve_type = None
    resolved = _RESOLVE.fullmatch(branch)
    if resolved:
        branch, resolve_type = resolved.group("path"), resolved.group("type")
    simple = not any(marker in branch for marker in _COMPUTED)
    return _Branch(
        evaluate=compile_fhirpath(branch, models["r4"]),
        resolve_type=resolve_type,
        root_element=root.group("element") if simple else None,
    )


def _references_to(values: list[Any], resource_type: str) -> list[Any]:
    kept = []
    for value in values:
        if not isinstance(value, Mapping):
            continue
        text = value.get("reference")
        if isinstance(text, str) and reference_type(text) == resource_type:
            kept.append(value)
        elif not isinstance(text, str) and value.get("type") == resource_type:
            kept.append(value)
    return kept


class SearchRegistry:
    """The declared SearchParameters, per resource type, with their compiled extractors."""

    def __init__(self, parameters: Sequence[SearchParameter]) -> None:
        self._parameters = tuple(parameters)
        self._by_type: dict[str, dict[str, SearchParameter]] = {}
        self._common: dict[str, SearchParameter] = {}
        for parameter in self._parameters:
            for base in parameter.base:
                target = self._common if base == ANY_TYPE else self._by_type.setdefault(base, {})
                target[parameter.code] = parameter
        self._extractors: dict[str, tuple[_Extractor, ...]] = {}

    @classmethod
    def load(cls, path: Path | None = None) -> SearchRegistry:
        """Read a Bundle of SearchParameter resources (default `capability/search-parameters.json`)."""
        bundle = json.loads((path or DEFAULT_PATH).read_text(encoding="utf-8"))
        resources = [entry["resource"] for entry in bundle.get("entry", [])]
        unsupported = sorted({resource["type"] for resource in resources} - set(TYPES))
        if unsupported:
            raise ValueError(f"unsupported SearchParameter types in {path or DEFAULT_PATH}: {unsupported}")
        return cls([SearchParameter.from_fhir(resource) for resource in resources])

    def resource_types(self) -> tuple[str, ...]:
        """Types with parameters of their own (every type also gets the common ones)."""
        return tuple(sorted(self._by_type))

    def all_parameters(self) -> tuple[SearchParameter, ...]:
        return self._parameters

    def parameters_for(self, resource_type: str) -> Mapping[str, SearchParameter]:
        return {**self._common, **self._by_type.get(resource_type, {})}

    def parameter(self, resource_type: str, code: str) -> SearchParameter | None:
        return self._by_type.get(resource_type, {}).get(code) or self._common.get(code)

    def _extractors_for(self, resource_type: str) -> tuple[_Extractor, ...]:
        extractors = self._extractors.get(resource_type)
        if extractors is None:
            built = []
            for parameter in self.parameters_for(resource_type).values():
                if parameter.stored:
                    continue
                branches = tuple(
                    branch
                    for text in _split_union(parameter.expression)
                    if (branch := _compile_branch(resource_type, text)) is not None
                )
                if branches:
                    built.append(_Extractor(parameter.code, TYPES[parameter.type], branches))
            extractors = self._extractors[resource_type] = tuple(built)
        return extractors

    def extract(self, resource: Mapping[str, Any]) -> dict[str, Any]:
        """The `idx` subdocument of a stored document: for each parameter with values, its entries.

        Keys are parameter codes (`<code>`: the list of normalised values) and their companions
        (`<code>:sort`, `<code>:lo`/`:hi`, `<code>:exact`, `<code>:text`, `<code>:of-type`,
        `<code>:identifier`), described in each `search/types/` module.
        """
        keys = set(resource)
        index: dict[str, Any] = {}
        for extractor in self._extractors_for(str(resource.get("resourceType"))):
            values: list[Any] = []
            for branch in extractor.branches:
                element = branch.root_element
                if element is not None and not any(key.startswith(element) for key in keys):
                    continue
                found = branch.evaluate(resource, None)
                if branch.resolve_type is not None:
                    found = _references_to(found, branch.resolve_type)
                values.extend(found)
            if values:
                index.update(extractor.kind.extract(extractor.code, values))
        return index

    def sort_field(self, resource_type: str, code: str, *, descending: bool) -> str | None:
        """The scalar field `_sort=<code>` orders by (R4: lowest value ascending, highest descending)."""
        parameter = self.parameter(resource_type, code)
        if parameter is None:
            return None
        if parameter.stored:
            return parameter.field
        if parameter.type == "date":
            return f"{parameter.field}:{'hi' if descending else 'lo'}"
        return f"{parameter.field}:sort"

    def index_keys(self, resource_type: str) -> list[list[tuple[str, int]]]:
        """MongoDB indexes for the common searches on `resource_type`, created at start-up.

        Each is equality fields, then `del` (every search has `del: false`), then at most one range
        scalar, so that a flat filter of those fields is served by the index alone (the embedded
        database's planner needs that). `identifier` and the compartment-like references get
        one each; `patient` is paired with `status`/`type`/`category`/`code` and each date
        parameter's `:hi`, `type`/`category`/`code` with `date:hi`; an index that is a prefix of
        another is left out. No index holds two
        multi-valued fields (MongoDB refuses parallel arrays): `patient` is paired with another
        token only where it comes from a 0..1 element (a scalar, types/common.stored).
        """
        parameters = self.parameters_for(resource_type)
        live = ("del", 1)
        dates = [
            code
            for code, parameter in parameters.items()
            if parameter.type == "date" and not parameter.stored
        ]
        tokens = [code for code in _PAIRED_TOKENS if code in parameters]
        keys: list[list[tuple[str, int]]] = []
        for code, parameter in parameters.items():
            if code in _INDEXED or (resource_type == "Patient" and code in _PATIENT_NAMES):
                keys.append([(parameter.field, 1), live])
        for code in tokens:
            if "date" in dates and code != "status":
                keys.append([(f"idx.{code}", 1), live, ("idx.date:hi", 1)])
        if "patient" in parameters:
            keys.extend([("idx.patient", 1), live, (f"idx.{code}:hi", 1)] for code in dates)
            if resource_type in _SINGLE_PATIENT:
                keys.append([("idx.patient", 1), live, (VISIBILITY, 1)])
                for code in tokens:
                    keys.append([("idx.patient", 1), (f"idx.{code}", 1), live])
                    if code == "status":
                        # The consent filter's `vis` keys trail the commonest query (patient + status):
                        # `status` is single-valued, so `vis` is the index's only array (MongoDB allows one).
                        keys.append([("idx.patient", 1), ("idx.status", 1), live, (VISIBILITY, 1)])
                    if "date" in dates and code != "status":
                        keys.append([("idx.patient", 1), (f"idx.{code}", 1), live, ("idx.date:hi", 1)])
        return [
            key
            for key in keys
            if not any(len(other) > len(key) and other[: len(key)] == key for other in keys)
        ]


_INDEXED = frozenset(
    {
        "identifier",
        "patient",
        "subject",
        "author",
        "agent",
        "entity",
        "actor",
        "item",
        "relatesto",
        "location",
    }
)
_PATIENT_NAMES = frozenset({"name", "family", "given"})
_PAIRED_TOKENS = ("status", "type", "category", "code")
_SINGLE_PATIENT = frozenset({"DocumentReference", "Consent", "List"})
"""Types whose `patient` parameter reads a 0..1 element (subject, patient): one key per document."""
