"""The layers of the package (docs/architecture.md), kept by the import contracts of pyproject.toml.

`[tool.importlinter]` declares them: each package imports only the layers below it (cli, app, api,
interactions, audit | storage, consent | search | validation, auth, record, fhir, settings | paths),
no import cycle between packages or between the modules of one, no I/O library in the pure packages
and no web framework below api/. Imports inside functions count, so a lazy import cannot hide an
upward dependency. The second half shows that each contract fails on the import it forbids.
"""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path
from typing import Any

import grimp
import pytest
from importlinter.application.use_cases import read_user_options
from importlinter.cli import lint_imports
from importlinter.contracts.acyclic_siblings import AcyclicSiblingsContract
from importlinter.contracts.forbidden import ForbiddenContract
from importlinter.contracts.layers import LayersContract
from importlinter.domain.contract import Contract

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
PACKAGE = ROOT / "fhir_server"
CONTRACT_TYPES: dict[str, type[Contract]] = {
    "layers": LayersContract,
    "acyclic_siblings": AcyclicSiblingsContract,
    "forbidden": ForbiddenContract,
}


def test_the_import_contracts_are_kept(capsys: pytest.CaptureFixture[str]) -> None:
    code = lint_imports(config_filename=str(PYPROJECT), no_cache=True, no_logo=True)
    assert code == 0, capsys.readouterr().out


def test_every_package_is_seen_by_the_linter() -> None:
    """A directory without `__init__.py` is a namespace package, whose modules the linter never reads."""
    unseen = [
        directory.relative_to(ROOT).as_posix()
        for directory in sorted(PACKAGE.rglob("*"))
        if directory.is_dir() and any(directory.glob("*.py")) and not (directory / "__init__.py").exists()
    ]
    assert not unseen, f"packages without __init__.py escape the import contracts: {unseen}"


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("fhir_server", include_external_packages=True, cache_dir=None)


def _contract(contract_id: str) -> Contract:
    options = read_user_options(str(PYPROJECT))
    (contract_options,) = [c for c in options.contracts_options if c["id"] == contract_id]
    contract_type = CONTRACT_TYPES[contract_options["type"]]
    return contract_type(
        name=contract_options["name"],
        session_options=options.session_options,
        contract_options=contract_options,
    )


def _kept(graph: grimp.ImportGraph, contract_id: str, importer: str, imported: str) -> Any:
    changed = deepcopy(graph)
    changed.add_import(importer=importer, imported=imported)
    return _contract(contract_id).check(changed, verbose=False).kept


@pytest.mark.parametrize(
    ("contract_id", "importer", "imported"),
    [
        ("layers", "fhir_server.fhir.errors", "fhir_server.record.documents"),
        ("layers", "fhir_server.record.documents", "fhir_server.storage.repository"),
        ("layers", "fhir_server.consent.evaluate", "fhir_server.storage.guard"),
        ("layers", "fhir_server.auth.principal", "fhir_server.consent.model"),
        ("layers", "fhir_server.audit.balp", "fhir_server.storage.repository"),
        ("layers", "fhir_server.search.compile", "fhir_server.consent.filter"),
        ("layers", "fhir_server.storage.repository", "fhir_server.interactions.pipeline"),
        ("layers", "fhir_server.interactions.read", "fhir_server.api.routes"),
        ("no-cycles", "fhir_server.interactions.context", "fhir_server.interactions.search"),
        ("no-cycles", "fhir_server.fhir.errors", "fhir_server.record.documents"),
        ("pure", "fhir_server.consent.evaluate", "pymongo"),
        ("pure", "fhir_server.record.documents", "bson"),
        ("pure", "fhir_server.search.compile", "httpx"),
        ("http-free", "fhir_server.interactions.read", "fastapi"),
    ],
)
def test_each_contract_fails_on_the_import_it_forbids(
    graph: grimp.ImportGraph, contract_id: str, importer: str, imported: str
) -> None:
    assert _kept(graph, contract_id, "fhir_server.fhir.errors", "fhir_server.fhir.resources")
    assert not _kept(graph, contract_id, importer, imported)
