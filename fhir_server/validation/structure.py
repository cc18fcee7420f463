"""FHIR R4 JSON structure of a resource, against the fhir.resources R4B models.

https://hl7.org/fhir/R4/json.html

Two passes over one resource, both reporting FHIRPath expressions (`Patient.identifier[0].value`):
1. a walk of the JSON along the models' element definitions: JSON value types (pydantic coerces
   `"yes"` to a boolean and `"1"` to an integer), unknown elements, `null`, empty objects and
   arrays, cardinality, required elements, one value per choice element, required code bindings.
   pydantic runs model-level checks (required, choice) only when every field is valid, so the walk
   is what finds all the problems of a resource at once;
2. pydantic model validation, for the formats of primitive values (date, dateTime, id, uri...).
   Its findings at or under an element the walk already reported are dropped.
"""

from __future__ import annotations

import decimal
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import pydantic
from fhir.resources.R4B import get_fhir_model_class

from fhir_server.fhir.errors import Issue
from fhir_server.validation.bindings import RequiredBinding, binding_for

_PRIMITIVE_TYPE_NAMES = frozenset(
    "Boolean Integer Decimal String Uri Url Canonical Code Id Oid Uuid Markdown Base64Binary Instant Date "
    "DateTime Time PositiveInt UnsignedInt".split()
)


@dataclass(frozen=True)
class FieldSpec:
    """One JSON property of a FHIR element, as the R4B model defines it."""

    alias: str  # JSON key: "birthDate", "_birthDate", "valueString"
    element: str  # FHIRPath step: "birthDate", "value.ofType(string)"
    kind: str  # boolean | integer | decimal | string | element | resource
    many: bool
    model: type[pydantic.BaseModel] | None
    required: bool
    binding: RequiredBinding | None


@dataclass(frozen=True)
class ModelSpec:
    fields: Mapping[str, FieldSpec]
    required: tuple[FieldSpec, ...]
    choices: tuple[tuple[str, tuple[str, ...], bool], ...]  # (element name, aliases, required)


def _model_class(name: str) -> type[pydantic.BaseModel]:
    return typing.cast(type[pydantic.BaseModel], get_fhir_model_class(name))


@cache
def resource_model(resource_type: str) -> type[pydantic.BaseModel] | None:
    """The R4B model of a resource type, or None when the name is not a FHIR resource type."""
    try:
        model = _model_class(resource_type)
    except (ValueError, KeyError):
        return None
    return model if "Resource" in {klass.__name__ for klass in model.__mro__} else None


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    many = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin is list:
            many = True
            annotation = typing.get_args(annotation)[0]
        elif origin is typing.Union or origin is types.UnionType:
            args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
            if len(args) != 1:
                return str, many  # url: Union[AnyUrl, str]
            annotation = args[0]
        else:
            return annotation, many


def _kind(annotation: Any) -> tuple[str, type[pydantic.BaseModel] | None]:
    target = getattr(annotation, "_model_klass", None)
    if isinstance(target, str):
        name = target.rsplit(".", 1)[1]
        if name == "Resource":
            return "resource", None
        return "element", _model_class(name)
    if annotation is bool:
        return "boolean", None
    if annotation is int:
        return "integer", None
    if annotation in (decimal.Decimal, float):
        return "decimal", None
    return "string", None


def _type_name(suffix: str) -> str:
    return suffix[0].lower() + suffix[1:] if suffix in _PRIMITIVE_TYPE_NAMES else suffix


@cache
def model_spec(model: type[pydantic.BaseModel]) -> ModelSpec:
    names = tuple(klass.__name__ for klass in model.__mro__)
    fields: dict[str, FieldSpec] = {}
    choices: dict[str, tuple[list[str], bool]] = {}
    for field in model.model_fields.values():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        alias = field.alias or ""
        if alias == "fhir_comments":
            continue  # not FHIR JSON
        value_alias = alias.removeprefix("_")
        value_extra = extra
        if alias.startswith("_"):
            value_field = next(f for f in model.model_fields.values() if f.alias == value_alias)
            value_extra = (
                value_field.json_schema_extra if isinstance(value_field.json_schema_extra, dict) else {}
            )
        group = value_extra.get("one_of_many")
        element = value_alias
        if isinstance(group, str):
            element = f"{group}.ofType({_type_name(value_alias[len(group) :])})"
            if not alias.startswith("_"):
                choices.setdefault(group, ([], bool(value_extra.get("one_of_many_required"))))[0].append(
                    alias
                )
        annotation, many = _unwrap(field.annotation)
        kind, target = _kind(annotation)
        required = not alias.startswith("_") and (field.is_required() or bool(extra.get("element_required")))
        binding = binding_for(names, alias) if kind == "string" else None
        fields[alias] = FieldSpec(alias, element, kind, many, target, required, binding)
    return ModelSpec(
        fields,
        tuple(spec for spec in fields.values() if spec.required),
        tuple((group, tuple(aliases), required) for group, (aliases, required) in choices.items()),
    )


_JSON_TYPE_NAMES = {"boolean": "a JSON boolean", "integer": "a JSON integer", "decimal": "a JSON number"}


def _json_type_ok(kind: str, value: object) -> bool:
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "decimal":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    return isinstance(value, dict)


class _Walk:
    def __init__(self, *, nested_resources: bool) -> None:
        self.issues: list[Issue] = []
        self.nested_resources = nested_resources

    def error(self, code: str, path: str, diagnostics: str) -> None:
        self.issues.append(Issue("error", code, diagnostics, (path,)))

    def resource(self, node: object, path: str) -> None:
        if not isinstance(node, dict):
            self.error("structure", path, "A resource must be a JSON object")
            return
        resource_type = node.get("resourceType")
        model = resource_model(resource_type) if isinstance(resource_type, str) else None
        if model is None:
            self.error("structure", path, f"Unknown resource type {resource_type!r}")
            return
        self.element(node, model, path, is_resource=True)

    def element(
        self, node: dict[str, Any], model: type[pydantic.BaseModel], path: str, *, is_resource: bool
    ) -> None:
        if not node:
            self.error("structure", path, "An element must have a value or children: {} is not allowed")
            return
        spec = model_spec(model)
        for key, value in node.items():
            if is_resource and key == "resourceType":
                continue
            field = spec.fields.get(key)
            if field is None:
                self.error("structure", f"{path}.{key.removeprefix('_')}", f"Unknown element '{key}'")
            else:
                self.field(field, value, f"{path}.{field.element}")
        for field in spec.required:
            if field.alias not in node and f"_{field.alias}" not in node:
                self.error("required", f"{path}.{field.element}", f"Element '{field.alias}' is required")
        for group, aliases, required in spec.choices:
            present = [alias for alias in aliases if alias in node or f"_{alias}" in node]
            if len(present) > 1:
                self.error("structure", f"{path}.{group}", f"Only one of {', '.join(present)} is allowed")
            elif required and not present:
                self.error("required", f"{path}.{group}", f"Element '{group}[x]' is required")

    def field(self, field: FieldSpec, value: object, path: str) -> None:
        if field.many:
            if not isinstance(value, list):
                self.error("structure", path, f"Element '{field.alias}' must be a JSON array")
            elif not value:
                self.error("structure", path, f"Element '{field.alias}' must not be an empty array")
            else:
                nullable = field.alias.startswith("_")
                for index, item in enumerate(value):
                    if item is None and nullable:
                        continue
                    self.value(field, item, f"{path}[{index}]")
        elif isinstance(value, list):
            self.error("structure", path, f"Element '{field.alias}' must not be an array")
        else:
            self.value(field, value, path)

    def value(self, field: FieldSpec, value: object, path: str) -> None:
        if value is None:
            self.error("structure", path, f"Element '{field.alias}' must not be null")
        elif field.kind == "resource":
            if self.nested_resources:
                self.resource(value, path)
            elif not isinstance(value, dict):
                self.error("structure", path, "A resource must be a JSON object")
        elif not _json_type_ok(field.kind, value):
            expected = _JSON_TYPE_NAMES.get(
                field.kind, "a JSON string" if field.kind == "string" else "a JSON object"
            )
            self.error("structure", path, f"Element '{field.alias}' must be {expected}")
        elif field.model is not None:
            self.element(typing.cast(dict[str, Any], value), field.model, path, is_resource=False)
        elif field.binding is not None and value not in field.binding.codes:
            self.error(
                "code-invalid",
                path,
                f"Code {value!r} is not in the required value set {field.binding.value_set} "
                f"({', '.join(sorted(field.binding.codes))})",
            )


def expression_of(
    loc: Sequence[int | str], *, root: str, model: type[pydantic.BaseModel], data: object
) -> str:
    """FHIRPath expression of a pydantic error location (aliases, list indexes) within a resource."""
    path = root
    current: type[pydantic.BaseModel] | None = model
    node = data
    kind = "element"
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
            node = node[part] if isinstance(node, list) and 0 <= part < len(node) else None
        else:
            field = model_spec(current).fields.get(part) if current is not None else None
            if field is None:
                if part == "root":
                    continue
                path += f".{part.removeprefix('_')}"
                current, kind = None, "element"
            else:
                path += f".{field.element}"
                current, kind = field.model, field.kind
            node = node.get(part) if isinstance(node, dict) else None
        if kind == "resource" and isinstance(node, dict):
            resource_type = node.get("resourceType")
            current = resource_model(resource_type) if isinstance(resource_type, str) else None
            kind = "element"
    return path


_WALK_COVERS = frozenset(
    {
        "missing",
        "model_field_validation.missing",
        "extra_forbidden",
        "list_type",
        "string_type",
        "bool_type",
        "bool_parsing",
        "int_type",
        "int_parsing",
        "float_type",
        "float_parsing",
        "decimal_type",
        "decimal_parsing",
        "dict_type",
        "model_type",
        "model_attributes_type",
    }
)
_VALUE_ERROR_PREFIX = "Value error, "


def covered(expression: str, reported: set[str]) -> bool:
    """True when `expression` is one of `reported` or lies under one of them."""
    return any(expression == done or expression.startswith((f"{done}.", f"{done}[")) for done in reported)


def _model_issues(
    resource: Mapping[str, Any], model: type[pydantic.BaseModel], root: str, reported: set[str]
) -> list[Issue]:
    try:
        model.model_validate(resource)
    except pydantic.ValidationError as error:
        issues: list[Issue] = []
        for detail in error.errors(include_url=False, include_context=False, include_input=False):
            message = detail["msg"]
            if detail["type"] in _WALK_COVERS or "Any of one field value is expected" in message:
                continue
            expression = expression_of(detail["loc"], root=root, model=model, data=resource)
            if covered(expression, reported):
                continue
            code = "required" if "required" in detail["type"] else "value"
            issues.append(Issue("error", code, message.removeprefix(_VALUE_ERROR_PREFIX), (expression,)))
        return issues
    except (TypeError, AttributeError, KeyError, IndexError) as error:
        # fhir.resources fails this way on some inputs the walk has already reported.
        if reported:
            return []
        return [Issue("error", "structure", f"The resource could not be parsed: {error}", (root,))]
    return []


def _without_resources(node: Any, model: type[pydantic.BaseModel]) -> Any:
    if not isinstance(node, dict):
        return node
    fields = model_spec(model).fields
    copy: dict[str, Any] = {}
    for key, value in node.items():
        field = fields.get(key)
        if field is not None and field.kind == "resource":
            continue
        if field is not None and field.model is not None:
            target = field.model
            value = (
                [_without_resources(v, target) for v in value]
                if isinstance(value, list)
                else _without_resources(value, target)
            )
        copy[key] = value
    return copy


def structure_issues(
    resource: Mapping[str, Any], *, root: str | None = None, nested_resources: bool = True
) -> list[Issue]:
    """Every structural problem of a resource (its `resourceType` must name a FHIR resource).

    `root` prefixes the expressions (default: the resource type), e.g. `Bundle.entry[0].resource`.
    `nested_resources=False` leaves the resources it holds (Bundle entries) to be checked apart.
    """
    resource_type = resource.get("resourceType")
    path = root or str(resource_type)
    model = resource_model(resource_type) if isinstance(resource_type, str) else None
    if model is None:
        return [Issue("error", "structure", f"Unknown resource type {resource_type!r}", (path,))]
    walk = _Walk(nested_resources=nested_resources)
    walk.element(dict(resource), model, path, is_resource=True)
    reported = {expression for issue in walk.issues for expression in issue.expression}
    checked = resource if nested_resources else _without_resources(resource, model)
    return walk.issues + _model_issues(checked, model, path, reported)
