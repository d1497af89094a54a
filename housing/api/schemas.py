"""Request and response models of the API; the feature model is built from the feature contract."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter, create_model

from housing.schema import EXAMPLE_REQUEST, FEATURES, TARGET, ColumnSpec

EXAMPLE_FEATURES: dict[str, JsonValue] = {**EXAMPLE_REQUEST}
"""The contract's example request, typed as JSON for the schemas' examples."""


def feature_field(spec: ColumnSpec) -> tuple[type[float], Any]:
    """The pydantic field of one contract column: a float within its range, described with its unit."""
    bound: dict[str, Any] = {"gt" if spec.exclusive_minimum else "ge": spec.minimum, "le": spec.maximum}
    return float, Field(
        description=f"{spec.description}, in {spec.unit}. Valid: {spec.rule()}.",
        examples=[spec.example],
        **bound,
    )


FEATURE_FIELDS: dict[str, Any] = {spec.name: feature_field(spec) for spec in FEATURES}
HousingFeatures: type[BaseModel] = create_model(
    "HousingFeatures",
    __config__=ConfigDict(
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        json_schema_extra={"examples": [EXAMPLE_FEATURES]},
    ),
    __doc__=(
        "The 8 features of one district. Numbers only (no strings), finite, within the ranges shown; "
        "unknown fields are refused so that a misspelt field never silently goes missing."
    ),
    **FEATURE_FIELDS,
)
one_row_adapter: TypeAdapter[Any] = TypeAdapter(HousingFeatures)
"""Validates the body of a single-row request."""
many_rows_adapter: TypeAdapter[list[Any]] = TypeAdapter(list[HousingFeatures])
"""Validates the body of a batch request."""


class PredictionInterval(BaseModel):
    level: float = Field(description="The share of true values ranges like this one are calibrated to hold.")
    low: float = Field(description=f"Lower end, in {TARGET.unit}.")
    high: float = Field(description=f"Upper end, in {TARGET.unit}.")
    low_usd: float
    high_usd: float


class Prediction(BaseModel):
    request_id: str = Field(
        description="Id of this prediction in the log; send it back to /feedback with the true value."
    )
    MedHouseVal: float = Field(description=f"Predicted median house value, in {TARGET.unit}.")
    price_usd: float = Field(description="The same prediction in US dollars (1990 values).")
    interval: PredictionInterval | None = Field(
        description=(
            "The range the true value lies in with the stated probability (90 %: 9 districts in 10 like this"
            " one), calibrated on the model's own errors and kept calibrated by the labels sent back; null"
            " for a version registered without one."
        )
    )
    interval_note: str | None = Field(None, description="Why there is no interval, when there is none.")


class SinglePrediction(Prediction):
    model_name: str
    model_version: str


class BatchPrediction(BaseModel):
    model_name: str
    model_version: str
    predictions: list[Prediction] = Field(description="One prediction per input row, in the same order.")


class Feedback(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        json_schema_extra={"examples": [{"request_id": "3f2c9a1e0b7d4c5e8f6a2b1c0d9e8f7a", "actual": 2.1}]},
    )
    request_id: str = Field(min_length=1, max_length=32, description="The request_id /predict returned.")
    actual: float = Field(
        gt=TARGET.minimum, le=TARGET.maximum, description=f"The true {TARGET.name}, in {TARGET.unit}."
    )


class FeedbackAccepted(BaseModel):
    request_id: str
    status: str = Field(description="'recorded', or 'unchanged' when the same label was already stored.")


class ProblemDetail(BaseModel):
    detail: str = Field(description="One sentence saying what is wrong.")
    errors: list[dict[str, Any]] | None = Field(
        None, description="Every validation error: row, field, rule, message."
    )


class ServedModel(BaseModel):
    name: str
    version: str
    loaded_at: datetime


class AliasState(BaseModel):
    name: str = Field(description="The alias the service follows.")
    version: str | None = Field(description="The version it named at the last successful check.")
    missing: bool = Field(description="The registry answered and no version has the alias.")


class FailedVersionState(BaseModel):
    version: str
    reason: str = Field(description="Why it did not load, in one line (credentials masked).")
    failed_at: datetime


class RegistryState(BaseModel):
    uri: str = Field(description="The tracking store, credentials masked.")
    reachable: bool | None
    last_check: datetime | None
    checks: int = Field(description="Looks at the registry since the start.")
    failed_checks: int = Field(description="Looks that could not reach the registry.")
    last_error: str | None
    alias: AliasState
    failed_version: FailedVersionState | None = Field(
        description="A version the alias names that failed to load: not tried again until the alias moves."
    )


class LogState(BaseModel):
    pending_rows: int = Field(
        description="Rows answered and not yet in the database (memory and spill files)."
    )
    written_rows: int
    last_error: str | None


class Readiness(BaseModel):
    status: str = Field(description="'ready' (200) or 'not ready' (503).")
    reason: str | None = Field(None, description="Why not ready, and what to do.")
    model: ServedModel | None
    registry: RegistryState
    prediction_log: LogState


class StepInfo(BaseModel):
    name: str = Field(description="The pipeline step.")
    kind: str = Field(description="Its class, e.g. LGBMRegressor.")
    compiled: bool = Field(description="True: compiled array arithmetic runs; false: the library's own code.")


class ChallengerInfo(BaseModel):
    version: str
    alias: str
    candidate: str | None
    run_id: str | None
    loaded_at: datetime
    compiled_predict: bool
    predict_path: list[StepInfo]
    mode: str = Field(description="'shadow', or 'shadow + canary' when it also answers a share of requests.")
    canary_percent: float
    shadow_backlog_rows: int = Field(description="Served rows waiting for the challenger's prediction.")


class ChallengerStatus(BaseModel):
    alias: str
    alias_version: str | None
    last_error: str | None
    history: list[str]


class ModelInfo(BaseModel):
    name: str
    version: str
    alias: str
    candidate: str | None
    run_id: str | None
    metrics: dict[str, float] = Field(description="The version's training metrics (test split).")
    loaded_at: datetime
    compiled_predict: bool = Field(
        description="Every step compiled and the path verified against pipeline.predict."
    )
    predict_path: list[StepInfo]
    history: list[str] = Field(description="Recent loads and switches, newest last.")
    challenger: ChallengerInfo | None = Field(
        description="The version in shadow (staging), when one is loaded."
    )
    challenger_status: ChallengerStatus
