"""The monitor's history in Evidently's own UI: every monitor run adds its snapshot to an Evidently 0.7
workspace, in one project named after the registered model, whose dashboard is built here, by code.

Why a workspace beside the MLflow ``monitoring`` runs: Evidently's UI shows each run's full drift report
next to the trends, and a team can share one Evidently UI service (``HOUSING_EVIDENTLY_URL``) instead of a
local directory (``HOUSING_EVIDENTLY_WORKSPACE``, default ``<artifacts>/evidently``, served by
``make monitor-ui``).

What Evidently 0.7 cannot do, and how this module does it instead:

- a dashboard panel plots only metric results stored in snapshots, and some figures the decision reads are
  not metrics of the report (the share of drifted features as the decision counts it, the labelled rows,
  the version serving). Each run therefore adds them as Evidently ``MeanValue`` results of a one-row
  dataset (the mean of one value is that value). They are built-in metric types, so any Evidently UI
  service can read them; a custom metric class would have to be importable by the service.
- a panel cannot draw a horizontal threshold line. The threshold is in the panel's title, and each run
  also records the threshold it judged with as one more one-row value, drawn as a second line
  ("threshold") in the same panel: a threshold that changed shows where it changed.
- ``ProjectDashboard.add_panel`` appends on every call. Panels here carry ids derived from the model name
  and the panel's key, so a re-run replaces a panel whose definition changed and adds only the missing
  ones; panels a user added by hand are kept. Evidently OSS allows one dashboard tab.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from housing import cli
from housing.config.settings import Settings
from housing.errors import UserError, first_line
from housing.monitoring.dashboard import VERSION_FIGURE, dashboard_panels, sync_dashboard
from housing.monitoring.drift_report import quiet_third_party_warnings

if TYPE_CHECKING:
    from evidently.core.report import Snapshot
    from evidently.ui.workspace import Project, WorkspaceBase

logger = logging.getLogger(__name__)

"""`make monitor-ui` listens on loopback only: Evidently's open-source UI has no login."""


class EvidentlyWorkspaceError(UserError):
    """The Evidently workspace could not be opened or written (unreachable service, unwritable directory)."""


@dataclass(frozen=True)
class MonitorRun:
    """What one monitor run adds beside its report: the version serving, the decision (as the policy words
    it), the window's first and last prediction time, and the decision's own figures."""

    production_version: str
    decision: str
    window_start: datetime | None
    window_end: datetime | None
    figures: dict[str, float | None]


def record_snapshot(settings: Settings, snapshot: Snapshot, run: MonitorRun) -> str:
    """Add one monitor run's snapshot to the model's Evidently project and return the snapshot's id.

    Opens the workspace (local directory, or the remote service when ``evidently_url`` is set), finds or
    creates the project named ``settings.model_name``, brings its dashboard up to date (idempotent), and
    stores the snapshot tagged ``production_version=<v>`` and ``decision=<action as one word>``, with the
    version, the decision's text and the window (ISO timestamps) in its metadata, and the
    decision's own figures (``drift_share``, ``labelled_rows``, ``window_rows``, ...) and thresholds added
    as one-row values. The caller's snapshot is not modified. Any failure of the workspace is one
    :class:`EvidentlyWorkspaceError` sentence: the caller decides whether the monitor carries on without it.
    """
    from requests import RequestException  # imported with Evidently, which only the monitor needs (~5 s)

    with quiet_third_party_warnings():
        from evidently.errors import (
            EvidentlyError,
        )  # expensive (~5 s), monitor only: see the module docstring

    where = settings.evidently_url or str(settings.evidently_workspace_dir)
    try:
        workspace = open_workspace(settings)
        project = find_or_create_project(workspace, settings.model_name)
        sync_dashboard(workspace, project.id, dashboard_panels(settings))
        reference = workspace.add_run(
            project.id,
            monitor_snapshot(settings, snapshot, run),
            name=f"version {run.production_version}: {run.decision}",
        )
    except (OSError, ValueError, RequestException, EvidentlyError) as error:
        raise EvidentlyWorkspaceError(
            f"could not record the monitor snapshot in the Evidently workspace at {where}: "
            f"{first_line(error)}"
        ) from error
    logger.info("monitor snapshot %s added to Evidently project %r at %s", reference.id, project.name, where)
    return str(reference.id)


def open_workspace(settings: Settings) -> WorkspaceBase:
    """The remote Evidently UI service at ``evidently_url`` when set (a team's shared UI), else the local
    workspace directory (created if missing)."""
    with quiet_third_party_warnings():
        from evidently.ui.workspace import (
            RemoteWorkspace,
            Workspace,
        )  # expensive (~5 s), monitor only: see the module docstring

    if settings.evidently_url:
        secret = settings.evidently_secret.get_secret_value() if settings.evidently_secret else None
        return RemoteWorkspace(settings.evidently_url, secret=secret)
    path = settings.evidently_workspace_dir
    path.mkdir(parents=True, exist_ok=True)
    return Workspace(str(path))


def find_or_create_project(workspace: WorkspaceBase, name: str) -> Project:
    """The one project called ``name``, created on first use. Lists and compares exact names, the same way on
    a local directory and a remote service; if duplicates exist (made by hand), the oldest (uuid7 ids) is
    used.
    """
    matches = sorted(
        (project for project in workspace.list_projects() if project.name == name),
        key=lambda project: str(project.id),
    )
    if len(matches) > 1:
        logger.warning(
            "%d Evidently projects are named %r; recording in %s", len(matches), name, matches[0].id
        )
    if matches:
        return matches[0]
    logger.info("creating the Evidently project %r", name)
    return workspace.create_project(
        name, description=f"Monitor runs of the registered model {name}: drift, error, decisions."
    )


def tag_value(text: str) -> str:
    """A decision as one tag word: the policy's "alert, no retrain" becomes ``alert_no_retrain``."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def monitor_values(
    settings: Settings, production_version: str, figures: dict[str, float | None]
) -> dict[str, float]:
    """The one-row values a run adds: the caller's figures (missing or non-finite ones left out), the
    version serving (when it is a number, as registry versions are) and the thresholds judged with."""
    values = {
        name: float(value) for name, value in figures.items() if value is not None and math.isfinite(value)
    }
    if production_version.isdigit():
        values[VERSION_FIGURE] = float(production_version)
    values.update(
        drift_share_threshold=settings.drift_share_threshold,
        drift_threshold=settings.drift_threshold,
        rmse_threshold=settings.rmse_threshold,
        r2_threshold=settings.r2_threshold,
        min_labels=float(settings.monitor_min_labels),
    )
    return values


def monitor_snapshot(settings: Settings, snapshot: Snapshot, run: MonitorRun) -> Snapshot:
    """A copy of ``snapshot`` with the run's tags, metadata and one-row values added (the original is kept
    as it is: the monitor also saves it as the HTML and JSON report)."""
    with quiet_third_party_warnings():
        from evidently import (
            DataDefinition,
            Dataset,
            Report,
        )  # expensive (~5 s), monitor only: see the module docstring
        from evidently.core.report import Snapshot  # expensive (~5 s), monitor only: see the module docstring
        from evidently.metrics import MeanValue  # expensive (~5 s), monitor only: see the module docstring

    values = monitor_values(settings, run.production_version, run.figures)
    one_row = Dataset.from_pandas(
        pd.DataFrame([values]), data_definition=DataDefinition(numerical_columns=list(values))
    )
    with quiet_third_party_warnings():
        extra = Report([MeanValue(column=name) for name in values]).run(one_row, None)
    model = snapshot.to_snapshot_model()
    tags = [
        *model.tags,
        f"production_version={run.production_version}",
        f"decision={tag_value(run.decision)}",
    ]
    metadata = {
        **model.metadata,
        "model_name": settings.model_name,
        "production_version": run.production_version,
        "decision": run.decision,
    }
    metadata.update(
        {
            key: when.isoformat()
            for key, when in (("window_start", run.window_start), ("window_end", run.window_end))
            if when
        }
    )
    merged = model.copy(
        update={
            "metric_results": {**model.metric_results, **extra.metric_results},
            "tags": list(dict.fromkeys(tags)),
            "metadata": metadata,
        }
    )
    return Snapshot.load_model(merged)


def ui_command(settings: Settings) -> list[str]:
    """The ``evidently ui`` command serving the local workspace on ``monitor_ui_host:monitor_ui_port``."""
    evidently = Path(sys.executable).with_name("evidently")
    return [
        str(evidently),
        "ui",
        "--workspace",
        str(settings.evidently_workspace_dir),
        "--host",
        settings.monitor_ui_host,
        "--port",
        str(settings.monitor_ui_port),
    ]


def serve_ui(args: argparse.Namespace) -> int:
    """``make monitor-ui``: this process becomes Evidently's UI on the local workspace (exec, so that a
    process manager's signals reach the server itself), until Ctrl-C. Evidently's telemetry is off
    (``DO_NOT_TRACK``): the UI shows private traffic and often runs without internet."""
    settings = cli.settings_from_args(args)
    if settings.evidently_url:
        raise UserError(
            f"the monitor records to the Evidently UI service at {settings.evidently_url} "
            "(HOUSING_EVIDENTLY_URL): open that one"
        )
    command = ui_command(settings)
    if not Path(command[0]).is_file():
        raise UserError(f"Evidently's command line is not installed at {command[0]}: run make setup")
    settings.evidently_workspace_dir.mkdir(parents=True, exist_ok=True)
    logger.info(
        "Evidently UI on http://%s:%d (workspace %s); Ctrl-C stops it",
        settings.monitor_ui_host,
        settings.monitor_ui_port,
        settings.evidently_workspace_dir,
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], command, {**os.environ, "DO_NOT_TRACK": "1"})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m housing.monitoring.evidently_ui",
        description=(
            "Serve the monitor's Evidently workspace (one snapshot per monitor run, the dashboard built by "
            "the monitor) with Evidently's own UI, on 127.0.0.1."
        ),
    )
    cli.add_setting_flags(parser, "monitor_ui_port", "evidently_workspace", "artifacts_dir")
    return parser


if __name__ == "__main__":
    cli.run(serve_ui, _parser())
