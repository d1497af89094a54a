"""Request ids: unique, 32 hex digits, ordered by time (so the log's primary key grows at its end)."""

from __future__ import annotations

from housing.api.predict_handler import new_request_ids


def test_request_ids_are_unique_32_hex_digits_ordered_by_time():
    singles = [new_request_ids(1)[0] for _ in range(2_000)]
    batch = new_request_ids(10_000)
    later = new_request_ids(1)[0]
    every = [*singles, *batch, later]
    assert len(set(every)) == len(every) and all(len(rid) == 32 and int(rid, 16) >= 0 for rid in every)
    assert sorted(batch) == batch  # a batch's ids in row order
    assert all(rid[:12] <= later[:12] for rid in every)  # the millisecond prefix never goes back
