"""Logging and counting what was predicted: every answered row into the prediction log (through the shadow
scorer while a challenger is loaded) with its range and its client, and the Prometheus counts, a micro-batch
of single rows in one step and a batch request at once."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import numpy as np

from housing.api.services import Services
from housing.serving.micro_batch import Bounds, Pending
from housing.serving.model_service import LoadedModel
from housing.serving.shadow import ServedBatch
from housing.store.tables import prediction_rows


def log_predictions(
    services: Services,
    request_ids: list[str],
    features: np.ndarray,
    values: list[float],
    model: LoadedModel,
    started: float,
    client: str | None = None,
    bounds: Bounds = None,
) -> None:
    """Buffer the predictions for the prediction log (through the shadow scorer while a challenger is loaded)
    and count them in the Prometheus metrics. The model's alias says which one answered (staging: a canary
    request).
    """
    served_alias = model.alias
    latency_ms = (time.perf_counter() - started) * 1000
    created_at = services.prediction_log.timestamp(datetime.now(UTC))
    if services.challenger() is None or not services.shadow.submit(
        ServedBatch(
            request_ids,
            features,
            values,
            model,
            served_alias,
            latency_ms,
            created_at,
            client,
            *(bounds if bounds is not None else (None, None)),
        )
    ):
        services.prediction_log.append(
            prediction_rows(
                request_ids,
                features,
                values,
                model_name=model.name,
                model_version=model.version,
                latency_ms=latency_ms,
                created_at=created_at,
                served_alias=served_alias,
                client=client,
                intervals=bounds,
            )
        )
    count_predictions(services, model.version, served_alias, values)


def log_batch(
    services: Services,
    model: LoadedModel,
    batch: list[Pending],
    features: np.ndarray,
    values: list[float],
    bounds: Bounds,
    now: float,
) -> None:
    """Log and count a micro-batch of single-row predictions in one step: one timestamp, one buffer append
    (or, while a challenger is loaded, one hand-over to the shadow scorer per request), one increment per
    metric. Raises LogUnavailable when the log can take none of them (the batch is then not answered)."""
    created_at = services.prediction_log.timestamp(datetime.now(UTC))
    served_alias, name, version = model.alias, model.name, model.version
    lows: list[float | None] = [None] * len(batch) if bounds is None else list(bounds[0])
    highs: list[float | None] = [None] * len(batch) if bounds is None else list(bounds[1])
    refused: list[int] = list(range(len(batch)))
    if services.challenger() is not None:
        refused = [
            index
            for index, pending in enumerate(batch)
            if not services.shadow.submit(
                ServedBatch(
                    [pending.request_id],
                    features[index : index + 1],
                    [values[index]],
                    model,
                    served_alias,
                    (now - pending.started) * 1000,
                    created_at,
                    pending.client,
                    None if bounds is None else [bounds[0][index]],
                    None if bounds is None else [bounds[1][index]],
                )
            )
        ]
    if refused:
        rows = features.tolist()
        services.prediction_log.append(
            [
                (
                    batch[index].request_id,
                    created_at,
                    *rows[index],
                    values[index],
                    name,
                    version,
                    (now - batch[index].started) * 1000,
                    served_alias,
                    None,
                    None,
                    batch[index].client,
                    lows[index],
                    highs[index],
                )
                for index in refused
            ]
        )
    count_predictions(services, version, served_alias, values)


def count_predictions(services: Services, version: str, served_alias: str, values: list[float]) -> None:
    """The Prometheus counts of answered predictions: one increment per metric for the whole batch."""
    services.metrics.predictions.labels(version).inc(len(values))
    services.metrics.answered.labels(served_alias).inc(len(values))
    services.metrics.observe_predictions(values)
