"""Settings of the pipeline's stages: preprocessing, training and the promotion gates (part of
:class:`housing.config.settings.Settings`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings


class TrainingSettings(BaseSettings):
    """How the stages split, fit and gate the candidates."""

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
        Path(__file__).resolve().parent.parent / "training" / "candidates.yaml",
        description="Reviewed hyperparameters of every candidate.",
    )

    # --- promotion gates -------------------------------------------------------------------------
    staging_r2_threshold: float = Field(
        0.7, description="Test-split R2 a candidate needs for the staging gate."
    )
    production_r2_threshold: float = Field(
        0.75, description="Test-split R2 a candidate needs to replace production."
    )
    interval_level: float = Field(
        0.9,
        gt=0.5,
        lt=1,
        description="Share of true values a version's prediction interval is calibrated to hold.",
    )
