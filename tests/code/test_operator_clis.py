"""The operators' commands on the prediction log, run as ``python -m housing.store.<module>`` runs them: the
labellers' tokens (add, list, rotate, revoke) and retention (what is older than the setting or the flag goes).
A command that cannot be done says why in one sentence, exits with 2 and changes nothing."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from housing.store.labellers import active_digests, list_labellers, token_digest
from housing.store.log_reads import count_rows
from housing.store.prediction_log import PredictionLog
from housing.store.tables import create_tables, opened_engine
from tests.helpers import START, assert_refused, rows_for, run_script

LABELLERS = "housing/store/labellers.py"
RETENTION = "housing/store/retention.py"


def log_environment(patch: pytest.MonkeyPatch, folder: Path) -> str:
    """A prediction log of its own (SQLite) and nothing from the caller's HOUSING_* / MLFLOW_*; its URL."""
    for key in list(os.environ):
        if key.startswith(("HOUSING_", "MLFLOW_")):
            patch.delenv(key)
    url = f"sqlite:///{folder / 'log.db'}"
    patch.setenv("HOUSING_PREDICTION_LOG_URL", url)
    patch.setenv("HOUSING_ARTIFACTS_DIR", str(folder / "artifacts"))
    return url


def active(url: str) -> dict[str, str]:
    with opened_engine(url) as engine:
        return active_digests(engine)


def test_a_labellers_token_is_shown_once_stored_as_a_digest_rotated_and_revoked(tmp_path, monkeypatch):
    url = log_environment(monkeypatch, tmp_path)
    code, out, err = run_script(LABELLERS, "add", "alice", patch=monkeypatch)
    assert code == 0, err
    token = out.strip().splitlines()[-1]
    assert "shown once" in out and active(url) == {token_digest(token): "alice"}

    code, out, err = run_script(LABELLERS, "rotate", "alice", patch=monkeypatch)
    rotated = out.strip().splitlines()[-1]
    assert code == 0 and rotated != token, err
    assert active(url) == {token_digest(rotated): "alice"}  # the old token no longer names anyone

    code, out, _ = run_script(LABELLERS, "list", patch=monkeypatch)
    assert code == 0 and re.fullmatch(r"alice\s+since \d{4}-\d\d-\d\d\s+active", out.strip()), out
    code, out, _ = run_script(LABELLERS, "revoke", "alice", patch=monkeypatch)
    assert code == 0 and "no longer works" in out and active(url) == {}
    code, out, _ = run_script(LABELLERS, "list", patch=monkeypatch)
    assert code == 0 and re.fullmatch(r"alice\s+since \S+\s+revoked \d{4}-\d\d-\d\d", out.strip()), out


@pytest.mark.parametrize(
    ("args", "sentence"),
    [
        (("revoke",), "'revoke' needs the labeller's name"),
        (("rotate", "nobody"), "there is no labeller 'nobody': add it first"),
        (("revoke", "nobody"), "there is no labeller 'nobody'"),
        (("add", "alice"), "exists already"),
        (("add", "Alice Smith"), "is not a labeller name"),
        (("add", "bob\n"), "is not a labeller name"),
    ],
)
def test_a_labeller_command_that_cannot_be_done_says_why_and_changes_nothing(
    args, sentence, tmp_path, monkeypatch
):
    url = log_environment(monkeypatch, tmp_path)
    assert run_script(LABELLERS, "add", "alice", patch=monkeypatch)[0] == 0
    with opened_engine(url) as engine:
        before = active_digests(engine), list_labellers(engine)
    assert_refused(run_script(LABELLERS, *args, patch=monkeypatch), sentence)
    with opened_engine(url) as engine:
        assert (active_digests(engine), list_labellers(engine)) == before


def test_retention_deletes_what_is_older_than_the_setting_or_the_flag_and_says_how_much(
    tmp_path, monkeypatch
):
    url = log_environment(monkeypatch, tmp_path)
    log = PredictionLog(url)
    create_tables(log.engine)
    minutes_to_now = int((datetime.now(UTC) - START).total_seconds() // 60)
    log.append(rows_for(log, ["old1", "old2"]) + rows_for(log, ["recent"], minutes=minutes_to_now - 60))
    assert log.flush()
    for request_id in ("old1", "recent"):
        assert log.record_feedback(request_id, 2.5) == "created"
    log.close()

    monkeypatch.setenv("HOUSING_LOG_RETENTION_DAYS", str(minutes_to_now / (24 * 60) + 1))
    code, out, err = run_script(RETENTION, patch=monkeypatch)  # the setting: older than every row
    assert code == 0 and out.startswith("deleted 0 prediction(s) and 0 label(s)"), (out, err)
    assert count_rows(url) == (3, 2)

    code, out, err = run_script(RETENTION, "--older-than-days", "2", patch=monkeypatch)  # the flag wins
    assert code == 0 and out.startswith("deleted 2 prediction(s) and 1 label(s) logged before"), (out, err)
    assert count_rows(url) == (1, 1)

    for mistyped in ("-1", "0", "inf", "nan", "1e6"):  # -1 and 0 would delete every row, the others overflow
        refusal = run_script(RETENTION, "--older-than-days", mistyped, patch=monkeypatch)
        assert_refused(refusal, "invalid setting log_retention_days")
    monkeypatch.setenv("HOUSING_LOG_RETENTION_DAYS", "inf")  # the setting, as every monitor round reads it
    code, out, err = run_script(RETENTION, patch=monkeypatch)
    assert code == 2 and "invalid setting log_retention_days" in err, (out, err)
    assert count_rows(url) == (1, 1)
