"""FHIR restful-interaction codes, shared by scopes, consent actions, audit subtypes and routes.

http://hl7.org/fhir/R4/codesystem-restful-interaction.html
"""

from enum import StrEnum

RESTFUL_INTERACTION_SYSTEM = "http://hl7.org/fhir/restful-interaction"


class Interaction(StrEnum):
    READ = "read"
    VREAD = "vread"
    UPDATE = "update"
    PATCH = "patch"
    DELETE = "delete"
    HISTORY_INSTANCE = "history-instance"
    HISTORY_TYPE = "history-type"
    HISTORY_SYSTEM = "history-system"
    CREATE = "create"
    SEARCH_TYPE = "search-type"
    SEARCH_SYSTEM = "search-system"
    CAPABILITIES = "capabilities"
    TRANSACTION = "transaction"
    BATCH = "batch"
    OPERATION = "operation"

    @property
    def is_write(self) -> bool:
        return self in _WRITES

    @property
    def is_search(self) -> bool:
        return self in (Interaction.SEARCH_TYPE, Interaction.SEARCH_SYSTEM)

    @property
    def is_history(self) -> bool:
        return self in (Interaction.HISTORY_INSTANCE, Interaction.HISTORY_TYPE, Interaction.HISTORY_SYSTEM)


_WRITES = frozenset({Interaction.CREATE, Interaction.UPDATE, Interaction.PATCH, Interaction.DELETE})
