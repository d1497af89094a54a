"""Stage 4: gate the latest training run's candidates into the `staging` and `production` aliases.

Every candidate is scored from its registered model on the test split. Candidates with R2 above the
staging gate are tagged staging_gate=passed and the best of them holds the alias `staging`. The best
candidate above the production gate gets the alias `production` only if it beats the current production
version on the same data; otherwise production stays where it is and this says why. Idempotent.
Prints the final status of every version.
"""

from __future__ import annotations

import argparse

from housing import cli, tracking
from housing.data import load_split
from housing.registry import EvaluationData, promote


def main(args: argparse.Namespace) -> int:
    """Promote the latest training run's candidates on the test split and print every version's status."""
    settings = cli.settings_from_args(args)
    split = load_split(settings.split_dir)
    client = tracking.connect(settings)
    evaluation = EvaluationData(split.x_test, split.y_test, description="the test split")
    report = promote(client, settings, evaluation)
    for message in report.messages:
        print(message)
    print(f"\n{'version':>7}  {'candidate':<24} {'aliases':<20} {'staging gate':<12} {'eval R2':>8} {'eval RMSE':>9}  run")
    for row in report.versions:
        print(f"{row['version']:>7}  {row['candidate']:<24} {row['aliases']:<20} {row['staging_gate']:<12} "
              f"{row['eval_r2']:>8} {row['eval_rmse']:>9}  {row['training_run']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command line: the promotion gates and where the artifacts and the tracking store are."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_setting_flags(parser, "staging_r2_threshold", "production_r2_threshold", "artifacts_dir", "tracking_uri")
    return parser


if __name__ == "__main__":
    cli.run(main, build_parser())
