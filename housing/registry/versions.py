"""The model registry's versions: finding them, loading one safely, and what each is tagged with.

Aliases, not deprecated stages: ``staging`` names the best candidate of the latest training run that
passed the staging gate (or the challenger in shadow); ``production`` names the served version. Which version
gets which alias is decided in :mod:`housing.registry.promotion`.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from housing.config.settings import Settings
from housing.errors import UserError
from housing.registry.model_files import load_skops_model
from housing.registry.tracking import RUN_TYPE_TAG, TRAINING_RUN_TYPE, quiet_mlflow

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion
    from sklearn.pipeline import Pipeline

logger = logging.getLogger(__name__)

STAGING_GATE_TAG = "staging_gate"


def get_version_by_alias(client: MlflowClient, model_name: str, alias: str) -> ModelVersion | None:
    """The version an alias points to, or None when the model or the alias does not exist."""
    from mlflow.exceptions import (
        MlflowException,
    )  # mlflow costs ~2 s to import: paid on first use, not on import

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def load_version(client: MlflowClient, version: ModelVersion) -> Pipeline:
    """Load a registered version's pipeline with skops (read in place from a local store, else downloaded).

    Only :data:`housing.registry.model_files.SKOPS_TRUSTED_TYPES` are trusted. That list comes from this code,
    not from the model's own MLmodel file, so a tampered model can't widen it (and no pickle is ever loaded).
    """
    import mlflow  # mlflow costs ~2 s to import: paid on first use, not on import

    quiet_mlflow()
    location = client.get_model_version_download_uri(version.name, str(version.version))
    local = _local_path(location)
    if local is not None:  # a local artifact store: read in place, no copy
        return load_skops_model(local, f"{version.name} version {version.version}")
    with tempfile.TemporaryDirectory(prefix="housing-model-") as tmp:
        local_dir = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=location, dst_path=tmp, tracking_uri=client.tracking_uri
            )
        )
        return load_skops_model(local_dir, f"{version.name} version {version.version}")


def _local_path(location: str) -> Path | None:
    parsed = urlparse(location)
    if parsed.scheme in ("", "file"):
        path = Path(unquote(parsed.path))
        if (path / "MLmodel").is_file():
            return path
    return None


def load_model_version(client: MlflowClient, model_name: str, version: str) -> Pipeline:
    """Load one registered version of ``model_name``."""
    return load_version(client, client.get_model_version(model_name, version))


def registry_client(tracking_uri: str) -> MlflowClient:
    """A client whose tracking store and model registry are both ``tracking_uri``."""
    from mlflow import MlflowClient  # mlflow costs ~2 s to import: paid on first use, not on import

    quiet_mlflow()
    return MlflowClient(tracking_uri, registry_uri=tracking_uri)


def latest_training_run_id(client: MlflowClient, experiment_name: str) -> str:
    """The id of the newest finished training (parent) run; a clear error if there is none."""
    experiment = client.get_experiment_by_name(experiment_name)
    runs: list[Run] = []
    if experiment is not None:
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{RUN_TYPE_TAG}` = '{TRAINING_RUN_TYPE}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    if not runs:
        raise UserError(f"no finished training run in experiment {experiment_name}; run train.py first")
    return runs[0].info.run_id


def all_versions(client: MlflowClient, model_name: str) -> list[ModelVersion]:
    """Every version of the registered model, oldest first."""
    versions = client.search_model_versions(f"name = '{model_name}'")
    return sorted(versions, key=lambda version: int(version.version))


def version_status(client: MlflowClient, settings: Settings) -> list[dict[str, str]]:
    """One row per version: its candidate, aliases, staging gate and last evaluation scores."""
    aliases: dict[str, list[str]] = {}
    for alias, version in client.get_registered_model(settings.model_name).aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    rows = []
    for version in all_versions(client, settings.model_name):
        rows.append(
            {
                "version": version.version,
                "candidate": version.tags.get("candidate", "?"),
                "aliases": ",".join(sorted(aliases.get(str(version.version), []))) or "-",
                "staging_gate": version.tags.get(STAGING_GATE_TAG, "-"),
                "eval_r2": version.tags.get("eval_r2", "-"),
                "eval_rmse": version.tags.get("eval_rmse", "-"),
                "training_run": version.tags.get("training_run_id", "-")[:8],
            }
        )
    return rows
