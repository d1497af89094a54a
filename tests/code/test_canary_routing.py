"""The canary's routing: a stable hash of the routing key, the share as the setting."""

from __future__ import annotations

import numpy as np

from housing.serving.shadow import routes_to_challenger, routing_bucket


def test_the_same_key_always_gets_the_same_model_and_the_share_is_the_setting():
    keys = [f"client-{i}".encode() for i in range(20_000)]
    chosen = [routes_to_challenger(key, 10) for key in keys]
    assert 0.09 < np.mean(chosen) < 0.11
    assert chosen == [routes_to_challenger(key, 10) for key in keys]  # stable: a pure function of the key
    assert routing_bucket(b"client-1") == routing_bucket(b"client-1")
    assert not any(routes_to_challenger(key, 0) for key in keys[:1000])
    assert all(routes_to_challenger(key, 100) for key in keys[:1000])
    inside_ten = {key for key, picked in zip(keys, chosen, strict=True) if picked}
    assert inside_ten <= {
        key for key in keys if routes_to_challenger(key, 20)
    }  # raising the share keeps the canary's clients
