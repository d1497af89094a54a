"""Token buckets per client and per labeller, on a clock the test sets: a burst, then the rate; a request
larger than what is left waits for it whole; keys are bounded."""

from __future__ import annotations

from housing.api.rate_limits import RateLimiter, retry_after


def test_a_burst_then_the_rate_and_the_wait_until_a_request_would_fit():
    limits = RateLimiter(rate=100, burst=1_000)
    assert limits.take("alice", 1_000, now=0.0) == 0.0  # the whole burst at once
    assert limits.take("alice", 1, now=0.0) == 0.01  # then one unit per 1/100 s
    assert limits.take("alice", 50, now=0.5) == 0.0  # 50 units back after half a second
    assert limits.take("alice", 10, now=0.5) == 0.1
    assert limits.take("bob", 1_000, now=0.5) == 0.0  # every key has its own bucket
    assert retry_after(0.1) == "1" and retry_after(2.3) == "3"


def test_a_request_larger_than_the_burst_waits_for_a_full_bucket():
    limits = RateLimiter(rate=10, burst=100)
    assert limits.take("alice", 1_000, now=0.0) == 0.0  # a 1,000-row batch takes a full bucket
    assert limits.take("alice", 1_000, now=5.0) == 5.0  # the next one waits until it is full again


def test_the_least_recently_used_keys_go_first_past_the_bound():
    limits = RateLimiter(rate=1, burst=10, max_keys=2)
    limits.take("a", 10, now=0.0)
    limits.take("b", 10, now=0.0)
    limits.take("a", 0, now=0.0)  # a used again: b is the oldest now
    limits.take("c", 10, now=0.0)  # three keys: b goes
    assert limits.take("a", 1, now=0.0) > 0  # a is remembered (empty)
    assert limits.take("b", 10, now=0.0) == 0.0  # b was forgotten: a full bucket again
