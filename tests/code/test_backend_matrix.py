"""The backend matrix docs/testing.md states is the one the test markers make: for every test module of the
tiers that use a store, which of its tests run on SQLite, which on PostgreSQL (the ``backend_name``
parameter, or the ``postgres`` marker on a test that brings its own PostgreSQL), read from pytest's own
collection."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from housing.config.settings import PROJECT_DIR

COLLECT = """
import json, sys
import pytest

class Matrix:
    def __init__(self):
        self.modules = {}

    def pytest_collection_modifyitems(self, items):
        for item in items:
            module = item.nodeid.split("::")[0]
            backend = getattr(item, "callspec", None) and item.callspec.params.get("backend_name")
            found = self.modules.setdefault(module, set())
            if backend:
                found.add(backend)
            elif item.get_closest_marker("postgres"):
                found.add("postgres")

matrix = Matrix()
tiers = ["tests/integration", "tests/model"]
pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", *tiers], plugins=[matrix])
print("MATRIX" + json.dumps({module: sorted(found) for module, found in matrix.modules.items()}))
"""
ROW = re.compile(r"^\|\s*`(tests/[\w/]+\.py)`\s*\|\s*(\S*)\s*\|\s*(\S*)\s*\|")


def collected() -> dict[str, list[str]]:
    result = subprocess.run(
        [sys.executable, "-c", COLLECT], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=300
    )
    line = next(line for line in result.stdout.splitlines() if line.startswith("MATRIX"))
    return dict(json.loads(line.removeprefix("MATRIX")))


def documented() -> dict[str, list[str]]:
    rows = {}
    for line in (PROJECT_DIR / "docs" / "testing.md").read_text().splitlines():
        if match := ROW.match(line):
            module, sqlite, postgres = match.groups()
            rows[module] = [
                name for name, mark in (("postgres", postgres), ("sqlite", sqlite)) if mark == "yes"
            ]
    return rows


def test_the_documented_backend_matrix_is_the_collected_one():
    assert documented() == collected()
