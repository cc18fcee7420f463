"""One door (docs/security.md): only the storage layer and the audit sink/verifier reach collections.

Parsed, not imported: every module of the package is read with `ast` and checked for the ways code
reaches MongoDB — a collection method called, a database subscripted into a collection, a raw
handle read off the repository (`.database`), a driver handle type imported. A new module that
does any of these outside the owners fails here, and the owner list is the review point.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "fhir_server"
OWNERS = ("storage/", "audit/sink.py", "audit/verify.py")
"""The modules that own collections: the guarded repository and its stores, the audit sink and verifier."""
STARTUP = "app.py"
"""Creates the client at start-up and hands the database to the owners' constructors, nothing else."""
STARTUP_SUBSCRIPTS = frozenset({"client[settings.database]"})
COLLECTION_METHODS = frozenset(
    {
        "aggregate",
        "bulk_write",
        "count_documents",
        "create_collection",
        "create_index",
        "create_indexes",
        "delete_many",
        "delete_one",
        "drop_collection",
        "drop_database",
        "estimated_document_count",
        "find_one",
        "find_one_and_delete",
        "find_one_and_replace",
        "find_one_and_update",
        "get_collection",
        "get_database",
        "insert_many",
        "insert_one",
        "list_collection_names",
        "replace_one",
        "start_session",
        "update_many",
        "update_one",
    }
)
"""Driver methods with no homonym in our own APIs (`find` is also the guarded repository's)."""
HANDLE_NAMES = ("database", "db", "client", "collection")
HANDLE_MODULES = ("pymongo.asynchronous.database", "pymongo.asynchronous.collection", "gridfs")
HANDLE_TYPES = frozenset({"AsyncMongoClient", "AsyncDatabase", "AsyncCollection", "AsyncGridFSBucket"})


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _is_handle(node: ast.expr) -> bool:
    name = (_name(node) or "").lower().lstrip("_")
    return any(name == handle or name.endswith(f"_{handle}") for handle in HANDLE_NAMES)


def violations(source: str, path: str) -> list[Violation]:
    """What in `source` (the module at `path`, relative to the package) reaches collections."""
    owner = path.startswith(OWNERS)
    startup = path == STARTUP
    found: list[Violation] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr == "database" and not path.startswith("storage/"):
            receiver = (_name(node.value) or "").lower()
            if not receiver.endswith("settings"):
                found.append(Violation(path, node.lineno, f"reads a raw handle: {ast.unparse(node)}"))
        if owner:
            continue
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in COLLECTION_METHODS
        ):
            found.append(Violation(path, node.lineno, f"calls a collection method: {node.func.attr}"))
        if isinstance(node, ast.Subscript) and _is_handle(node.value):
            text = ast.unparse(node)
            if not (startup and text in STARTUP_SUBSCRIPTS):
                found.append(Violation(path, node.lineno, f"subscripts a database handle: {text}"))
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            imported = {alias.name for alias in node.names}
            if node.module.startswith(HANDLE_MODULES) or (imported & HANDLE_TYPES and not startup):
                found.append(Violation(path, node.lineno, f"imports a driver handle from {node.module}"))
    return found


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_only_the_owners_reach_collections() -> None:
    found = [
        violation
        for module in _modules()
        for violation in violations(module.read_text(), module.relative_to(PACKAGE).as_posix())
    ]
    assert not found, "code outside the repository reaches collections:\n" + "\n".join(map(str, found))


def test_the_owners_exist() -> None:
    """The allow-list names real modules: a renamed owner must not widen the door silently."""
    for owner in OWNERS:
        assert (PACKAGE / owner).exists(), owner
    assert (PACKAGE / STARTUP).exists()


@pytest.mark.parametrize(
    ("source", "path"),
    [
        ("services.repository.database['Binary_history'].find({})", "interactions/history.py"),
        ("await database['AuditEvent_chain'].find_one({})", "interactions/transaction.py"),
        ("await self._db.Patient.insert_one({})", "api/routes.py"),
        ("x = repository.database", "cli.py"),
        ("from pymongo.asynchronous.database import AsyncDatabase", "interactions/export.py"),
        ("from pymongo import AsyncMongoClient", "cli.py"),
        ("client['fhir']['Patient']", "app.py"),
        ("await services.audit._events.count_documents({})", "interactions/search.py"),
    ],
)
def test_each_way_around_the_repository_is_caught(source: str, path: str) -> None:
    assert violations(source, path)


@pytest.mark.parametrize(
    ("source", "path"),
    [
        ("await services.repository.find('Patient', {}, guard=guard)", "interactions/search.py"),
        ("database = client[settings.database]", "app.py"),
        ("name = settings.database", "cli.py"),
        ("await self._database['Patient'].find_one({})", "storage/repository.py"),
        ("uri.find('://')", "search/types/uri.py"),
    ],
)
def test_the_owners_and_plain_code_pass(source: str, path: str) -> None:
    assert not violations(source, path)
