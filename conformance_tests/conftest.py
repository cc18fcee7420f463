"""Wiring of the black-box conformance suite: options, fixtures, the CapabilityStatement-driven
parametrization, and the reports (JUnit XML through pytest's junitxml, a self-contained HTML report).

    pytest conformance_tests --base-url URL (--dev-key-dir DIR | --tokens-file FILE | --token-command CMD)
        [--audience AUD] [--report-dir DIR]

This directory is its own pytest tree (the project's `testpaths` lists only `tests/`).
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from conformance_harness import (
    RECORDED,
    CommandSource,
    DevKeySource,
    Exchange,
    Fhir,
    FileSource,
    MissingToken,
    Record,
    TokenSource,
    records,
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("conformance", "FHIR conformance suite")
    group.addoption(
        "--base-url", default=os.environ.get("FHIR_CONFORMANCE_BASE_URL"), help="FHIR R4 base URL"
    )
    group.addoption("--dev-key-dir", help="mint tokens with the development key of this FHIR_DATA_DIR")
    group.addoption("--tokens-file", help="JSON file: role -> token (patient: {id, token})")
    group.addoption(
        "--token-command",
        help="command printing a token, with {role} {patient} {sub} {fhir_user} {scopes} {profession} "
        "{purpose} {npi} substituted",
    )
    group.addoption("--audience", help="aud of minted tokens (default: the base URL)")
    group.addoption("--report-dir", help="write junit.xml and report.html here")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    report_dir = config.getoption("--report-dir")
    if report_dir:
        Path(report_dir).mkdir(parents=True, exist_ok=True)
        if not getattr(config.option, "xmlpath", None):
            config.option.xmlpath = str(Path(report_dir) / "junit.xml")
    config.stash[RESULTS] = []


def _base_url(config: pytest.Config) -> str:
    base_url = config.getoption("--base-url")
    if not base_url:
        raise pytest.UsageError("conformance_tests needs --base-url (or FHIR_CONFORMANCE_BASE_URL)")
    return str(base_url).rstrip("/")


def _token_source(config: pytest.Config) -> TokenSource:
    base_url = _base_url(config)
    if config.getoption("--tokens-file"):
        return FileSource.load(Path(config.getoption("--tokens-file")))
    if config.getoption("--token-command"):
        return CommandSource(config.getoption("--token-command"))
    if config.getoption("--dev-key-dir"):
        audience = config.getoption("--audience") or base_url
        return DevKeySource(Path(config.getoption("--dev-key-dir")), audience)
    raise pytest.UsageError("conformance_tests needs --dev-key-dir, --tokens-file or --token-command")


# -- the CapabilityStatement drives the truthfulness tests ------------------------------------------

CAPABILITY = pytest.StashKey[dict[str, Any]]()


def _capability(config: pytest.Config) -> dict[str, Any]:
    if CAPABILITY not in config.stash:
        try:
            response = httpx.get(
                f"{_base_url(config)}/metadata", headers={"Accept": "application/fhir+json"}, timeout=30
            )
            config.stash[CAPABILITY] = response.json() if response.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):
            config.stash[CAPABILITY] = {}
    return config.stash[CAPABILITY]


def _server_rest(statement: dict[str, Any]) -> dict[str, Any]:
    return next((rest for rest in statement.get("rest") or [] if rest.get("mode") == "server"), {})


DECLARED = (
    "declared_interaction",
    "declared_search",
    "declared_system_interaction",
    "declared_include",
    "declared_revinclude",
    "declared_operation",
    "declared_flag",
)
FLAGS = ("updateCreate", "conditionalCreate", "conditionalUpdate", "readHistory")
"""Boolean CapabilityStatement.rest.resource flags; `true` declares a behaviour to exercise."""


def _declared_flags(resource: dict[str, Any]) -> list[str]:
    """The behaviours a resource entry promises beyond its interactions (R4 CapabilityStatement)."""
    flags = [flag for flag in FLAGS if resource.get(flag) is True]
    if resource.get("versioning") == "versioned-update":
        flags.append("versioned-update")
    if resource.get("conditionalDelete") in ("single", "multiple"):
        flags.append(f"conditionalDelete-{resource['conditionalDelete']}")
    if resource.get("conditionalRead") not in (None, "not-supported"):
        flags.append(f"conditionalRead-{resource['conditionalRead']}")
    return flags


def _parametrize(metafunc: pytest.Metafunc, name: str, cases: list[Any], ids: list[str]) -> None:
    metafunc.parametrize(name, cases or [None], ids=ids or ["none"])


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if not set(DECLARED) & set(metafunc.fixturenames):
        return
    rest = _server_rest(_capability(metafunc.config))
    resources = rest.get("resource") or []
    if "declared_interaction" in metafunc.fixturenames:
        cases = [(r["type"], i["code"]) for r in resources for i in r.get("interaction") or []]
        metafunc.parametrize(
            "declared_interaction",
            cases or [("<none>", "<none>")],
            ids=[f"{t}-{c}" for t, c in cases] or ["none"],
        )
    if "declared_search" in metafunc.fixturenames:
        cases = [(r["type"], p["name"], p["type"]) for r in resources for p in r.get("searchParam") or []]
        metafunc.parametrize(
            "declared_search",
            cases or [("<none>", "<none>", "<none>")],
            ids=[f"{t}?{n}({k})" for t, n, k in cases] or ["none"],
        )
    if "declared_system_interaction" in metafunc.fixturenames:
        cases = [i["code"] for i in rest.get("interaction") or []]
        metafunc.parametrize("declared_system_interaction", cases or ["<none>"], ids=cases or ["none"])
    for name, element in (("declared_include", "searchInclude"), ("declared_revinclude", "searchRevInclude")):
        if name in metafunc.fixturenames:
            pairs = [(r["type"], value) for r in resources for value in r.get(element) or []]
            _parametrize(metafunc, name, pairs, [f"{t}-{v}" for t, v in pairs])
    if "declared_operation" in metafunc.fixturenames:
        operations = [(r["type"], o["name"]) for r in resources for o in r.get("operation") or []]
        operations += [("system", o["name"]) for o in rest.get("operation") or []]
        _parametrize(metafunc, "declared_operation", operations, [f"{t}-${n}" for t, n in operations])
    if "declared_flag" in metafunc.fixturenames:
        flags = [(r["type"], flag) for r in resources for flag in _declared_flags(r)]
        _parametrize(metafunc, "declared_flag", flags, [f"{t}-{f}" for t, f in flags])


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def base_url(pytestconfig: pytest.Config) -> str:
    return _base_url(pytestconfig)


@pytest.fixture(scope="session")
def tokens(pytestconfig: pytest.Config) -> TokenSource:
    return _token_source(pytestconfig)


@pytest.fixture(scope="session")
def fhir(base_url: str, tokens: TokenSource) -> Iterator[Fhir]:
    client = Fhir(base_url, tokens)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def capability(pytestconfig: pytest.Config) -> dict[str, Any]:
    statement = _capability(pytestconfig)
    assert statement.get("resourceType") == "CapabilityStatement", (
        "GET [base]/metadata gave no CapabilityStatement"
    )
    return statement


@pytest.fixture
def record(fhir: Fhir, tokens: TokenSource) -> Iterator[Record]:
    """A patient record for one scenario, the GP granted by the patient's Consent."""
    yield from records(fhir, tokens)


@pytest.fixture(scope="session")
def shared_record(fhir: Fhir, tokens: TokenSource) -> Iterator[Record]:
    """A patient record shared by the REST and capability tests (they add no Consent)."""
    yield from records(fhir, tokens)


@pytest.fixture(scope="session")
def consent_default(fhir: Fhir, tokens: TokenSource) -> str:
    """`deny` or `permit`: what the server decides for a professional no Consent names (docs/consent.md),
    observed on a fresh record: a médecin with no Consent reads a document the GP filed."""
    for record in records(fhir, tokens):
        document = record.document()
        response = fhir.get(f"DocumentReference/{document['id']}", who="stranger")
        assert response.status_code in (200, 404), response.text[:300]
        return "permit" if response.status_code == 200 else "deny"
    raise AssertionError("no record")


# -- the reports ------------------------------------------------------------------------------------


@dataclass
class CaseResult:
    nodeid: str
    area: str
    requirement: str
    outcome: str
    duration: float
    message: str = ""
    exchanges: list[Exchange] = field(default_factory=list)


RESULTS = pytest.StashKey[list[CaseResult]]()


def pytest_runtest_setup(item: pytest.Item) -> None:
    RECORDED.clear()


def _requirement(item: pytest.Item) -> str:
    function = getattr(item, "function", None)
    doc = (getattr(function, "__doc__", None) or "").strip()
    return " ".join(doc.split("\n\n")[0].split()) if doc else item.name


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Records each case for the HTML report; a role the token source cannot provide is a skip."""
    report: pytest.TestReport = yield
    if call.excinfo is not None and call.excinfo.errisinstance(MissingToken):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), 0, f"Skipped: {call.excinfo.value}")
    if report.when == "call" or (report.when == "setup" and not report.passed):
        if report.skipped and isinstance(report.longrepr, tuple):
            message = str(report.longrepr[2])
        else:
            message = report.longreprtext if report.failed else ""
        item.config.stash[RESULTS].append(
            CaseResult(
                nodeid=item.nodeid,
                area=item.nodeid.split("::")[0].rsplit("/", 1)[-1].removesuffix(".py").removeprefix("test_"),
                requirement=_requirement(item),
                outcome=report.outcome,
                duration=report.duration,
                message=message,
                exchanges=list(RECORDED) if report.failed else [],
            )
        )
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    report_dir = session.config.getoption("--report-dir")
    if not report_dir or RESULTS not in session.config.stash:
        return
    base_url = session.config.getoption("--base-url") or ""
    path = Path(report_dir) / "report.html"
    path.write_text(render_html(session.config.stash[RESULTS], base_url=base_url), encoding="utf-8")


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:2em}
table{border-collapse:collapse;width:100%}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
.passed{color:#176b2c;font-weight:600}.failed{color:#b3261e;font-weight:600}.skipped{color:#8a6d00}
pre{background:#f6f6f6;padding:8px;white-space:pre-wrap;word-break:break-all;font-size:12px}
details{margin:.5em 0 1.5em}summary{cursor:pointer}
"""


def _status(counts: dict[str, int]) -> str:
    if counts.get("failed"):
        return "failed"
    return "passed" if counts.get("passed") else "skipped"


def _exchange_html(index: int, exchange: Exchange) -> str:
    method, url = html.escape(exchange.method), html.escape(exchange.url)
    request_headers = "\n".join(f"{name}: {value}" for name, value in exchange.request_headers)
    response_headers = "\n".join(f"{name}: {value}" for name, value in exchange.response_headers)
    return (
        f"<h4>Exchange {index}: {method} {url} → {exchange.status}</h4>"
        f"<pre>{method} {url}\n{html.escape(request_headers)}\n\n"
        f"{html.escape(exchange.request_body)}</pre>"
        f"<pre>HTTP {exchange.status}\n{html.escape(response_headers)}\n\n"
        f"{html.escape(exchange.response_body)}</pre>"
    )


def render_html(results: list[CaseResult], *, base_url: str) -> str:
    """One self-contained page: totals, a row per requirement, then every failure with its exchanges."""
    totals: dict[str, int] = {}
    requirements: dict[tuple[str, str], dict[str, int]] = {}
    for result in results:
        totals[result.outcome] = totals.get(result.outcome, 0) + 1
        counts = requirements.setdefault((result.area, result.requirement), {})
        counts[result.outcome] = counts.get(result.outcome, 0) + 1
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>FHIR conformance report</title><style>{STYLE}</style></head><body>",
        "<h1>FHIR R4 conformance report</h1>",
        f"<p>Server: <code>{html.escape(base_url)}</code> — {time.strftime('%Y-%m-%d %H:%M:%S %z')}</p>",
        "<p>"
        + " · ".join(f"<span class='{k}'>{k}: {v}</span>" for k, v in sorted(totals.items()))
        + f" · cases: {len(results)}</p>",
    ]
    area = None
    for (result_area, requirement), counts in requirements.items():
        if result_area != area:
            if area is not None:
                parts.append("</table>")
            area = result_area
            parts.append(
                f"<h2>{html.escape(area)}</h2><table><tr><th>Requirement</th><th>Cases</th><th>Result</th></tr>"
            )
        status = _status(counts)
        detail = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        parts.append(
            f"<tr><td>{html.escape(requirement)}</td><td>{detail}</td><td class='{status}'>{status}</td></tr>"
        )
    if area is not None:
        parts.append("</table>")
    failures = [result for result in results if result.outcome == "failed"]
    parts.append(f"<h2>Failures ({len(failures)})</h2>")
    for result in failures:
        parts.append(f"<details><summary class='failed'>{html.escape(result.nodeid)}</summary>")
        parts.append(
            f"<p>{html.escape(result.requirement)}</p><pre>{html.escape(result.message[-8000:])}</pre>"
        )
        for index, exchange in enumerate(result.exchanges[-12:], start=1):
            parts.append(_exchange_html(index, exchange))
        parts.append("</details>")
    parts.append("</body></html>")
    return "\n".join(parts)
