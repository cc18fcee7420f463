"""FHIR search: declared parameters, index extraction, query parsing and compilation, paging.

https://hl7.org/fhir/R4/search.html
"""

from fhir_server.search.compile import ChainResolver, compile_filter, compile_sort
from fhir_server.search.paging import Cursor, decode_cursor, encode_cursor, page_query
from fhir_server.search.parse import (
    ChainTarget,
    Clause,
    HasClause,
    Include,
    SearchRequest,
    SortKey,
    parse_search,
)
from fhir_server.search.registry import SearchParameter, SearchRegistry

__all__ = [
    "ChainResolver",
    "ChainTarget",
    "Clause",
    "Cursor",
    "HasClause",
    "Include",
    "SearchParameter",
    "SearchRegistry",
    "SearchRequest",
    "SortKey",
    "compile_filter",
    "compile_sort",
    "decode_cursor",
    "encode_cursor",
    "page_query",
    "parse_search",
]
