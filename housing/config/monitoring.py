"""Settings of the monitor and of retraining: the window, the thresholds, the evidence, the gate on new data,
the Evidently workspace (part of :class:`housing.config.settings.Settings`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings


class MonitoringSettings(BaseSettings):
    """How the monitor watches the served traffic and when it retrains."""

    # --- monitoring and retraining ---------------------------------------------------------------
    monitor_window: int = Field(
        2_000, ge=1, description="Most logged predictions a round reads (the newest of the time window)."
    )
    monitor_window_hours: float = Field(
        168.0,
        gt=0,
        le=87_600,
        allow_inf_nan=False,
        description="A round reads predictions of the last this many hours (--since-minutes).",
    )
    monitor_client_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description=(
            "Most of the window one client's predictions may make up while others sent traffic too (the"
            " rest of its rows are left out), so no single client blinds or drives the monitor."
        ),
    )
    labeller_max_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description=(
            "Most of the retraining evidence and of the live verdict's labels one labeller may make up, once"
            " named labellers are registered."
        ),
    )
    retrain_max_price_step: float = Field(
        1.35,
        gt=1,
        description=(
            "Largest price-index step (up or down) a retrain applies on its own; a larger move is an ALERT a"
            " person approves (monitor.py --approve-price-step)."
        ),
    )
    log_retention_days: float = Field(
        90.0,
        gt=0,
        le=36_500,
        allow_inf_nan=False,
        description=(
            "Logged predictions older than this are deleted by each monitor round, except those retraining"
            " used (its evidence)."
        ),
    )
    monitor_min_window: int = Field(500, ge=1, description="Fewer logged predictions than this: no decision.")
    monitor_min_labels: int = Field(
        200, ge=1, description="Fewer labelled predictions than this: decide on drift only."
    )
    drift_method: str = Field("wasserstein", description="Evidently drift test for the numerical columns.")
    drift_threshold: float = Field(
        0.1, gt=0, description="Threshold of that test (normed Wasserstein distance)."
    )
    drift_share_threshold: float = Field(
        0.2, ge=0, le=1, description="Retrain when more than this share of features drift."
    )
    rmse_threshold: float = Field(
        0.5, gt=0, description="Retrain when RMSE on labelled traffic is above this."
    )
    r2_threshold: float = Field(0.6, description="Retrain when R2 on labelled traffic is below this.")
    estimation_confidence: float = Field(
        0.95,
        gt=0.5,
        lt=1,
        description="Confidence of the interval around the error estimated without labels (loss estimation).",
    )
    retrain_traffic_weight: float = Field(
        0.9,
        gt=0,
        lt=1,
        description=(
            "Most of the weight labelled traffic can carry in retraining and in the gate's evaluation; "
            "its share grows with its effective size (see retrain_traffic_ramp_rows)."
        ),
    )
    retrain_traffic_ramp_rows: float = Field(
        200.0,
        gt=0,
        description=(
            "Effective number of labelled traffic rows at which traffic gets half of retrain_traffic_weight."
        ),
    )
    retrain_traffic_half_life_days: float = Field(
        30.0,
        gt=0,
        description="Age at which a remembered labelled traffic row counts half in retraining.",
    )
    gate_min_labelled_rows: int = Field(
        100,
        ge=1,
        description=(
            "Fewer labelled traffic rows in the gate's evaluation: the gate judges on the test split alone."
        ),
    )
    gate_confidence: float = Field(
        0.95,
        gt=0.5,
        lt=1,
        description=(
            "Confidence of the paired bootstrap interval a challenger must clear to replace production."
        ),
    )
    gate_bootstrap_samples: int = Field(
        1_000, ge=100, description="Bootstrap resamples of the promotion gate."
    )
    monitor_lock_seconds: float = Field(
        180.0,
        gt=0,
        description=(
            "Lease of the retraining lock, renewed every third of it while held; a holder on another machine"
            " that died frees it after this long (one on this machine at once)."
        ),
    )
    evidently_workspace: Path | None = Field(
        None,
        description=(
            "Local Evidently workspace every monitor run adds its snapshot to; unset means"
            " <artifacts>/evidently."
        ),
    )
    evidently_url: str | None = Field(
        None,
        description=(
            "URL of a remote Evidently UI service to add snapshots to instead of the local workspace (teams)."
        ),
    )
    evidently_secret: SecretStr | None = Field(
        None,
        description="Write secret of the remote Evidently UI service (its --secret), when it has one.",
    )
    monitor_ui_host: str = Field(
        "127.0.0.1",
        description="Address make monitor-ui listens on: loopback, as Evidently's open-source UI has no "
        "login (a container sets 0.0.0.0 behind a network only the team reaches).",
    )
    monitor_ui_port: int = Field(
        8002, ge=1, le=65535, description="Port of make monitor-ui (Evidently's UI on the workspace)."
    )
    retrain_holdout_share: float = Field(
        0.3,
        gt=0,
        lt=1,
        description="Newest share of the labelled traffic kept out of training to evaluate on.",
    )
