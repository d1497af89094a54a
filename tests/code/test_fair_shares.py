"""No one client or labeller makes up more than its share: the fair cap on counts, the monitor's window
read client by client from a real SQLite log, and the retraining evidence capped per labeller."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from housing.schema import FEATURE_NAMES, TARGET
from housing.store.log_reads import fair_cap, read_window
from housing.store.retrain_evidence import new_evidence
from housing.store.tables import create_tables, prediction_rows
from tests.helpers import START, numbered_districts


@pytest.mark.parametrize(
    ("counts", "window", "share", "cap"),
    [
        ([5_000], 2_000, 0.5, 2_000),  # one client alone: the newest of the window, whatever its share
        ([1_000, 2_000], 2_000, 0.5, 1_000),  # a flood next to real traffic: half and half
        ([100, 2_000], 2_000, 0.5, 100),  # a flood next to little traffic: no more than the others
        ([300, 400, 5_000], 2_000, 0.5, 700),  # water filling: the small ones keep all theirs
        ([300, 400], 2_000, 0.6, 400),  # nobody over the window or the share: everything
        ([300, 400], 2_000, 0.5, 300),  # two clients at most half each: the larger gives up the difference
        ([50, 50, 50], 120, 1.0, 40),  # the window alone caps
    ],
)
def test_the_fair_cap_keeps_every_client_within_its_share_and_the_window(counts, window, share, cap):
    got = fair_cap(counts, window, share)
    kept = [min(count, got) for count in counts]
    assert got == cap and sum(kept) <= window
    if len(counts) > 1:
        assert max(kept) <= share * sum(kept) + 1e-9


def test_alone_too_gives_a_single_labeller_nothing():
    assert fair_cap([300], 300, 0.5, alone_too=True) == 0
    assert fair_cap([300], 300, 0.5) == 300


def test_the_window_is_read_client_by_client_so_a_flood_neither_hides_nor_makes_up_the_window(log):
    create_tables(log.engine)
    shifted = numbered_districts(600, start=100)  # the real clients' traffic
    for index, client in enumerate(("alice", "bob")):
        ids = [f"{client}{i:04d}" for i in range(300)]
        rows = prediction_rows(
            ids,
            shifted[index * 300 : (index + 1) * 300],
            [2.0] * 300,
            model_name="M",
            model_version="3",
            latency_ms=1.0,
            created_at=log.timestamp(START),
            client=client,
        )
        log.append(rows)
    flood = numbered_districts(2_000, start=5_000)
    for batch in range(20):  # 20 batches of 100 rows, a minute apart
        numbers = range(batch * 100, (batch + 1) * 100)
        log.append(
            prediction_rows(
                [f"flood{i:05d}" for i in numbers],
                flood[batch * 100 : (batch + 1) * 100],
                [2.0] * 100,
                model_name="M",
                model_version="3",
                latency_ms=1.0,
                created_at=log.timestamp(START + timedelta(minutes=5 + batch)),
                client="mallory",
            )
        )
    assert log.flush()
    plain = read_window(log.engine, last_n=2_000)
    assert set(plain["client"]) == {"mallory"}  # by count alone the flood pushes everyone out
    fair = read_window(log.engine, last_n=2_000, client_share=0.5)
    counts = fair["client"].value_counts().to_dict()
    assert counts == {"alice": 300, "bob": 300, "mallory": 600}
    newest = fair[fair["client"] == "mallory"]["request_id"]
    assert sorted(newest) == [f"flood{i:05d}" for i in range(1_400, 2_000)]  # its newest rows
    assert list(fair.columns) == [
        "request_id",
        "created_at",
        *FEATURE_NAMES,
        "prediction",
        "model_version",
        "client",
        "interval_low",
        "interval_high",
        TARGET.name,
        "labeller",
    ]


def labelled(labellers: list[str]) -> pd.DataFrame:
    rows = numbered_districts(len(labellers))
    frame = pd.DataFrame(rows, columns=list(FEATURE_NAMES))
    frame[TARGET.name] = np.linspace(1, 2, len(labellers))
    frame["request_id"] = [f"r{i}" for i in range(len(labellers))]
    frame["created_at"] = [START + timedelta(seconds=i) for i in range(len(labellers))]
    frame["labeller"] = labellers
    return frame


def test_one_labeller_makes_up_no_more_than_its_share_of_the_evidence():
    frame = labelled(["mallory"] * 300 + ["alice"] * 60 + ["bob"] * 40)
    capped = new_evidence(frame, set(), 0.5)
    assert capped.districts == 200 and capped.over_share == 200 and capped.labellers == 3
    kept = capped.rows["labeller"].value_counts().to_dict()
    assert kept == {"mallory": 100, "alice": 60, "bob": 40}
    assert set(capped.rows[capped.rows["labeller"] == "mallory"]["request_id"]) == {
        f"r{i}" for i in range(200, 300)
    }  # its newest districts
    alone = new_evidence(labelled(["mallory"] * 300), set(), 0.5)
    assert alone.districts == 0 and alone.over_share == 300  # one labeller alone makes no evidence
    assert new_evidence(labelled(["mallory"] * 300), set()).districts == 300  # without a share: all of it
