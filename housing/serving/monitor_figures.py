"""The latest monitor round's figures on the API's /metrics, read from the decision file the round wrote."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class MonitorFigures(Collector):
    """The latest monitor decision's figures (``decision_latest.json`` in the reports folder), read when
    /metrics is scraped (re-read only when the file changed): the error estimated without labels, overall and
    per segment, with its interval, the realized error on labelled traffic, the estimate's calibration gap and
    the labels needed to confirm an expected degradation. The monitor is a batch job with no endpoint of its
    own; the API it watches exposes what it found. Nothing is exposed before the first monitor run."""

    def __init__(self, decision_path: Path) -> None:
        self.path = decision_path
        self._seen: tuple[float, int] | None = None
        self._record: dict[str, Any] = {}

    def _latest(self) -> dict[str, Any]:
        try:
            stat = self.path.stat()
            if self._seen != (stat.st_mtime, stat.st_size):
                self._record = json.loads(self.path.read_text())
                self._seen = (stat.st_mtime, stat.st_size)
        except (OSError, ValueError):
            self._record, self._seen = {}, None
        return self._record

    def collect(self) -> Iterator[GaugeMetricFamily]:
        record = self._latest()
        if not record:
            return
        version = str(record.get("production_version", ""))

        def family(name: str, documentation: str, values: dict[str, Any]) -> GaugeMetricFamily | None:
            gauge = GaugeMetricFamily(name, documentation, labels=["production_version", "segment"])
            found = False
            for segment, value in values.items():
                if isinstance(value, int | float) and math.isfinite(value):
                    gauge.add_metric([version, segment], float(value))
                    found = True
            return gauge if found else None

        segments = record.get("estimated_rmse_by_segment") or {}
        interval = record.get("estimated_rmse_interval") or [None, None]
        calibration = record.get("estimation_calibration") or {}
        families = (
            family(
                "housing_monitor_estimated_rmse",
                "RMSE estimated without labels on the last monitor window's unlabelled "
                "predictions (segment=all, or a region / income band).",
                {
                    "all": record.get("estimated_rmse"),
                    **{name: value.get("rmse") for name, value in segments.items()},
                },
            ),
            family(
                "housing_monitor_estimated_rmse_low",
                "Lower end of the estimated RMSE's interval.",
                {"all": interval[0], **{name: value.get("rmse_low") for name, value in segments.items()}},
            ),
            family(
                "housing_monitor_estimated_rmse_high",
                "Upper end of the estimated RMSE's interval.",
                {"all": interval[1], **{name: value.get("rmse_high") for name, value in segments.items()}},
            ),
            family(
                "housing_monitor_realized_rmse",
                "RMSE on the last monitor window's labelled predictions.",
                {"all": record.get("rmse")},
            ),
            family(
                "housing_monitor_estimation_gap",
                "Estimated / realized RMSE - 1 on the window's labelled predictions (calibration).",
                {"all": calibration.get("relative_gap")},
            ),
            family(
                "housing_monitor_labels_to_confirm",
                "Labels needed to confirm an expected degradation (0: none expected).",
                {"all": record.get("labels_to_confirm")},
            ),
            *interval_families(record, family),
        )
        yield from (gauge for gauge in families if gauge is not None)


def interval_families(
    record: dict[str, Any], family: Callable[[str, str, dict[str, Any]], GaugeMetricFamily | None]
) -> tuple[GaugeMetricFamily | None, ...]:
    """The prediction interval's coverage on the window's labelled predictions (overall and per segment), its
    mean width, and the online state the monitor found it served with."""
    overall = record.get("interval_coverage") or {}
    segments = record.get("interval_coverage_by_segment") or {}
    state = record.get("interval_state") or {}
    return (
        family(
            "housing_monitor_interval_coverage",
            "Share of the last window's labelled predictions whose served range held the true value.",
            {
                "all": overall.get("coverage"),
                **{name: value.get("coverage") for name, value in segments.items()},
            },
        ),
        family(
            "housing_monitor_interval_coverage_low",
            "Lower end of the coverage's binomial interval.",
            {"all": overall.get("low"), **{name: value.get("low") for name, value in segments.items()}},
        ),
        family(
            "housing_monitor_interval_width",
            "Mean width of the ranges served to the last window's labelled predictions.",
            {"all": overall.get("mean_width")},
        ),
        family(
            "housing_monitor_interval_level",
            "The level the prediction intervals are calibrated to.",
            {"all": record.get("interval_level")},
        ),
        family(
            "housing_monitor_interval_width_factor",
            "The online width factor the served ranges carry (1: as calibrated), per segment.",
            {name: value.get("width") for name, value in state.items()},
        ),
        family(
            "housing_monitor_interval_shift",
            "The online centre factor of the served ranges (1: as calibrated), per segment.",
            {name: value.get("shift") for name, value in state.items()},
        ),
    )
