"""Validation of a resource before it is written: structure, required bindings, profiles, Bundles.

https://hl7.org/fhir/R4/validation.html, https://hl7.org/fhir/R4/bundle.html#rules

A resource is checked in order against the R4 structure (fhir.resources R4B models, walk and
pydantic), the required code bindings, and the profile of its type in `profiles/`; all problems are
reported at once. A transaction or batch Bundle is checked as a Bundle and each entry's resource
against its own type and profile, with expressions such as `Bundle.entry[2].resource.status`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from fhir_server.fhir.errors import Issue, bad_request, unprocessable
from fhir_server.fhir.resources import SUPPORTED_TYPES
from fhir_server.validation.limits import check_bounds, check_storable
from fhir_server.validation.profiles import server_profiles
from fhir_server.validation.structure import covered, model_spec, resource_model, structure_issues

BUNDLE = "Bundle"
LIST = "List"
VALIDATED_TYPES: frozenset[str] = frozenset(SUPPORTED_TYPES) | {LIST, BUNDLE}
"""Resource types `validate_resource` accepts at the top level; all but Bundle inside a Bundle."""

_BUNDLE_TYPES = frozenset({"transaction", "batch"})
_METHODS_WITH_RESOURCE = frozenset({"POST", "PUT"})


def parse_resource_json(body: bytes) -> dict[str, Any]:
    """The JSON object of a request body; 400 (`structure`) when it is not a FHIR resource."""
    try:
        resource = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise bad_request(f"The body is not valid JSON: {error}", code="structure") from error
    if not isinstance(resource, dict):
        raise bad_request("The body must be a JSON object (a FHIR resource)", code="structure")
    if not isinstance(resource.get("resourceType"), str) or not resource["resourceType"]:
        raise bad_request("The body has no resourceType", code="structure")
    check_bounds(resource)
    return resource


def validate_resource(resource: Mapping[str, Any], *, expected_type: str | None = None) -> list[Issue]:
    """Every problem of `resource` (an empty list when it is valid).

    `expected_type` is the type named by the request URL: a resource of another type is refused
    without further checks.
    """
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        return [Issue("error", "structure", "The resource has no resourceType", ("resourceType",))]
    if expected_type is not None and resource_type != expected_type:
        return [
            Issue(
                "error",
                "invalid",
                f"The resource type {resource_type} does not match the type {expected_type} of the request",
                ("resourceType",),
            )
        ]
    if resource_type not in VALIDATED_TYPES:
        return [
            Issue(
                "error", "not-supported", f"Resource type {resource_type} is not supported", (resource_type,)
            )
        ]
    if resource_type == BUNDLE:
        return _bundle_issues(resource)
    return _resource_issues(resource, root=resource_type)


def validate_or_raise(resource: Mapping[str, Any], *, expected_type: str | None = None) -> dict[str, Any]:
    """The resource (as a dict) when it is valid; otherwise FhirError 422 with every issue."""
    check_bounds(resource)
    issues = validate_resource(resource, expected_type=expected_type)
    if has_errors(issues):
        raise unprocessable(issues)
    check_storable(resource)
    return dict(resource)


def has_errors(issues: list[Issue]) -> bool:
    return any(issue.severity in ("error", "fatal") for issue in issues)


def warm_up() -> None:
    """Load the profiles and the element tables of every validated type (first request latency)."""
    server_profiles()
    pending = [model for name in VALIDATED_TYPES if (model := resource_model(name)) is not None]
    seen: set[type] = set()
    while pending:
        model = pending.pop()
        if model in seen:
            continue
        seen.add(model)
        pending.extend(field.model for field in model_spec(model).fields.values() if field.model is not None)


def _resource_issues(resource: Mapping[str, Any], *, root: str) -> list[Issue]:
    issues = structure_issues(resource, root=root)
    profile = server_profiles().get(str(resource["resourceType"]))
    if profile is not None:
        # A profile rule on an element the structure check already refused adds nothing.
        reported = {expression for issue in issues for expression in issue.expression}
        issues.extend(
            issue
            for issue in profile.issues(resource, root=root)
            if not covered(issue.expression[0], reported)
        )
    return issues


def _bundle_issues(bundle: Mapping[str, Any]) -> list[Issue]:
    entries = bundle.get("entry")
    entry_list: list[Any] = entries if isinstance(entries, list) else []
    # The Bundle's own structure; each entry's resource is checked with its own type and profile.
    issues = structure_issues(bundle, nested_resources=False)
    bundle_type = bundle.get("type")
    reported = {expression for issue in issues for expression in issue.expression}
    if isinstance(bundle_type, str) and bundle_type not in _BUNDLE_TYPES and "Bundle.type" not in reported:
        issues.append(
            Issue("error", "value", "Only transaction and batch Bundles are accepted", ("Bundle.type",))
        )
    if "total" in bundle:
        issues.append(
            Issue("error", "invariant", "bdl-1: total only when a search or history", ("Bundle.total",))
        )
    full_urls: dict[str, int] = {}
    for index, entry in enumerate(entry_list):
        if isinstance(entry, dict):
            issues.extend(_entry_issues(entry, index, full_urls))
    return issues


def _search_or_operation(url: object) -> bool:
    """`POST [type]/_search` and `POST .../$operation` entries carry no resource of the URL's type."""
    if not isinstance(url, str):
        return False
    last = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return last == "_search" or last.startswith("$")


def _entry_issues(entry: Mapping[str, Any], index: int, full_urls: dict[str, int]) -> list[Issue]:
    path = f"Bundle.entry[{index}]"
    return [*_envelope_issues(entry, index, full_urls), *_entry_resource_issues(entry, path)]


def _envelope_issues(entry: Mapping[str, Any], index: int, full_urls: dict[str, int]) -> list[Issue]:
    """The entry's own invariants: a unique fullUrl, no search or response, a request."""
    path = f"Bundle.entry[{index}]"
    issues: list[Issue] = []
    full_url = entry.get("fullUrl")
    if isinstance(full_url, str):
        if full_url in full_urls:
            issues.append(
                Issue(
                    "error",
                    "invariant",
                    f"bdl-7: fullUrl {full_url} is also the fullUrl of entry {full_urls[full_url]}",
                    (f"{path}.fullUrl",),
                )
            )
        full_urls.setdefault(full_url, index)
    if "search" in entry:
        issues.append(
            Issue("error", "invariant", "bdl-2: entry.search only when a search", (f"{path}.search",))
        )
    if "response" in entry:
        issues.append(
            Issue(
                "error",
                "invariant",
                "bdl-4: entry.response only in a batch-response or transaction-response",
                (f"{path}.response",),
            )
        )
    if entry.get("request") is None:
        issues.append(
            Issue(
                "error",
                "required",
                "bdl-3: each entry of a transaction or batch has a request",
                (f"{path}.request",),
            )
        )
    return issues


def _entry_resource_issues(entry: Mapping[str, Any], path: str) -> list[Issue]:
    """The entry's resource: present when the request writes, of a type and URL that agree, valid."""
    issues: list[Issue] = []
    request = entry.get("request")
    method = request.get("method") if isinstance(request, dict) else None
    url = request.get("url") if isinstance(request, dict) else None
    writes = method in _METHODS_WITH_RESOURCE and not _search_or_operation(url)
    resource = entry.get("resource")
    if resource is None:
        if writes:
            issues.append(
                Issue("error", "required", f"A {method} entry needs a resource", (f"{path}.resource",))
            )
        return issues
    resource_path = f"{path}.resource"
    if not isinstance(resource, dict):
        return issues  # reported by the structure check of the Bundle
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str) or resource_type not in VALIDATED_TYPES - {BUNDLE}:
        issues.append(
            Issue(
                "error",
                "not-supported",
                f"Resource type {resource_type!r} is not supported in a Bundle entry",
                (resource_path,),
            )
        )
        return issues
    if writes and isinstance(url, str):
        url_type = url.split("?", 1)[0].split("/", 1)[0]
        if url_type != resource_type:
            issues.append(
                Issue(
                    "error",
                    "value",
                    f"The request URL {url!r} does not address a {resource_type}",
                    (f"{path}.request.url",),
                )
            )
    issues.extend(_resource_issues(resource, root=resource_path))
    return issues
