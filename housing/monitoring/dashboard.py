"""The monitoring dashboard of Evidently's UI, defined by code: its panels, one point per monitor round, and
their idempotent sync with the project (a round adds a snapshot, never a second project or panel)."""

from __future__ import annotations

import json
import logging
import uuid
from typing import TYPE_CHECKING, Any

from housing.config.settings import Settings
from housing.monitoring.drift_report import MONITORED_COLUMNS
from housing.schema import FEATURE_NAMES

if TYPE_CHECKING:
    from evidently.sdk.models import DashboardPanelPlot, PanelMetric
    from evidently.ui.workspace import WorkspaceBase

logger = logging.getLogger(__name__)


TAB_TITLE = "Monitoring"


PANEL_NAMESPACE = uuid.UUID("5b0c2f4e-6a57-4d8e-9d0a-3f1f6c2b9e71")
"""Namespace of the panels' stable ids (uuid5 of the model name and the panel's key)."""


THRESHOLD_LEGEND = "threshold"


VERSION_FIGURE = "production_version"


def stable_id(*parts: str) -> uuid.UUID:
    """A panel's (or the tab's) stable id: the same model and key give the same panel, run after run."""
    return uuid.uuid5(PANEL_NAMESPACE, "/".join(parts))


def _figure(column: str, legend: str) -> PanelMetric:
    """A series of one of the one-row values :func:`monitor_snapshot` adds (Evidently ``MeanValue``)."""
    from evidently.sdk.models import PanelMetric  # expensive (~5 s), monitor only: see the module docstring

    return PanelMetric(metric="MeanValue", metric_labels={"column": column}, legend=legend)


def dashboard_panels(settings: Settings) -> list[DashboardPanelPlot]:
    """The dashboard, panel by panel, each with its stable id; thresholds in titles and as a second line."""
    from evidently.sdk.models import PanelMetric  # expensive (~5 s), monitor only: see the module docstring
    from evidently.sdk.panels import (
        counter_panel,
        line_plot_panel,
    )  # expensive (~5 s), monitor only: see the module docstring

    threshold = THRESHOLD_LEGEND
    drift = f"{settings.drift_method} distance"
    panels = {
        "latest": counter_panel(
            "Latest monitor run",
            [
                PanelMetric(metric="RMSE", legend="RMSE"),
                PanelMetric(metric="R2Score", legend="R²"),
                _figure("labelled_rows", "labelled rows"),
                _figure(VERSION_FIGURE, "version serving"),
            ],
            description=(
                "The newest snapshot's figures (Evidently's counter shows a 0 as 'no value': the drift share"
                " is charted below)."
            ),
            aggregation="last",
        ),
        "drift_share": line_plot_panel(
            f"Share of drifted features (retrain above {settings.drift_share_threshold:g})",
            [
                _figure("drift_share", "share of the 8 features that drifted"),
                _figure("drift_share_threshold", threshold),
            ],
            description=(
                "As the retrain decision counts it: features whose drift score is above their threshold."
            ),
            size="half",
        ),
        "drift_scores": line_plot_panel(
            f"Drift score per column ({drift}, drifted above {settings.drift_threshold:g})",
            [
                *(
                    PanelMetric(metric="ValueDrift", metric_labels={"column": column}, legend=column)
                    for column in MONITORED_COLUMNS
                ),
                _figure("drift_threshold", threshold),
            ],
            description=(
                f"Evidently ValueDrift of the {len(FEATURE_NAMES)} features and the prediction against the"
                " reference."
            ),
            size="half",
        ),
        **_error_panels(settings),
    }
    return [panel.copy(update={"id": stable_id(settings.model_name, key)}) for key, panel in panels.items()]


def _error_panels(settings: Settings) -> dict[str, DashboardPanelPlot]:
    """The error panels: realized RMSE and R², the estimate without labels, labels per window, the version."""
    from evidently.sdk.models import PanelMetric  # expensive (~5 s), monitor only: see the module docstring
    from evidently.sdk.panels import bar_plot_panel, line_plot_panel  # expensive (~5 s), monitor only

    threshold = THRESHOLD_LEGEND
    return {
        "rmse": line_plot_panel(
            f"RMSE on labelled traffic (retrain above {settings.rmse_threshold:g})",
            [PanelMetric(metric="RMSE", legend="RMSE"), _figure("rmse_threshold", threshold)],
            description=(
                "Evidently RMSE of the labelled rows; the decision judges it from"
                f" {settings.monitor_min_labels} labels."
            ),
            size="half",
        ),
        "r2": line_plot_panel(
            f"R² on labelled traffic (retrain below {settings.r2_threshold:g})",
            [PanelMetric(metric="R2Score", legend="R²"), _figure("r2_threshold", threshold)],
            description=(
                "Evidently R2Score of the labelled rows; the decision judges it from"
                f" {settings.monitor_min_labels} labels."
            ),
            size="half",
        ),
        "estimated_rmse": line_plot_panel(
            "RMSE estimated without labels beside the realized one (alert when the interval is above"
            f" {settings.rmse_threshold:g})",
            [
                _figure("estimated_rmse", "estimated (unlabelled predictions)"),
                _figure("estimated_rmse_low", "interval low"),
                _figure("estimated_rmse_high", "interval high"),
                PanelMetric(metric="RMSE", legend="realized (labelled predictions)"),
                _figure("rmse_threshold", threshold),
            ],
            description=(
                "Direct loss estimation: each version's loss model estimates the error of predictions whose"
                " labels have not come back; the realized RMSE shows where labels did."
            ),
            size="half",
        ),
        "interval_coverage": line_plot_panel(
            f"Prediction interval coverage on labelled traffic (level {settings.interval_level:.0%})",
            [
                _figure("interval_coverage", "coverage"),
                _figure("interval_coverage_low", "binomial interval low"),
                _figure("interval_coverage_high", "binomial interval high"),
                _figure("interval_level", "level"),
            ],
            description=(
                "How often the range served with a prediction held the true value that came back; below the"
                " level beyond noise is a reason of the retrain policy."
            ),
            size="half",
        ),
        "labelled_rows": line_plot_panel(
            f"Labelled rows per window (error judged from {settings.monitor_min_labels})",
            [
                _figure("labelled_rows", "labelled rows"),
                _figure("window_rows", "rows in the window"),
                _figure("min_labels", "labels needed to judge the error"),
            ],
            description="How much ground truth came back for the traffic each run judged.",
            size="half",
        ),
        "version": bar_plot_panel(
            "Model version serving",
            [_figure(VERSION_FIGURE, f"{settings.model_name} version")],
            description=(
                f"The registry version the '{settings.production_alias}' alias named when the monitor ran."
            ),
            size="half",
        ),
    }


def _as_json(panel: DashboardPanelPlot) -> Any:
    """A panel as plain JSON values, so that a stored panel and a fresh one compare by content."""
    return json.loads(panel.json())


def sync_dashboard(workspace: WorkspaceBase, project_id: uuid.UUID, panels: list[DashboardPanelPlot]) -> bool:
    """Make the project's dashboard hold ``panels``: add the missing ones, replace the changed ones (same id),
    leave the rest (a user's own panels) alone. Writes only when something changed; returns whether it did."""
    from evidently.sdk.models import (
        DashboardTabModel,
    )  # expensive (~5 s), monitor only: see the module docstring

    dashboard = workspace.get_dashboard(project_id)
    position = {panel.id: index for index, panel in enumerate(dashboard.panels)}
    changed = False
    for panel in panels:
        index = position.get(panel.id)
        if index is None:
            dashboard.panels.append(panel)
            changed = True
        elif _as_json(dashboard.panels[index]) != _as_json(panel):
            dashboard.panels[index] = panel
            changed = True
    # Evidently OSS refuses a second tab: use the existing one, else create ours.
    if not dashboard.tabs:
        dashboard.tabs.append(DashboardTabModel(id=stable_id("tab", TAB_TITLE), title=TAB_TITLE, panels=[]))
        changed = True
    tab = dashboard.tabs[0]
    missing = [panel.id for panel in panels if panel.id not in tab.panels]
    if missing:
        tab.panels.extend(missing)
        changed = True
    if changed:
        workspace.save_dashboard(project_id, dashboard)
        logger.info(
            "Evidently dashboard of project %s updated (%d panels)", project_id, len(dashboard.panels)
        )
    return changed
