"""The project's documentation is self-contained and in step with the code.

- Nothing cites the team's internal design document: users have docs/ (architecture, configuration,
  tokens, consent, audit, security, scaling), not that file.
- Every relative link of README.md and docs/*.md reaches an existing file, and its `#anchor` a heading
  of that file (GitHub's heading ids).
- docs/configuration.md names every setting the server reads and every `fhir-server` command.
- docs/security.md cites only tests that exist (`tests/...py::test_name`), and gives every row of the
  table of interactions (interactions/dispatch.py) its line, so the threat model cannot drift.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest

from fhir_server.cli import build_parser
from fhir_server.interactions.dispatch import ROUTES
from fhir_server.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

SCANNED = ("README.md", "docs", "examples", "profiles", "conformance_tests", "fhir_server", "tests", "bench")
TEXT_SUFFIXES = frozenset({".md", ".py", ".json", ".ndjson", ".txt", ".toml", ".yml", ".yaml", ".html"})
INTERNAL_CITATION = re.compile(r"\bDESIGN(?:\.md\b|\s*§|\s+I[1-5]\b)")
"""`DESIGN` followed by `.md`, a section sign, or an invariant number: a citation of the internal document."""

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")
CITED_TEST = re.compile(r"\b(tests/[\w/]+\.py)::(test_\w+)")
"""A test cited as `file::function` (a parametrized test is cited by its function)."""


def _text_files() -> Iterator[Path]:
    for name in SCANNED:
        path = ROOT / name
        if path.is_file():
            yield path
        elif path.is_dir():
            for item in sorted(path.rglob("*")):
                if item.is_file() and item.suffix in TEXT_SUFFIXES and "__pycache__" not in item.parts:
                    yield item


def _documents() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def _outside_fences(path: Path) -> Iterator[str]:
    """The lines of a Markdown file that are not inside a fenced code block."""
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield line


def _slug(heading: str) -> str:
    """GitHub's id of a heading: code marks and link targets dropped, lower case, punctuation but `-`
    and `_` removed, spaces to `-`."""
    text = re.sub(r"`|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", text))


def _anchors(path: Path) -> set[str]:
    return {_slug(match[1]) for line in _outside_fences(path) if (match := HEADING.match(line))}


def test_no_citation_of_the_internal_design_document() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in _text_files()
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if INTERNAL_CITATION.search(line)
    ]
    assert not found, "cite docs/*.md instead:\n" + "\n".join(found)


def test_the_docs_exist_and_readme_links_each() -> None:
    readme_links = {
        unquote(target).split("#")[0]
        for line in _outside_fences(ROOT / "README.md")
        for target in LINK.findall(line)
    }
    expected = {"architecture", "configuration", "tokens", "consent", "audit", "security", "scaling"}
    assert {path.stem for path in DOCS.glob("*.md")} >= expected
    missing = sorted(f"docs/{name}.md" for name in expected if f"docs/{name}.md" not in readme_links)
    assert not missing, f"README.md does not link {missing}"


@pytest.mark.parametrize("document", _documents(), ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_reach_a_file_and_a_heading(document: Path) -> None:
    broken: list[str] = []
    for line in _outside_fences(document):
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue  # https:, mailto:...
            path_part, _, anchor = unquote(target).partition("#")
            resolved = (document.parent / path_part).resolve() if path_part else document
            if not resolved.exists():
                broken.append(f"{target}: no such file")
            elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
                broken.append(f"{target}: no heading #{anchor} in {resolved.relative_to(ROOT)}")
    assert not broken, f"{document.relative_to(ROOT)}:\n" + "\n".join(broken)


def test_configuration_names_every_setting() -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    prefix = str(Settings.model_config.get("env_prefix", ""))
    missing = [
        f"{prefix}{name}".upper()
        for name in Settings.model_fields
        if f"`{prefix}{name}`".upper() not in text.upper()
    ]
    assert not missing, f"docs/configuration.md does not describe {missing}"


def test_configuration_names_every_command() -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    choices = re.search(r"\{([^}]*)\}", build_parser().format_usage())
    assert choices is not None
    commands = choices[1].split(",")
    assert "serve" in commands
    missing = [name for name in commands if f"`fhir-server {name}" not in text]
    assert not missing, f"docs/configuration.md does not describe {missing}"


def _test_functions(path: Path) -> set[str]:
    """The test functions a file defines at module level or in a class (sync or async)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    return {
        node.name
        for node in [*tree.body, *(item for cls in classes for item in cls.body)]
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
    }


def test_security_cites_only_tests_that_exist() -> None:
    cited = CITED_TEST.findall((DOCS / "security.md").read_text(encoding="utf-8"))
    assert len(cited) >= 50, "docs/security.md cites its tests as tests/...py::test_name"
    defined: dict[str, set[str]] = {}
    missing: list[str] = []
    for file, name in cited:
        path = ROOT / file
        if file not in defined:
            defined[file] = _test_functions(path) if path.is_file() else set()
        if name not in defined[file]:
            missing.append(f"{file}::{name}")
    assert not missing, "docs/security.md cites tests that do not exist:\n" + "\n".join(sorted(set(missing)))


def test_security_lists_every_row_of_the_table_of_interactions() -> None:
    text = (DOCS / "security.md").read_text(encoding="utf-8")
    missing = [
        line
        for route in ROUTES
        for method in sorted(route.methods)
        if (line := f"`{method} /fhir{''.join('/' + segment for segment in route.shape)}`") not in text
    ]
    assert not missing, f"docs/security.md has no line for {missing}"
