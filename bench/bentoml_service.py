"""The production model served by BentoML, the peer bench/serve.py measures this API against.

Runs in BentoML's own environment (bench/serve.py creates it; BentoML is not a project dependency), started by
``bentoml serve bentoml_service:HousingPeer`` with:

- ``HOUSING_PEER_MODEL``: the production pipeline saved by bench/serve.py as a skops file (the same fitted
  object this API serves);
- ``HOUSING_PEER_TRUSTED_TYPES``: the comma-separated types skops may load beyond its defaults (the project's
  list, never pickle);
- the project root on ``PYTHONPATH``, for the pipeline's own transformers.

``POST /predict`` takes ``{"rows": [{feature: value, ...}]}``, each row validated against the same feature
model the API documents, and answers one prediction per row. Adaptive batching is on, with BentoML's defaults:
concurrent requests are merged into one ``predict`` call of up to ``MAX_BATCH_SIZE`` rows (a tighter latency
budget makes BentoML refuse requests with 503 under this load rather than answer them).
"""

from __future__ import annotations

import os

import bentoml
import pandas as pd
import skops.io

from housing.api.schemas import HousingFeatures
from housing.schema import FEATURE_NAMES

MAX_BATCH_SIZE = 100


@bentoml.service(workers=1)
class HousingPeer:
    def __init__(self) -> None:
        trusted = [name for name in os.environ["HOUSING_PEER_TRUSTED_TYPES"].split(",") if name]
        self.pipeline = skops.io.load(os.environ["HOUSING_PEER_MODEL"], trusted=trusted)

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE)
    def predict(self, rows: list[HousingFeatures]) -> list[float]:
        frame = pd.DataFrame([row.model_dump() for row in rows], columns=list(FEATURE_NAMES))
        return [float(value) for value in self.pipeline.predict(frame)]
