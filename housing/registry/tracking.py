"""MLflow plumbing: connecting to the tracking store, experiments, datasets and skops model logging."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import subprocess
import warnings
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.http_dataset_source import HTTPDatasetSource
from mlflow.data.pandas_dataset import PandasDataset, from_pandas
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import infer_signature
from sklearn.pipeline import Pipeline

from housing.config.settings import PROJECT_DIR, Settings
from housing.errors import UserError, mask_uri, masked_first_line
from housing.registry.model_files import SKOPS_TRUSTED_TYPES
from housing.schema import EXAMPLE_REQUEST, FEATURE_NAMES, FEATURES, TARGET, TARGET_UNIT_DOLLARS

logger = logging.getLogger(__name__)

RUN_TYPE_TAG = "housing.run_type"
TRAINING_RUN_TYPE = "training"
CANDIDATE_RUN_TYPE = "candidate"
"""Tag that tells a comparison (parent) run from a candidate (child) run; promote finds the latest parent."""

MODEL_REQUIREMENTS = ("scikit-learn", "skops", "numpy", "pandas", "scipy", "lightgbm")
"""Packages the logged pipeline needs at load time; pinned to the versions installed when it was trained."""


def connect(settings: Settings) -> MlflowClient:
    """Point MLflow at the tracking store of ``settings`` and check it answers; one sentence if not."""
    quiet_mlflow()
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    client = MlflowClient(settings.tracking_uri, registry_uri=settings.tracking_uri)
    try:
        client.search_experiments(max_results=1)
    except Exception as error:  # noqa: BLE001 - any failure here means the store is unusable
        raise UserError(
            f"could not reach the MLflow tracking store at {mask_uri(settings.tracking_uri)} "
            f"({masked_first_line(error, settings.tracking_uri)})"
        ) from None
    return client


def registry_client_for(settings: Settings) -> MlflowClient:
    """A client of the settings' tracking store that leaves MLflow's process-wide tracking URI alone
    (connect() sets it, for the stages' fluent API; a helper called inside another program must not)."""
    quiet_mlflow()
    return MlflowClient(settings.tracking_uri, registry_uri=settings.tracking_uri)


def quiet_mlflow() -> None:
    """MLflow defaults for a pipeline: no progress bar per artifact download (stage output and server
    logs stay readable), no usage telemetry sent to MLflow's servers (a pipeline shouldn't phone home;
    MLFLOW_DISABLE_TELEMETRY=false opts in), and quick failure when the tracking server is down."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # An unreachable tracking server should be reported in seconds, not after MLflow's default of 7
    # retries with exponential backoff (minutes); each can be overridden in the environment.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
"""MLflow 3's UI opens an experiment of this kind on its runs (untagged ones open on the GenAI overview)."""


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """Return the id of experiment ``name``, creating it (with its artifact root) if needed, and marked as a
    model-training experiment (an existing one is marked too: the tag is set once, idempotently)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(
            name, artifact_location=artifact_location, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND}
        )
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING_KIND:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    return experiment.experiment_id


def model_description() -> str:
    """The registered model's description: what it predicts, in which unit, from which features."""
    features = "\n".join(f"- `{spec.name}`: {spec.description} ({spec.unit})" for spec in FEATURES)
    return (
        f"Predicts `{TARGET.name}`, the {TARGET.description.lower()} of a California district (1990 census"
        f" block group), in {TARGET.unit} (x {TARGET_UNIT_DOLLARS:,} = US dollars; the API also returns"
        f" `price_usd`), from 8 features:\n{features}\n\nAliases: `production` is served by the API;"
        " `staging` is the challenger the API scores in shadow (the project's docs/champion-challenger.md)."
        " Every version says which candidate it is and what data it learnt from."
    )


def version_description(
    candidate: str, candidate_description: str, data_sha256: str, training_run_id: str
) -> str:
    """A version's description: the candidate, the target and its unit, the features, the training data's
    sha256."""
    return (
        f"{candidate}: {candidate_description}. Predicts {TARGET.name} ({TARGET.unit}) from "
        f"{', '.join(FEATURE_NAMES)}. Trained on data sha256 {data_sha256} (training run {training_run_id})."
    )


def describe_registered_model(client: MlflowClient, name: str) -> None:
    """Set the registered model's description when it differs (idempotent)."""
    description = model_description()
    if (client.get_registered_model(name).description or "") != description:
        client.update_registered_model(name, description=description)


def git_commit() -> str:
    """The project's current git commit; in the image, the revision it was built from (``HOUSING_REVISION``,
    a build argument); ``unknown`` when neither is known."""
    built_from = os.environ.get("HOUSING_REVISION")
    if built_from and built_from != "unknown":
        return built_from
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=PROJECT_DIR,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() or "unknown"


def model_requirements() -> list[str]:
    """Pinned pip requirements of the logged pipeline (only packages that are installed)."""
    pins = []
    for package in MODEL_REQUIREMENTS:
        try:
            pins.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return pins


def make_dataset(frame: pd.DataFrame, *, name: str, source: str) -> PandasDataset:
    """An MLflow dataset of a feature+target frame (MLflow computes its digest and schema once, here)."""
    return from_pandas(frame, source=dataset_source(source), name=name, targets=TARGET.name)


def dataset_source(source: str) -> DatasetSource:
    """The MLflow dataset source of a data source string: an HTTP URL, a local file, or a description
    (credentials masked: a tracking store keeps no secret)."""
    source = mask_uri(source)
    scheme = urlparse(source).scheme
    if scheme in ("http", "https"):
        return HTTPDatasetSource(source)
    if scheme != "file" and not Path(source).exists():
        return CodeDatasetSource(tags={"source": source})
    uri = source if scheme else Path(source).resolve().as_uri()
    with warnings.catch_warnings():
        # MLflow registers the same LocalArtifactDatasetSource for "" and "file" and warns that the
        # two identical candidates are ambiguous; either one is the right answer.
        warnings.filterwarnings(
            "ignore", message="The specified dataset source can be interpreted in multiple ways"
        )
        return resolve_dataset_source(uri)


def log_model(
    pipeline: Pipeline, *, registered_model_name: str, predictions: np.ndarray, x_sample: pd.DataFrame
) -> ModelVersion:
    """Log ``pipeline`` in the active run with skops and the explicit trusted-types list, and register it.

    (tests/code/test_candidates.py checks that every candidate holds only trusted types, so it loads back.)
    """
    input_example = pd.DataFrame([EXAMPLE_REQUEST], columns=list(FEATURE_NAMES))
    signature = infer_signature(x_sample, predictions)
    info = mlflow.sklearn.log_model(
        pipeline,
        name="model",
        serialization_format="skops",
        skops_trusted_types=list(SKOPS_TRUSTED_TYPES),
        signature=signature,
        input_example=input_example,
        pip_requirements=model_requirements(),
        code_paths=[str(PROJECT_DIR / "housing")],  # the whole package: mlflow models serve imports it
        registered_model_name=registered_model_name,
    )
    client = mlflow.MlflowClient()
    return client.get_model_version(registered_model_name, str(info.registered_model_version))
