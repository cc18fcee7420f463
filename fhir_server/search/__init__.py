"""FHIR search: declared parameters, index extraction, query parsing and compilation, paging.

https://hl7.org/fhir/R4/search.html
"""

from fhir_server.search.registry import SearchParameter, SearchRegistry

__all__ = ["SearchParameter", "SearchRegistry"]
