"""The live verdict's input: the labelled requests both models scored, one per district."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from housing.registry.live_verdict import first_scored, paired_requests
from housing.store.tables import prediction_rows
from tests.helpers import CHALLENGER, CHAMPION, numbered_districts, record_label, served_batch, shadow_scorer


def test_paired_requests_reads_both_arms_once_per_district(log):
    shadow, _ = shadow_scorer(log, lambda alias: CHALLENGER if alias == "production" else CHAMPION)
    shadow.submit(served_batch(log, ["a", "b"], CHAMPION))  # districts 1 and 2
    shadow.submit(served_batch(log, ["c"], CHALLENGER, start=3))  # district 3, canary
    shadow.submit(served_batch(log, ["d"], CHAMPION, start=1))  # district 1 again: no new evidence
    shadow.drain()
    log.append(
        prediction_rows(
            ["e"],
            numbered_districts(1, start=4),
            [9.0],
            model_name="M",
            model_version="3",
            latency_ms=1.0,
            created_at=log.timestamp(datetime.now(UTC)),
        )
    )  # no challenger then: not paired
    log.flush()
    for request_id in "abcde":
        record_label(log, request_id, 1.0)
    pairs = paired_requests(log.engine, "3", "7")
    assert len(pairs) == 3
    assert pairs["champion"].tolist() == pytest.approx([0.2, 0.4, 0.6])
    assert pairs["challenger"].tolist() == pytest.approx([0.3, 0.6, 0.9])
    assert paired_requests(log.engine, "3", "8").empty
    assert first_scored(log.engine, "7") is not None
    assert first_scored(log.engine, "8") is None
