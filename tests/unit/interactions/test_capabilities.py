"""The CapabilityStatement is derived from the code's tables: routes, resource types, the include code
and the registry. (conformance_tests/test_capability.py then exercises every declaration live.)"""

from __future__ import annotations

from typing import Any

import pytest

from fhir_server.fhir.resources import BINARY, CLIENT_WRITABLE_TYPES, SUPPORTED_TYPES
from fhir_server.interactions import dispatch
from fhir_server.interactions.capabilities import build_capability_statement, operations_by_type
from fhir_server.interactions.includes import SEARCHABLE_TYPES, reachable_types
from fhir_server.search.registry import SearchRegistry
from fhir_server.settings import Settings

ROUTES = ["/" + "/".join(route.shape) for route in dispatch.ROUTES]
REGISTRY = SearchRegistry.load()


def statement(paths: list[str] = ROUTES) -> dict[str, Any]:
    return build_capability_statement(
        REGISTRY, base_url="http://testserver/fhir", settings=Settings(), paths=paths
    )


def resources_of(built: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["type"]: entry for entry in built["rest"][0]["resource"]}


def resources() -> dict[str, dict[str, Any]]:
    return resources_of(statement())


def test_every_supported_type_is_declared_once() -> None:
    assert [entry["type"] for entry in statement()["rest"][0]["resource"]] == list(SUPPORTED_TYPES)


def test_writes_are_declared_for_client_writable_types_only() -> None:
    for resource_type, entry in resources().items():
        codes = {item["code"] for item in entry["interaction"]}
        writable = resource_type in CLIENT_WRITABLE_TYPES
        assert ({"create", "update", "patch", "delete"} <= codes) is writable, resource_type
        assert not writable or entry["conditionalDelete"] == "single"
        assert writable or not ({"create", "update", "patch", "delete"} & codes)


def test_binary_is_neither_searched_nor_listed_in_history() -> None:
    binary = resources()[BINARY]
    codes = {item["code"] for item in binary["interaction"]}
    assert not codes & {"search-type", "history-type", "history-instance"}
    assert "searchParam" not in binary and "searchInclude" not in binary
    assert "IHE MHD ITI-68" in binary["documentation"]


def test_includes_name_reference_parameters_that_reach_a_stored_type() -> None:
    for resource_type, entry in resources().items():
        for value in entry.get("searchInclude", []):
            source, code = value.split(":")
            parameter = REGISTRY.parameter(source, code)
            assert source == resource_type and parameter is not None and parameter.type == "reference"
            assert reachable_types(parameter), value
        for value in entry.get("searchRevInclude", []):
            source, code = value.split(":")
            parameter = REGISTRY.parameter(source, code)
            assert source in SEARCHABLE_TYPES and parameter is not None
            assert resource_type in reachable_types(parameter), value


def test_includes_known_to_work_are_declared() -> None:
    declared = resources()
    assert "DocumentReference:patient" in declared["DocumentReference"]["searchInclude"]
    assert "DocumentReference:subject" in declared["Patient"]["searchRevInclude"]
    assert "List:item" in declared["DocumentReference"]["searchRevInclude"]
    # A reference to types this server does not store resolves nothing: not declared.
    assert "Patient:general-practitioner" not in declared["Patient"]["searchInclude"]


def test_operations_follow_the_routes() -> None:
    declared = resources()
    assert {op["name"] for op in declared["Patient"]["operation"]} == {"validate", "export"}
    assert all(any(op["name"] == "validate" for op in entry["operation"]) for entry in declared.values())
    assert [op["name"] for op in statement()["rest"][0]["operation"]] == ["export"]
    without_export = [path for path in ROUTES if not path.endswith("$export")]
    assert "operation" not in statement(without_export)["rest"][0]
    assert {op["name"] for op in resources_of(statement(without_export))["Patient"]["operation"]} == {
        "validate"
    }


def test_a_route_serving_an_unnamed_operation_is_an_error() -> None:
    with pytest.raises(LookupError, match=r"\$purge"):
        operations_by_type([*ROUTES, "/{resource_type}/{resource_id}/$purge"])


def test_operations_on_types_not_stored_here_are_not_declared() -> None:
    """`Group/[id]/$export` is routed, but Group is no resource type of this server."""
    assert "Group" not in operations_by_type(ROUTES)
