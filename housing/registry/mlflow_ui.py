"""``make mlflow-ui``: MLflow's UI on the project's tracking store, with links that open on the runs.

The training and monitoring experiments carry ``mlflow.experimentKind=custom_model_development``
(:func:`housing.registry.tracking.ensure_experiment`), but MLflow 3.17's UI also keeps a per-browser switch
between "GenAI" and "Model training" (in the browser's local storage, GenAI by default): a fresh browser
opening ``#/experiments/<id>`` still lands on the GenAI overview of traces and token usage. The switch follows
the ``workflowType=machine_learning`` query parameter, so the links printed here open each experiment on its
runs, and the registered model on its page; the browser remembers the switch afterwards.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from housing import cli
from housing.config.settings import Settings
from housing.errors import UserError
from housing.registry import tracking

logger = logging.getLogger(__name__)

UI_HOST = "127.0.0.1"
WORKFLOW = "workflowType=machine_learning"


def ui_links(settings: Settings, base_url: str) -> list[str]:
    """The experiments' run lists and the registered model's page, as links that open in model-training
    mode."""
    client = tracking.registry_client_for(
        settings
    )  # no global MLflow URI is changed: callers share the process
    links = []
    for name in (settings.experiment_name, settings.monitoring_experiment_name):
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            links.append(f"{name}: {base_url}/#/experiments/{experiment.experiment_id}/runs?{WORKFLOW}")
    links.append(
        f"registered model {settings.model_name}: {base_url}/#/models/{settings.model_name}?{WORKFLOW}"
    )
    return links


def serve_ui(args: argparse.Namespace) -> int:
    """Print the links, then become ``mlflow ui`` on the settings' tracking store (exec: signals reach the
    server). A tracking server (a team's) has its own UI: the links point there and nothing is started."""
    settings = cli.settings_from_args(args)
    if settings.tracking_uri.startswith(("http://", "https://")):
        for link in ui_links(settings, settings.tracking_uri.rstrip("/")):
            print(link)
        return 0
    for link in ui_links(settings, f"http://{UI_HOST}:{args.port}"):
        print(link)
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "ui",
        "--backend-store-uri",
        settings.tracking_uri,
        "--host",
        UI_HOST,
        "--port",
        str(args.port),
    ]
    if not Path(command[0]).is_file():
        raise UserError(f"MLflow's command line is not installed at {command[0]}: run make setup")
    sys.stdout.flush()
    # no job runner: it serves GenAI features this project does not use, in eight processes of its own
    os.execve(command[0], command, {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m housing.registry.mlflow_ui",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=int, default=5000, help="Port of the UI [default 5000]")
    cli.add_setting_flags(parser, "tracking_uri")
    return parser


if __name__ == "__main__":
    cli.run(serve_ui, _parser())
