"""Stage 3: fit every candidate on the training split, log each to MLflow, register each as a model version.

One child run per candidate under a parent "Comparative Analysis" run in the experiment
California-Housing-Regression: parameters, test metrics (r2, rmse, mae, mse), cross-validation on the
training split (cv_r2_mean, cv_r2_std), plots, feature importances, the datasets, and the whole pipeline
(outlier rule + scaler + estimator, raw 8 features in) saved with skops and registered as a version of
CaliforniaHousing. Ends with a summary table. Candidates and their hyperparameters:
housing/training/candidates.yaml.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from housing import cli
from housing.config.settings import PROJECT_DIR, Settings
from housing.data.dataset import Split, load_split, read_manifest
from housing.training.candidates import load_candidate_specs
from housing.training.comparison import TrainingData, train_and_register
from housing.training.tuning import tune


def main(args: argparse.Namespace) -> int:
    settings = cli.settings_from_args(args)
    split = load_split(settings.split_dir)
    if args.tune:
        return tune_candidate(args, settings, split)
    specs = load_candidate_specs(settings.candidates_path, settings.candidates)
    manifest = read_manifest(settings.manifest_path)
    data = TrainingData(
        x_train=split.x_train,
        y_train=split.y_train,
        x_test=split.x_test,
        y_test=split.y_test,
        source=manifest.source,
        data_sha256=manifest.sha256,
        provenance={"training_data": "train split"},
    )
    outcome = train_and_register(settings, data, specs)
    print(f"\nComparative Analysis run {outcome.parent_run_id} (experiment {settings.experiment_name}):")
    print(f"{'model':<26} {'R2':>7} {'RMSE':>7} {'CV R2':>13} {'fit s':>7} {'version':>8}")
    for result in outcome.results:
        m = result.metrics
        cv = f"{m['cv_r2_mean']:.3f}+-{m['cv_r2_std']:.3f}"
        print(
            f"{result.name:<26} {m['r2']:>7.4f} {m['rmse']:>7.4f} {cv:>13} {result.fit_seconds:>7.1f}"
            f" {result.version:>8}"
        )
    return 0


def tune_candidate(args: argparse.Namespace, settings: Settings, split: Split) -> int:
    """``--tune N``: search the hyperparameters of one LightGBM candidate and write a proposal."""
    spec = load_candidate_specs(settings.candidates_path, [args.tune_candidate])[0]
    output = args.tune_output or PROJECT_DIR / "housing" / "training" / "tuned" / f"{spec.name}.yaml"
    result = tune(settings, spec, split.x_train, split.y_train, trials=args.tune, proposal_path=output)
    print(
        f"best CV R2 {result.best_cv_r2:.4f} after {result.trials} trials (MLflow run {result.parent_run_id})"
    )
    print(
        f"proposal written to {result.proposal_path}: review it, then copy its params into"
        f" {settings.candidates_path}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    cli.add_setting_flags(
        parser,
        "candidates",
        "estimator_scale",
        "cv_folds",
        "n_jobs",
        "random_state",
        "artifacts_dir",
        "tracking_uri",
    )
    parser.add_argument(
        "--tune",
        type=int,
        default=0,
        metavar="TRIALS",
        help=(
            "Instead of the comparison run: search hyperparameters with Optuna for TRIALS trials (nested"
            " MLflow runs)."
        ),
    )
    parser.add_argument(
        "--tune-candidate", default="lightgbm_spatial", help="Candidate to tune [default lightgbm_spatial]"
    )
    parser.add_argument(
        "--tune-output",
        type=Path,
        default=None,
        help="Where the proposal goes [default housing/training/tuned/<candidate>.yaml]",
    )
    return parser


if __name__ == "__main__":
    cli.run(main, build_parser())
