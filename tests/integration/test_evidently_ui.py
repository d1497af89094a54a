"""The monitor's Evidently workspace, for real: snapshots of real windows recorded run after run into one
project whose dashboard is built once, then read back through Evidently's own UI service (``evidently ui``
as a subprocess, the command ``make monitor-ui`` runs) and written to through it as a remote workspace."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression

from housing.config.settings import Settings
from housing.monitoring.drift_report import MONITORED_COLUMNS, PREDICTION, WindowFigures, evaluate_window
from housing.monitoring.evidently_ui import MonitorRun, open_workspace, record_snapshot, ui_command
from housing.schema import FEATURE_NAMES, TARGET
from tests.helpers import wait_for
from tests.server import free_port

REFERENCE_ROWS, WINDOW_ROWS = 4_000, 1_000
RUNS = (
    ("baseline", "1", "no retrain"),
    ("income-shift", "1", "retrain"),
    ("baseline", "2", "alert, no retrain"),
)
"""Three monitor runs: (window, production version, decision as the retrain policy words it)."""


@dataclass
class RecordedWorkspace:
    """Three monitor runs recorded into a fresh local workspace, and what was measured and stored."""

    settings: Settings
    figures: list[WindowFigures]
    snapshot_ids: list[str]
    panel_counts: list[int]
    dashboards: list[Any]
    reference: pd.DataFrame
    window: pd.DataFrame
    untouched: list[bool] = field(default_factory=list)


def monitor_frames(dataset_path: Path) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """A reference (real rows with a linear model's predictions) and two windows of other real rows, half
    labelled: as served, and with the original report's drift scenario (MedInc x 1.2, predicted on the shifted
    rows)."""
    data = pd.read_csv(dataset_path)
    rows = data.sample(n=REFERENCE_ROWS + WINDOW_ROWS, random_state=7).reset_index(drop=True)
    reference, window = (
        rows.iloc[:REFERENCE_ROWS].reset_index(drop=True),
        rows.iloc[REFERENCE_ROWS:].reset_index(drop=True),
    )
    model = LinearRegression().fit(reference[list(FEATURE_NAMES)], reference[TARGET.name])
    reference[PREDICTION] = model.predict(reference[list(FEATURE_NAMES)])
    shifted = window.assign(MedInc=window["MedInc"] * 1.2)
    windows = {}
    for name, frame in (("baseline", window.copy()), ("income-shift", shifted)):
        frame[PREDICTION] = model.predict(frame[list(FEATURE_NAMES)])
        frame.loc[frame.index % 2 == 1, TARGET.name] = np.nan
        windows[name] = frame
    return reference, windows


def settings_for(workspace_dir: Path, **overrides: Any) -> Settings:
    return Settings(
        artifacts_dir=workspace_dir.parent, evidently_workspace=workspace_dir, evidently_url=None, **overrides
    )


def record_run(
    settings: Settings, reference: pd.DataFrame, window: pd.DataFrame, version: str, decision: str
) -> tuple[str, WindowFigures, bool]:
    """One monitor run: the real report of the window, recorded; also whether the caller's snapshot was left
    as it was."""
    snapshot, figures = evaluate_window(reference, window, settings)
    assert snapshot is not None
    results_before = set(snapshot.metric_results)
    end = datetime.now(UTC)
    snapshot_id = record_snapshot(
        settings,
        snapshot,
        MonitorRun(
            production_version=version,
            decision=decision,
            window_start=end - timedelta(hours=1),
            window_end=end,
            figures={
                "drift_share": figures.drift_share,
                "labelled_rows": figures.labelled_rows,
                "window_rows": figures.window_rows,
            },
        ),
    )
    return (
        snapshot_id,
        figures,
        set(snapshot.metric_results) == results_before and not snapshot.to_snapshot_model().tags,
    )


@pytest.fixture(scope="module")
def recorded(real_dataset_path: Path, tmp_path_factory: pytest.TempPathFactory) -> RecordedWorkspace:
    """Three monitor runs into one local workspace; the third judges with a changed RMSE threshold."""
    reference, windows = monitor_frames(real_dataset_path)
    workspace_dir = tmp_path_factory.mktemp("monitor") / "evidently"
    recorded = RecordedWorkspace(settings_for(workspace_dir), [], [], [], [], reference, windows["baseline"])
    for index, (window, version, decision) in enumerate(RUNS):
        settings = settings_for(workspace_dir, rmse_threshold=0.45) if index == 2 else recorded.settings
        snapshot_id, figures, untouched = record_run(settings, reference, windows[window], version, decision)
        workspace = open_workspace(settings)
        (project,) = workspace.list_projects()
        dashboard = workspace.get_dashboard(project.id)
        recorded.snapshot_ids.append(snapshot_id)
        recorded.figures.append(figures)
        recorded.untouched.append(untouched)
        recorded.panel_counts.append(len(dashboard.panels))
        recorded.dashboards.append(json.loads(dashboard.json()))
    return recorded


@pytest.fixture(scope="module")
def evidently_service(recorded: RecordedWorkspace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Evidently's own UI service on the recorded workspace (the ``make monitor-ui`` command), stopped at the
    end."""
    settings = settings_for(recorded.settings.evidently_workspace_dir, monitor_ui_port=free_port())
    url = f"http://127.0.0.1:{settings.monitor_ui_port}"
    log_path = tmp_path_factory.mktemp("evidently-ui") / "ui.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            ui_command(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "DO_NOT_TRACK": "1"},
        )
    try:

        def answers() -> bool:
            assert process.poll() is None, (
                f"evidently ui exited with {process.returncode}:\n{log_path.read_text()}"
            )
            try:
                return httpx.get(f"{url}/api/version", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_for(answers, every=0.2), f"evidently ui did not start:\n{log_path.read_text()}"
        yield url
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def served_project(http: httpx.Client, name: str) -> dict[str, Any]:
    projects = [
        project for project in http.get("/api/projects").raise_for_status().json() if project["name"] == name
    ]
    assert len(projects) == 1, projects
    return projects[0]


def panel_series(http: httpx.Client, project_id: str, panel: dict[str, Any]) -> dict[str, list[float | None]]:
    """A panel's points as the UI loads them (POST data_series_batch with the panel's series): legend ->
    values."""
    series_filter = [
        {key: value[key] for key in ("tags", "metadata", "metric", "metric_labels")}
        for value in panel["values"]
    ]
    response = (
        http.post(f"/api/v2/snapshots/{project_id}/data_series_batch", json={"series_filter": series_filter})
        .raise_for_status()
        .json()
    )
    legends = [value["legend"] for value in panel["values"]]
    return {legends[series["filter_index"]]: series["values"] for series in response["series"]}


def test_every_run_adds_a_snapshot_and_never_a_second_project_or_panel(recorded):
    settings = recorded.settings
    workspace = open_workspace(settings)
    projects = workspace.list_projects()
    assert [project.name for project in projects] == [settings.model_name]
    assert sorted(map(str, workspace.list_runs(projects[0].id))) == sorted(recorded.snapshot_ids)
    assert len(set(recorded.snapshot_ids)) == 3
    assert recorded.panel_counts == [recorded.panel_counts[0]] * 3 and recorded.panel_counts[0] >= 6
    assert recorded.dashboards[1] == recorded.dashboards[0]  # an unchanged definition is not rewritten
    titles = [[panel["title"] for panel in dashboard["panels"]] for dashboard in recorded.dashboards]
    assert "RMSE on labelled traffic (retrain above 0.5)" in titles[1]
    assert (
        "RMSE on labelled traffic (retrain above 0.45)" in titles[2]
    )  # a changed panel is replaced, same place
    assert [title for title in titles[2] if "RMSE on" in title] == [
        "RMSE on labelled traffic (retrain above 0.45)"
    ]
    assert all(len(dashboard["tabs"]) == 1 for dashboard in recorded.dashboards)
    assert all(
        recorded.untouched
    )  # the monitor's own snapshot (saved as the HTML/JSON report) is not modified


def test_the_ui_service_serves_the_runs_with_their_tags_and_the_dashboard_with_data(
    recorded, evidently_service
):
    figures = recorded.figures
    assert (
        figures[1].drift_scores["MedInc"]
        > recorded.settings.drift_threshold
        > figures[0].drift_scores["MedInc"]
    )
    with httpx.Client(base_url=evidently_service, timeout=30) as http:
        project = served_project(http, recorded.settings.model_name)
        snapshots = {
            item["id"]: item
            for item in http.get(f"/api/projects/{project['id']}/snapshots").raise_for_status().json()
        }
        assert set(recorded.snapshot_ids) <= set(snapshots)
        for snapshot_id, (_, version, decision) in zip(recorded.snapshot_ids, RUNS, strict=True):
            served = snapshots[snapshot_id]
            assert {
                f"production_version={version}",
                f"decision={decision.replace(', ', '_').replace(' ', '_')}",
            } <= set(served["tags"])
            assert (
                served["metadata"]["decision"] == decision
                and served["metadata"]["production_version"] == version
            )
            assert datetime.fromisoformat(served["metadata"]["window_start"]) < datetime.fromisoformat(
                served["metadata"]["window_end"]
            )

        dashboard = http.get(f"/api/v2/dashboards/{project['id']}").raise_for_status().json()
        panels = {panel["title"].split(" (")[0]: panel for panel in dashboard["panels"]}
        assert len(panels) >= 4
        points = {title: panel_series(http, project["id"], panel) for title, panel in panels.items()}
    ours = slice(0, 3)  # the runs this module recorded come first (a remote run may follow)
    assert points["Share of drifted features"]["share of the 8 features that drifted"][ours] == [
        f.drift_share for f in figures
    ]
    assert (
        points["Share of drifted features"]["threshold"][ours]
        == [recorded.settings.drift_share_threshold] * 3
    )
    drift = points["Drift score per column"]
    assert set(MONITORED_COLUMNS) <= set(drift)
    assert drift["MedInc"][ours] == pytest.approx([f.drift_scores["MedInc"] for f in figures])
    assert points["RMSE on labelled traffic"]["RMSE"][ours] == pytest.approx([f.rmse for f in figures])
    assert points["RMSE on labelled traffic"]["threshold"][ours] == [0.5, 0.5, 0.45]
    assert points["R² on labelled traffic"]["R²"][ours] == pytest.approx([f.r2 for f in figures])
    assert (
        points["Labelled rows per window"]["labelled rows"][ours]
        == [f.labelled_rows for f in figures]
        == [WINDOW_ROWS // 2] * 3
    )
    assert points["Model version serving"][f"{recorded.settings.model_name} version"][ours] == [1.0, 1.0, 2.0]


def test_a_remote_workspace_adds_to_the_same_project_and_dashboard(recorded, evidently_service):
    remote = Settings(artifacts_dir=recorded.settings.artifacts_dir, evidently_url=evidently_service)
    with httpx.Client(base_url=evidently_service, timeout=30) as http:
        project = served_project(http, recorded.settings.model_name)
        before = http.get(f"/api/projects/{project['id']}/snapshots").raise_for_status().json()
        snapshot_id, _, _ = record_run(remote, recorded.reference, recorded.window, "2", "alert")
        after = http.get(f"/api/projects/{project['id']}/snapshots").raise_for_status().json()
        assert served_project(http, recorded.settings.model_name)["id"] == project["id"]
        dashboard = http.get(f"/api/v2/dashboards/{project['id']}").raise_for_status().json()
    assert {item["id"] for item in after} == {item["id"] for item in before} | {snapshot_id}
    assert "decision=alert" in next(item["tags"] for item in after if item["id"] == snapshot_id)
    assert len(dashboard["panels"]) == recorded.panel_counts[-1]
