"""The README's two commands and `make help`, as make itself reads them (`make -n`: printed, not run)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[2]


def make(*args: str) -> str:
    result = subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_make_pipeline_sets_up_then_runs_the_four_stages_in_order():
    printed = make("-n", "-B", "pipeline", "HOUSING_DATA_SOURCE=/data/housing.csv", "VENV=/tmp/no-such-venv")
    stages = re.findall(r"^\S*python\S* (\w+)\.py$", printed, flags=re.MULTILINE)
    assert stages == ["load_data", "preprocess", "train", "promote"], printed
    assert printed.index(
        "pip install --quiet --no-deps --require-hashes -r requirements/dev.lock"
    ) < printed.index("load_data.py")  # set up first
    assert "-m pip check" in printed
    assert "-m venv /tmp/no-such-venv" in printed


def test_make_test_runs_the_whole_suite():
    printed = make("-n", "test", "VENV=.venv")
    assert ".venv/bin/python -m pytest -q -n 2 --dist loadscope --ignore=tests/deploy;" in printed
    assert "s in all (exit $code)" in printed


def test_make_help_lists_every_documented_target():
    listed = {line.split()[0] for line in make("help").splitlines() if line.strip()}
    pages = [PROJECT_DIR / "README.md", *(PROJECT_DIR / "docs").glob("*.md")]
    documented = {
        target
        for page in pages
        for target in re.findall(r"(?:^|`)make ([a-z][a-z-]*)", page.read_text(), flags=re.MULTILINE)
    }
    assert {"pipeline", "test", "serve", "simulate", "monitor", "history", "rollback"} <= documented
    assert documented <= listed, documented - listed
    assert {"pipeline", "test", "serve", "simulate", "monitor", "lint", "bench"} <= listed
