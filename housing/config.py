"""The one settings object: every path, URI, name and threshold, overridable by environment and flags.

Environment variables use the ``HOUSING_`` prefix (``HOUSING_ARTIFACTS_DIR``, ``HOUSING_DATA_SOURCE``...),
except the tracking store, which follows MLflow's standard ``MLFLOW_TRACKING_URI``. Command-line flags
are passed as keyword arguments to :func:`get_settings` and win over the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_DIR = Path(__file__).resolve().parent.parent
"""The repository root: default home of ``artifacts/`` and ``mlflow.db``."""


class Settings(BaseSettings):
    """Configuration of every stage, the API and the monitor."""

    model_config = SettingsConfigDict(env_prefix="HOUSING_", extra="forbid", validate_default=True)

    # --- data and artifacts ---------------------------------------------------------------------
    artifacts_dir: Path = Field(PROJECT_DIR / "artifacts", description="Where stages write their outputs.")
    data_source: str | None = Field(
        None,
        description="CSV path or URL of the dataset; unset means scikit-learn's downloader.",
    )

    # --- MLflow -------------------------------------------------------------------------------------
    tracking_uri: str = Field(
        f"sqlite:///{PROJECT_DIR / 'mlflow.db'}",
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "tracking_uri"),
        description="MLflow tracking store (standard MLFLOW_TRACKING_URI).",
    )
    experiment_name: str = Field(
        "California-Housing-Regression", description="MLflow experiment of the training runs."
    )
    monitoring_experiment_name: str = Field(
        "monitoring", description="MLflow experiment of the monitor's rounds."
    )
    model_name: str = Field(
        "CaliforniaHousing", description="Registered model every candidate is a version of."
    )
    production_alias: str = Field("production", description="Registry alias of the served version.")
    staging_alias: str = Field(
        "staging", description="Registry alias of the challenger (shadow scoring, canary)."
    )

    # --- preprocessing and training ------------------------------------------------------------
    random_state: int = Field(42, description="Seed of the train/test split and of every model.")
    test_size: float = Field(0.2, gt=0.0, lt=1.0, description="Share of the rows held out as the test split.")
    outlier_quantiles: tuple[float, float] = Field(
        (0.001, 0.999), description="Quantiles of the training split the heavy-tailed columns are clipped to."
    )
    cv_folds: int = Field(2, ge=2, description="Folds of the cross-validation on the training split.")
    n_jobs: int = Field(2, ge=1, description="Processes used to fit candidates and folds in parallel.")
    estimator_scale: float = Field(
        1.0, gt=0.0, le=1.0, description="Multiplies every ensemble's tree count (tests use < 1)."
    )
    candidates: list[str] | None = Field(None, description="Candidate names to train; unset means all.")
    candidates_path: Path = Field(
        PROJECT_DIR / "housing" / "training" / "candidates.yaml",
        description="Reviewed hyperparameters of every candidate.",
    )

    # --- promotion gates -------------------------------------------------------------------------
    staging_r2_threshold: float = Field(
        0.7, description="Test-split R2 a candidate needs for the staging gate."
    )
    production_r2_threshold: float = Field(
        0.75, description="Test-split R2 a candidate needs to replace production."
    )

    # --- serving ------------------------------------------------------------------------------------
    prediction_log_url: str | None = Field(
        None,
        description=(
            "SQLAlchemy URL of the prediction-log database (predictions, labels, production ledger, locks, "
            "retraining rows); unset means SQLite at <artifacts>/prediction_log.db."
        ),
    )
    max_batch_rows: int = Field(10_000, ge=1, description="Most rows one /predict request may carry.")
    reload_interval: float = Field(10.0, gt=0, description="Seconds between checks of the production alias.")
    admin_token: SecretStr | None = Field(
        None, description="Bearer token of POST /admin/reload; unset disables it."
    )
    feedback_token: SecretStr | None = Field(
        None,
        description=(
            "Bearer token of POST /feedback (the labellers' credential); unset means the token generated "
            "in <artifacts>/secrets/feedback_token (owner-only), shared by make serve and make simulate."
        ),
    )
    unsafe_open_feedback: bool = Field(
        False,
        description=(
            "UNSAFE: accept labels on POST /feedback without a token, from anyone who can reach the API "
            "(label poisoning). Only for a private demo."
        ),
    )
    log_flush_interval: float = Field(
        0.2, gt=0, description="Seconds between batched writes of the prediction log."
    )

    # --- champion and challenger -----------------------------------------------------------------
    canary_percent: float = Field(
        0.0,
        ge=0,
        le=100,
        description=(
            "Share of requests (%) the challenger (the staging alias, when it names another version than"
            " production) answers for real, chosen by a stable hash of X-Routing-Key (else the request id);"
            " 0: shadow only."
        ),
    )
    promotion_mode: Literal["direct", "shadow"] = Field(
        "direct",
        description=(
            "direct: a retrained winner replaces production through the gate; shadow: it becomes the"
            " challenger (staging) and live paired evidence decides (promote.py --from-shadow, and every"
            " monitor run)."
        ),
    )
    shadow_max_wait_hours: float = Field(
        72.0,
        ge=0,
        description=(
            "A challenger without enough live evidence this long after it first scored traffic is dropped."
        ),
    )
    shadow_interval: float = Field(
        0.02, gt=0, le=1, description="Seconds between the shadow scorer's passes."
    )

    # --- hardening: limits on what a client controls, outages ------------------------------------
    max_body_bytes: int = Field(
        65_536, ge=1_024, description="Largest request body of every route but POST /predict (413 above)."
    )
    max_json_depth: int = Field(
        8, ge=2, description="Deepest nesting of arrays/objects a JSON body may have (a valid one has 2)."
    )
    max_json_keys: int = Field(
        64, ge=8, description="Most keys one JSON object of a body may have (a valid one has 8)."
    )
    max_number_chars: int = Field(40, ge=8, description="Longest number literal a JSON body may hold.")
    max_string_chars: int = Field(256, ge=16, description="Longest string a JSON body may hold.")
    max_listed_errors: int = Field(
        20, ge=1, description="Validation errors listed in a 4xx body (the count of the rest is given)."
    )
    body_read_timeout: float = Field(
        10.0, gt=0, description="Seconds a client may take to send a whole request body (408 after)."
    )
    log_buffer_max_rows: int = Field(
        100_000,
        ge=1_000,
        description=(
            "Prediction-log rows kept in memory; past it (or while the database is down) rows spill to disk."
        ),
    )
    db_connect_timeout: float = Field(
        5.0, gt=0, description="Seconds to connect to the prediction-log database before giving up."
    )
    db_statement_timeout: float = Field(
        5.0, gt=0, description="Seconds one statement on the prediction-log database may take."
    )
    download_timeout: float = Field(
        30.0, gt=0, description="Seconds load_data waits on an http(s) data source."
    )
    download_max_bytes: int = Field(
        200_000_000, ge=1_000, description="Largest data source load_data reads (bytes)."
    )

    # --- monitoring and retraining ---------------------------------------------------------------
    monitor_window: int = Field(2_000, ge=1, description="Monitor the last N logged predictions.")
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
        3_600.0,
        gt=0,
        description="Lease of the retraining lock; a holder that died frees it after this long.",
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

    @field_validator("data_source", "prediction_log_url", "evidently_url", mode="before")
    @classmethod
    def _empty_source_means_default(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _check_quantiles(self) -> Settings:
        low, high = self.outlier_quantiles
        if not 0.0 <= low < high <= 1.0:
            raise ValueError("outlier_quantiles must satisfy 0 <= low < high <= 1")
        return self

    # --- derived paths -------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.artifacts_dir / "data"

    @property
    def dataset_path(self) -> Path:
        return self.data_dir / "california_housing.csv"

    @property
    def manifest_path(self) -> Path:
        return self.data_dir / "manifest.json"

    @property
    def split_dir(self) -> Path:
        return self.artifacts_dir / "split"

    @property
    def plots_dir(self) -> Path:
        return self.artifacts_dir / "plots"

    @property
    def reports_dir(self) -> Path:
        return self.artifacts_dir / "reports"

    @property
    def evidently_workspace_dir(self) -> Path:
        """The local Evidently workspace (monitoring history for `make monitor-ui`)."""
        return self.evidently_workspace or self.artifacts_dir / "evidently"

    @property
    def spill_dir(self) -> Path:
        """Where prediction-log rows wait on disk while the database is down or the memory buffer is full."""
        return self.artifacts_dir / "prediction_log_spill"

    @property
    def secrets_dir(self) -> Path:
        return self.artifacts_dir / "secrets"

    @property
    def feedback_token_path(self) -> Path:
        """Where the generated feedback token is kept (owner-only) when HOUSING_FEEDBACK_TOKEN is unset."""
        return self.secrets_dir / "feedback_token"

    @property
    def log_database_url(self) -> str:
        """SQLAlchemy URL of the prediction-log database, which also holds the labels, the production ledger,
        the locks and the retraining rows: ``prediction_log_url``, else SQLite under the artifacts dir."""
        return self.prediction_log_url or f"sqlite:///{self.artifacts_dir / 'prediction_log.db'}"

    @property
    def mlflow_artifact_location(self) -> str | None:
        """Artifact root for new experiments: beside a local SQLite store, else the server's choice."""
        parsed = urlparse(self.tracking_uri)
        if parsed.scheme == "sqlite" and parsed.path not in ("", "/:memory:"):
            # sqlite:///relative.db and sqlite:////absolute.db: drop the one slash that ends the netloc.
            db_path = Path(unquote(parsed.path[1:]))
            return (db_path.parent / "mlruns").resolve().as_uri()
        return None


def get_settings(**overrides: Any) -> Settings:
    """Build the settings from the environment, with non-``None`` ``overrides`` (command-line flags) on
    top."""
    return Settings(**{key: value for key, value in overrides.items() if value is not None})
