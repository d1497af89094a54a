"""The test harness's own promise (docs/testing.md): without the real dataset a tier that needs it fails with
one sentence; it never skips (a skipped tier would let CI pass without testing the model or the data)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[2]


def test_a_tier_without_its_dataset_fails_in_one_sentence_and_never_skips(tmp_path):
    missing = tmp_path / "nowhere" / "california_housing.csv"
    env = {**os.environ, "HOUSING_DATA_SOURCE": str(missing)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/data/test_dataset.py"],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    sentence = (
        f"this test tier needs the real California housing CSV at {missing}: set HOUSING_DATA_SOURCE to its"
        " path"
    )
    assert sentence in out and "skipped" not in out and "passed" not in out, out
    assert "Traceback" not in out
