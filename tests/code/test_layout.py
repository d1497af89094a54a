"""The code's shape: small functions and modules, a short app factory, and imports at module top (an import
inside a function must say why on its line: expensive and optional)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "housing"
MODULES = sorted(PACKAGE_DIR.rglob("*.py"))
MAX_FUNCTION_LINES, MAX_MODULE_LINES, MAX_APP_FACTORY_LINES = 80, 400, 60


def functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def span(node: ast.AST) -> int:
    return int(getattr(node, "end_lineno", 0)) - int(getattr(node, "lineno", 0)) + 1


def test_the_package_has_modules():
    assert len(MODULES) > 20


@pytest.mark.parametrize("path", MODULES, ids=lambda path: str(path.relative_to(PACKAGE_DIR)))
def test_modules_and_functions_stay_small(path):
    source = path.read_text()
    assert source.count("\n") <= MAX_MODULE_LINES, f"{path.name} has {source.count(chr(10))} lines"
    too_long = [
        f"{node.name} ({span(node)} lines)"
        for node in functions(ast.parse(source))
        if span(node) > MAX_FUNCTION_LINES
    ]
    assert not too_long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {too_long}"


@pytest.mark.parametrize("path", MODULES, ids=lambda path: str(path.relative_to(PACKAGE_DIR)))
def test_imports_inside_functions_say_why(path):
    source = path.read_text()
    lines = source.splitlines()
    unexplained = [
        f"line {node.lineno}: {lines[node.lineno - 1].strip()}"
        for function in functions(ast.parse(source))
        for node in ast.walk(function)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        and not any("#" in line for line in lines[node.lineno - 1 : node.end_lineno])
    ]
    assert not unexplained, f"{path.name}: imports inside functions without a reason: {unexplained}"


def test_the_app_factory_is_short():
    factories = [
        (path, node)
        for path in MODULES
        for node in functions(ast.parse(path.read_text()))
        if node.name == "create_app"
    ]
    assert factories, "no create_app under housing/"
    for path, node in factories:
        assert span(node) < MAX_APP_FACTORY_LINES, f"{path.name}: create_app has {span(node)} lines"


def test_only_preprocess_names_the_inspection_pickles():
    """docs/stages.md: outliers.pkl and scaler.pkl are for inspection only, nothing reads them (the rule
    and the scaler travel inside every logged pipeline). No code but preprocess.py, which writes them, names
    either file."""
    project = PACKAGE_DIR.parent
    sources = [*MODULES, *project.glob("*.py"), *(project / "tools").rglob("*.py")]
    naming = sorted(
        str(path.relative_to(project))
        for path in sources
        if "outliers.pkl" in path.read_text() or "scaler.pkl" in path.read_text()
    )
    assert naming == ["preprocess.py"]


def test_the_package_folder_is_a_map_of_at_most_twelve_entries():
    """``ls housing/``: the stage subpackages and a few modules every stage shares, nothing else."""
    entries = sorted(
        path.name
        for path in PACKAGE_DIR.iterdir()
        if path.name != "__pycache__" and not path.name.startswith(".")
    )
    assert len(entries) <= 12, entries
    subpackages = [name for name in entries if (PACKAGE_DIR / name).is_dir()]
    assert {"data", "training", "registry", "serving", "store", "monitoring", "api"} <= set(subpackages)
    for name in subpackages:
        for init in (PACKAGE_DIR / name).rglob("__init__.py"):
            assert init.read_text() == "", f"{init.relative_to(PACKAGE_DIR)} is not empty"
