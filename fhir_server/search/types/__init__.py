"""Search parameter types: for each, index extraction and query compilation side by side.

https://hl7.org/fhir/R4/search.html#ptypes
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from fhir_server.search.types import date, reference, string, token, uri
from fhir_server.search.types.common import QueryContext


class ParameterType(Protocol):
    MODIFIERS: frozenset[str]

    def extract(self, code: str, values: Sequence[Any]) -> dict[str, Any]:
        """The `idx` entries (`<code>` and its `<code>:...` companions) for one parameter's values."""
        ...

    def parse_value(self, raw: str, context: QueryContext) -> Any:
        """One (already comma-split) search value; ValueError when malformed."""
        ...

    def to_mongo(self, field: str, values: Sequence[Any], context: QueryContext) -> dict[str, Any]:
        """The filter matching any of `values` (OR) on the index field `field`."""
        ...


TYPES: Mapping[str, ParameterType] = {
    "date": date,
    "reference": reference,
    "string": string,
    "token": token,
    "uri": uri,
}

__all__ = ["TYPES", "ParameterType", "QueryContext"]
