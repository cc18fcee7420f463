"""`fhir-server demo` and `fhir-server import` against real `fhir-server serve` processes on the embedded
database (`fhir_server.demo.local_server`).

Covers docs/configuration.md (CLI, development key), docs/consent.md, docs/audit.md (the story's consent
and audit outcomes), issue 7 (demo
exit status, import of NDJSON and Bundles with a summary of created, updated and refused resources).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fhir_server.auth.devkeys import mint_token
from fhir_server.cli import main
from fhir_server.demo import LocalServer, local_server, run_demo
from fhir_server.importer import run_import
from tests.integration.conftest import nir_test_value, unique

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def opt_out_server() -> Iterator[LocalServer]:
    """A server whose default policy is permit: professionals see what no Consent hides."""
    with local_server(consent_default="permit") as server:
        yield server


def _token(server: LocalServer) -> str:
    return mint_token(
        server.data_dir, audience=server.base_url, subject="importer", scopes=["system/*.cruds"]
    )


def _patient(patient_id: str | None = None, *, nir: str | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [
            {"use": "official", "system": "urn:oid:1.2.250.1.213.1.4.10", "value": nir or nir_test_value()}
        ],
        "name": [{"family": f"Import{unique()}", "given": ["Léa"]}],
        "gender": "female",
        "birthDate": "1990-01-01",
    }
    if patient_id:
        resource["id"] = patient_id
    return resource


def _import(server: LocalServer, *paths: Path, batch_size: int = 100) -> tuple[Any, str]:
    progress = io.StringIO()
    summary = run_import(
        list(paths), base_url=server.base_url, token=_token(server), progress=progress, batch_size=batch_size
    )
    return summary, progress.getvalue()


def test_demo_plays_the_story_with_every_expected_outcome() -> None:
    out = io.StringIO()
    with local_server() as server:
        status = run_demo(server.base_url, server.data_dir, out=out)
    text = out.getvalue()
    assert status == 0, text
    assert "All 23 steps went as expected." in text
    for shown in (
        "→ POST /fhir/Consent",
        "← 403 Forbidden",
        "bris de glace",
        "break-the-glass flagged: True",
    ):
        assert shown in text


def test_demo_exits_non_zero_when_an_outcome_differs(opt_out_server: LocalServer) -> None:
    """Under the opt-out default the GP reads the record before any consent: the story's step 2 differs."""
    out = io.StringIO()
    status = run_demo(opt_out_server.base_url, opt_out_server.data_dir, out=out)
    assert status == 1
    assert "step 2 (Dr Durand looks for Claire's record before any consent" in out.getvalue()


def test_ndjson_creates_then_updates_by_id(opt_out_server: LocalServer, tmp_path: Path) -> None:
    ids = [f"imp-{unique()}" for _ in range(5)]
    source = tmp_path / "patients.ndjson"
    source.write_text("".join(json.dumps(_patient(i)) + "\n" for i in ids), encoding="utf-8")
    first, progress = _import(opt_out_server, source, batch_size=2)
    assert (first.created, first.updated, first.refused) == ({"Patient": 5}, {}, [])
    assert "[" + "#" * 30 + "] 5/5 patients.ndjson" in progress
    second, _ = _import(opt_out_server, source)
    assert (second.created, second.updated) == ({}, {"Patient": 5})


def test_refusals_name_the_line_and_the_reason(opt_out_server: LocalServer, tmp_path: Path) -> None:
    source = tmp_path / "mixed.ndjson"
    bad_nir = _patient(nir="284037505612300")
    source.write_text(
        "\n".join([json.dumps(_patient()), "{not json", json.dumps({"id": "x"}), json.dumps(bad_nir)]) + "\n",
        encoding="utf-8",
    )
    summary, _ = _import(opt_out_server, source)
    assert summary.created == {"Patient": 1}
    refused = {item.source: item.reason for item in summary.refused}
    assert set(refused) == {"mixed.ndjson:2", "mixed.ndjson:3", "mixed.ndjson:4"}
    assert refused["mixed.ndjson:2"].startswith("not JSON")
    assert "resourceType" in refused["mixed.ndjson:3"]
    assert refused["mixed.ndjson:4"].startswith("422") and "fhs-ins-3" in refused["mixed.ndjson:4"]
    assert "refused: 3" in summary.render()


def test_transaction_bundle_is_imported_whole(opt_out_server: LocalServer) -> None:
    summary, _ = _import(opt_out_server, EXAMPLES / "bundles" / "iti65-provide-document-bundle.json")
    assert summary.refused == []
    assert sum(summary.created.values()) + sum(summary.updated.values()) == 6
    assert summary.created["DocumentReference"] == 2 and summary.created["Binary"] == 2


def test_refused_transaction_refuses_every_entry_with_the_reason(
    opt_out_server: LocalServer, tmp_path: Path
) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": _patient(), "request": {"method": "POST", "url": "Patient"}},
            {"resource": _patient(nir="284037505612300"), "request": {"method": "POST", "url": "Patient"}},
        ],
    }
    source = tmp_path / "transaction.json"
    source.write_text(json.dumps(bundle), encoding="utf-8")
    summary, _ = _import(opt_out_server, source)
    assert summary.created == {}
    assert [item.source for item in summary.refused] == ["transaction.json#0", "transaction.json#1"]
    assert all(item.reason.startswith("422") for item in summary.refused)


def test_collection_bundle_and_single_resource_files(opt_out_server: LocalServer, tmp_path: Path) -> None:
    collection = tmp_path / "collection.json"
    collection.write_text(
        json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": _patient()}] * 1}),
        encoding="utf-8",
    )
    single = tmp_path / "single.json"
    single.write_text(json.dumps(_patient(f"one-{unique()}")), encoding="utf-8")
    summary, _ = _import(opt_out_server, collection, single)
    assert summary.created == {"Patient": 2}


def test_cli_import_mints_a_token_with_the_development_key(
    opt_out_server: LocalServer, capsys: pytest.CaptureFixture[str]
) -> None:
    source = EXAMPLES / "ndjson" / "patients.ndjson"
    argv = [
        "import",
        str(source),
        "--base-url",
        opt_out_server.base_url,
        "--data-dir",
        str(opt_out_server.data_dir),
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "refused: 0" in captured.out
    assert "patients.ndjson" in captured.err


def test_cli_import_exits_1_when_something_is_refused(
    opt_out_server: LocalServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "bad.ndjson"
    source.write_text(json.dumps(_patient(nir="284037505612300")) + "\n", encoding="utf-8")
    argv = [
        "import",
        str(source),
        "--base-url",
        opt_out_server.base_url,
        "--data-dir",
        str(opt_out_server.data_dir),
    ]
    assert main(argv) == 1
    assert "bad.ndjson:1" in capsys.readouterr().out
    assert main(["import", str(tmp_path / "missing.ndjson"), "--base-url", opt_out_server.base_url]) == 2
