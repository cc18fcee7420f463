"""Modules and functions a reader can hold (issue 12): no module of the package over `MAX_MODULE_LINES`
lines, no function over `MAX_FUNCTION_LINES` lines (`end_lineno - lineno`, decorators excluded).

Parsed with `ast`, not imported. A module or function that grows past the limit fails here; split it
along its jobs rather than raising the limit.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "fhir_server"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

OVERSIZED_MODULES = frozenset(
    {
        "interactions/write.py",
        "interactions/transaction.py",
        "storage/repository.py",
        "audit/balp.py",
        "cli.py",
    }
)
"""Over the limit today, and being restructured on other branches (the audit "one door", the record/
base layer): the lead removes each entry once its branch is merged and the module fits. Only ever
shrinks; `test_the_allow_lists_name_only_what_still_needs_them` fails on an entry no longer needed."""
OVERSIZED_FUNCTIONS = frozenset(
    {
        "cli.py:build_parser",
        "app.py:create_app",
    }
)
"""As above, for functions (`module:qualified name`): cli.py and app.py are being edited elsewhere."""


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _relative(module: Path) -> str:
    return module.relative_to(PACKAGE).as_posix()


def module_lines(source: str) -> int:
    return len(source.splitlines())


def function_lengths(source: str) -> dict[str, int]:
    """Each function and method of `source` by qualified name (`Class.method`, `outer.inner`): its lines."""
    lengths: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    end = child.end_lineno if child.end_lineno is not None else child.lineno
                    lengths[name] = end - child.lineno
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return lengths


def _oversized_modules() -> set[str]:
    return {
        _relative(module)
        for module in _modules()
        if module_lines(module.read_text(encoding="utf-8")) > MAX_MODULE_LINES
    }


def _oversized_functions() -> dict[str, int]:
    return {
        f"{_relative(module)}:{name}": length
        for module in _modules()
        for name, length in function_lengths(module.read_text(encoding="utf-8")).items()
        if length > MAX_FUNCTION_LINES
    }


def test_no_module_is_over_the_limit() -> None:
    found = sorted(_oversized_modules() - OVERSIZED_MODULES)
    assert not found, f"modules over {MAX_MODULE_LINES} lines (split them along their jobs): {found}"


def test_no_function_is_over_the_limit() -> None:
    found = {
        name: length for name, length in _oversized_functions().items() if name not in OVERSIZED_FUNCTIONS
    }
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines: {found}"


def test_the_allow_lists_name_only_what_still_needs_them() -> None:
    """An entry that is no longer over the limit (or names nothing) is removed: the list only shrinks."""
    assert OVERSIZED_MODULES <= _oversized_modules()
    assert OVERSIZED_FUNCTIONS <= set(_oversized_functions())


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def f():\n    return 1\n", {"f": 1}),
        ("class C:\n    async def m(self):\n        pass\n\n        pass\n", {"C.m": 3}),
        ("def outer():\n    def inner():\n        pass\n    return inner\n", {"outer": 3, "outer.inner": 1}),
        ("@decorator\ndef f():\n    pass\n", {"f": 1}),
    ],
)
def test_function_lengths_are_measured_from_the_def_to_the_last_line(
    source: str, expected: dict[str, int]
) -> None:
    assert function_lengths(source) == expected


def test_a_long_function_is_caught() -> None:
    body = "".join(f"    x{index} = {index}\n" for index in range(MAX_FUNCTION_LINES + 1))
    assert function_lengths(f"def long():\n{body}")["long"] > MAX_FUNCTION_LINES
