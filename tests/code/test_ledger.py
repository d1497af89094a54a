"""The production ledger on a real SQLite file in a temp dir: entries come back oldest first with their
evidence, per model, and previous_production finds where a rollback goes (further back on each rollback)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from housing.registry.ledger import (
    ROLLBACK_REASON,
    LedgerEntry,
    previous_production,
    read_history,
    record_change,
    summarise_evidence,
)
from housing.store.tables import make_engine

START = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def engine(tmp_path: Path):
    opened = make_engine(f"sqlite:///{tmp_path / 'log' / 'predictions.db'}")
    yield opened
    opened.dispose()


def entry(
    minutes: int,
    from_version: str | None,
    to_version: str,
    *,
    model: str = "CaliforniaHousing",
    reason: str = "beats production",
    command: str = "promote.py",
) -> LedgerEntry:
    return LedgerEntry(
        START + timedelta(minutes=minutes),
        model,
        from_version,
        to_version,
        command,
        reason,
        {"r2": 0.81, "candidates": ["lightgbm", "ridge"], "run": f"run-{to_version}"},
    )


def test_an_empty_ledger_has_no_history_and_no_previous_production(engine):
    assert read_history(engine, "CaliforniaHousing") == []
    assert previous_production(engine, "CaliforniaHousing", "1") is None


def test_history_comes_back_oldest_first_with_its_evidence_and_per_model(engine):
    written = [
        entry(0, None, "1"),
        entry(5, "1", "2", model="Other"),
        entry(10, "1", "3", command="monitor.py", reason="drift"),
    ]
    for each in written:
        record_change(engine, each)
    history = read_history(engine, "CaliforniaHousing")
    assert [(e.from_version, e.to_version, e.command, e.reason) for e in history] == [
        (None, "1", "promote.py", "beats production"),
        ("1", "3", "monitor.py", "drift"),
    ]
    assert [e.at for e in history] == [START, START + timedelta(minutes=10)]  # time-zone aware, in UTC
    assert history[1].evidence == {"r2": 0.81, "candidates": ["lightgbm", "ridge"], "run": "run-3"}
    assert history[0].id is not None and history[1].id is not None and history[0].id < history[1].id
    assert [e.to_version for e in read_history(engine, "Other")] == ["2"]


def test_a_limited_history_is_the_newest_entries_still_oldest_first(engine):
    for minutes, (before, after) in enumerate([(None, "1"), ("1", "2"), ("2", "3"), ("3", "4")]):
        record_change(engine, entry(minutes, before, after))
    assert [e.to_version for e in read_history(engine, "CaliforniaHousing", limit=2)] == ["3", "4"]


def test_previous_production_is_the_version_the_newest_move_to_production_came_from(engine):
    for minutes, (before, after) in enumerate([(None, "1"), ("1", "2"), ("2", "1"), ("1", "3")]):
        record_change(engine, entry(minutes, before, after))
    assert previous_production(engine, "CaliforniaHousing", "3") == "1"
    assert previous_production(engine, "CaliforniaHousing", "1") == "2"  # the newest move to 1 came from 2
    assert (
        previous_production(engine, "CaliforniaHousing", "7") is None
    )  # never moved there through the ledger
    assert previous_production(engine, "Other", "3") is None


def test_the_first_production_has_no_previous_one(engine):
    record_change(engine, entry(0, None, "1"))
    assert previous_production(engine, "CaliforniaHousing", "1") is None


def test_rolling_back_twice_walks_further_back_instead_of_undoing_the_first_rollback(engine):
    for minutes, (before, after) in enumerate([(None, "1"), ("1", "2"), ("2", "3")]):
        record_change(engine, entry(minutes, before, after))
    assert previous_production(engine, "CaliforniaHousing", "3") == "2"
    record_change(engine, entry(10, "3", "2", reason=ROLLBACK_REASON, command="promote.py --rollback"))
    assert previous_production(engine, "CaliforniaHousing", "2") == "1"


def test_evidence_is_summarised_on_one_short_line():
    assert (
        summarise_evidence({"r2": 0.81, "reasons": ["drift", "rmse"]}) == 'r2=0.81, reasons=["drift","rmse"]'
    )
    assert summarise_evidence({}) == "-"
    long = summarise_evidence({"notes": "x\ny" * 200}, limit=40)
    assert len(long) == 40 and "\n" not in long and long.endswith("…")
