"""The one settings object: every path, URI, name and threshold, overridable by environment and flags.

:class:`Settings` gathers the fields of each concern (:mod:`housing.config.training`,
:mod:`housing.config.serving`, :mod:`housing.config.monitoring`) with the paths and stores they share.
Environment variables use the ``HOUSING_`` prefix (``HOUSING_ARTIFACTS_DIR``, ``HOUSING_DATA_SOURCE``...),
except the tracking store, which follows MLflow's standard ``MLFLOW_TRACKING_URI``. Command-line flags
are passed as keyword arguments to :func:`get_settings` and win over the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from housing.config.monitoring import MonitoringSettings
from housing.config.serving import ServingSettings
from housing.config.training import TrainingSettings

PROJECT_DIR = Path(__file__).resolve().parent.parent.parent
"""The repository root: default home of ``artifacts/`` and ``mlflow.db``."""


class Settings(TrainingSettings, ServingSettings, MonitoringSettings):
    """Configuration of every stage, the API and the monitor."""

    model_config = SettingsConfigDict(env_prefix="HOUSING_", extra="forbid", validate_default=True)

    # --- data and artifacts ---------------------------------------------------------------------
    artifacts_dir: Path = Field(PROJECT_DIR / "artifacts", description="Where stages write their outputs.")
    data_source: str | None = Field(
        None,
        description="CSV path or URL of the dataset; unset means scikit-learn's downloader.",
    )
    monitor_reports_dir: Path | None = Field(
        None,
        description=(
            "Where the monitor writes its reports and the API reads its latest figures; unset:"
            " <artifacts>/reports (an API in another container mounts the monitor's)."
        ),
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
        """Where the monitor writes its reports and the API reads the latest figures for /metrics."""
        return self.monitor_reports_dir or self.artifacts_dir / "reports"

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
