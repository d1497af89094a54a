"""Prometheus metrics: the bulk paths count exactly as observe() does, the challenger's series, and a killed
worker's live gauges cleaned up in multiprocess mode."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest, multiprocess

from housing.serving.prometheus import Metrics, forget_dead_workers


def histogram_lines(metrics: Metrics) -> dict[str, float]:
    lines = generate_latest(metrics.registry).decode().splitlines()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in lines
        if line.startswith("housing_prediction_value") and "_created" not in line
    }


@pytest.mark.parametrize("count", [10, 1000])
def test_bulk_observation_equals_one_by_one(count):
    values = list(np.random.default_rng(0).uniform(0, 9, count)) + [0.5, 5.0, 8.0]
    bulk, single = Metrics(), Metrics()
    bulk.observe_predictions(values)
    for value in values:
        single.prediction_value.observe(value)
    got, expected = histogram_lines(bulk), histogram_lines(single)
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], rel=1e-12), key


def test_served_model_info_follows_the_version():
    metrics = Metrics()
    metrics.set_served_model("M", "3", "production")
    metrics.set_served_model("M", "4", "production")
    text = generate_latest(metrics.registry).decode()
    assert 'housing_model_info{alias="production",name="M",version="4"} 1.0' in text
    assert 'version="3"' not in text
    assert "housing_model_loaded 1.0" in text


def test_the_challenger_has_its_own_info_series_and_never_marks_a_model_loaded():
    metrics = Metrics()
    metrics.set_served_model("M", "3", "production")
    metrics.set_served_model("M", "7", "staging", production=False)
    text = generate_latest(metrics.registry).decode()
    assert 'housing_model_info{alias="production",name="M",version="3"} 1.0' in text
    assert 'housing_model_info{alias="staging",name="M",version="7"} 1.0' in text
    metrics.set_served_model(None, None, "staging", production=False)  # the challenger is dropped
    text = generate_latest(metrics.registry).decode()
    assert 'alias="staging"' not in text
    assert "housing_model_loaded 1.0" in text  # production is still loaded


def test_shadow_differences_are_summed_in_bulk_like_single_observations():
    bulk, single = Metrics(), Metrics()
    answers, shadow = np.linspace(0.5, 5.0, 500), np.linspace(5.0, 0.5, 500)
    bulk.observe_shadow(answers, shadow, 0.002)
    for value in np.abs(answers - shadow):
        single.shadow_difference.observe(value)
    assert bulk.shadow_difference._sum.get() == pytest.approx(single.shadow_difference._sum.get())
    assert bulk.shadow_difference._count.get() == 500
    assert bulk.shadow_rows._value.get() == 500


WORKER = """
import os, signal
from prometheus_client import Gauge
Gauge("housing_model_loaded", "1 when loaded.", multiprocess_mode="livemin").set(1)
Gauge("housing_model_info", "info", ["version"], multiprocess_mode="liveall").labels("3").set(1)
os.kill(os.getpid(), signal.SIGKILL)  # dies without any clean-up, like a worker killed by the OOM killer
"""


def test_a_killed_workers_live_gauges_disappear_from_the_next_scrape(tmp_path, monkeypatch):
    worker = subprocess.run(
        [sys.executable, "-c", WORKER],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
        check=False,
    )
    assert worker.returncode == -signal.SIGKILL
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))

    def scrape() -> str:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(tmp_path))
        return generate_latest(registry).decode()

    assert "housing_model_info{" in scrape()  # the dead worker's series is still there...
    dead = forget_dead_workers(str(tmp_path))
    assert len(dead) == 1
    assert (
        "housing_model_info{" not in scrape() and "housing_model_loaded" not in scrape()
    )  # ...until the clean-up
    assert forget_dead_workers(str(tmp_path)) == []


GRACEFUL_WORKER = """
from housing.serving.prometheus import Metrics, worker_exiting
metrics = Metrics()
metrics.model_loaded.set(1)
metrics.model_info.labels(alias="production", name="CaliforniaHousing", version="3").set(1)
metrics.predictions.labels(model_version="3").inc(5)
worker_exiting()  # what the API's lifespan calls on a graceful shutdown
"""


def test_a_worker_that_exits_gracefully_takes_its_live_gauges_and_leaves_its_totals(tmp_path):
    worker = subprocess.run(
        [sys.executable, "-c", GRACEFUL_WORKER],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
        check=False,
        capture_output=True,
        text=True,
    )
    assert worker.returncode == 0, worker.stderr
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))
    scraped = generate_latest(registry).decode()
    assert (
        "housing_model_info{" not in scraped and "housing_model_loaded" not in scraped
    )  # no forget_dead_workers needed
    assert (
        'housing_predictions_total{model_version="3"} 5.0' in scraped
    )  # a total stays: totals never go back


def test_the_predict_path_says_what_runs_for_each_step_and_follows_the_version():
    metrics = Metrics()
    steps = [
        {"name": "features", "kind": "SpatialFeatures", "compiled": True},
        {"name": "model", "kind": "KNN", "compiled": False},
    ]
    metrics.set_predict_path("production", "3", steps)
    text = generate_latest(metrics.registry).decode()
    assert (
        'housing_model_predict_path{alias="production",kind="KNN",path="library",step="model",'
        'version="3"} 1.0' in text
    )
    assert 'path="compiled",step="features",version="3"} 1.0' in text
    metrics.set_predict_path(
        "production", "4", [{"name": "model", "kind": "LGBMRegressor", "compiled": True}]
    )
    text = generate_latest(metrics.registry).decode()
    assert (
        'version="3"' not in text
        and 'kind="LGBMRegressor",path="compiled",step="model",version="4"} 1.0' in text
    )
    metrics.set_predict_path("staging", None, [])
    assert 'alias="staging"' not in generate_latest(metrics.registry).decode()
