"""Drive a running prediction API with real dataset rows and send the true labels back later.

A client, not part of production: it reads the dataset (--source, else the copy load_data.py stored, else
scikit-learn's downloader), takes the held-out (test) rows of the same split preprocess makes, shapes them by
scenario (housing/monitoring/traffic.py), POSTs them to /predict, then after --label-delay seconds POSTs the
true value of a --label-fraction of them to /feedback, with the labellers' bearer token:
HOUSING_FEEDBACK_TOKEN, else the token the API generated in <artifacts>/secrets/feedback_token on its first
start (so `make serve` then `make simulate` needs nothing). Scenarios:

  baseline          held-out rows as they are (no drift)
  income-shift      MedInc x 1.2 (the original report's simulated drift), true labels
  subpopulation     only one real sub-population (--subpopulation high-income | bay-area | ...), true labels
  market-inflation  features as they are, labels x --inflation (a price move only the error can reveal)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import httpx

from housing import cli
from housing.api.credentials import resolve_feedback_token
from housing.config.settings import Settings
from housing.data.dataset import split_dataset
from housing.errors import UserError
from housing.monitoring.traffic import (
    SCENARIOS,
    SUBPOPULATIONS,
    TrafficPlan,
    describe_challenger,
    drive,
    scenario_rows,
    simulation_frame,
)


def feedback_headers(args: argparse.Namespace, settings: Settings) -> dict[str, str]:
    """The headers of every /feedback: ``Authorization: Bearer`` with the token in --feedback-token-file, else
    the token the API uses (HOUSING_FEEDBACK_TOKEN or the kept file); none when no labels are sent or feedback
    is (unsafely) open. A token is never taken from the command line, where the process list shows it.
    """
    token = read_token_file(args.feedback_token_file) if args.feedback_token_file else None
    token = token or resolve_feedback_token(settings)
    if token:
        return {"Authorization": f"Bearer {token}"}
    if args.label_fraction == 0 or settings.unsafe_open_feedback:
        return {}
    raise UserError(
        "no feedback token to send labels with: start the API once (`make serve` writes one to"
        f" {settings.feedback_token_path}), or set HOUSING_FEEDBACK_TOKEN or --feedback-token-file to the"
        " API's token (--label-fraction 0 sends no labels)"
    )


def read_token_file(path: Path) -> str:
    """The token kept in ``path``; one sentence when it cannot be read or is empty."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise UserError(f"cannot read the token file {path} ({error.strerror})") from None
    if not token:
        raise UserError(f"the token file {path} is empty")
    return token


def main(args: argparse.Namespace) -> int:
    settings = cli.settings_from_args(args)
    if args.scenario not in SCENARIOS:
        raise UserError(f"unknown scenario {args.scenario!r}; choose one of {', '.join(SCENARIOS)}")
    if not 0.0 <= args.label_fraction <= 1.0:
        raise UserError("--label-fraction must be between 0 and 1")
    label_headers = feedback_headers(args, settings)
    frame = simulation_frame(settings)
    _, x_test, _, y_test = split_dataset(
        frame, test_size=settings.test_size, random_state=settings.random_state
    )
    features, labels = scenario_rows(
        x_test,
        y_test,
        args.scenario,
        count=args.requests,
        seed=args.seed,
        subpopulation=args.subpopulation,
        inflation=args.inflation,
    )
    try:
        httpx.get(f"{args.url}/health", timeout=5).raise_for_status()
    except httpx.HTTPError as error:
        raise UserError(
            f"the API at {args.url} does not answer ({error}); start it with `make serve`"
        ) from None
    plan = TrafficPlan(
        url=args.url,
        scenario=args.scenario,
        rate=args.rate,
        concurrency=args.concurrency,
        label_delay=args.label_delay,
        label_fraction=args.label_fraction,
        seed=args.seed,
        clients=args.clients,
        quiet=args.quiet,
    )
    started = time.monotonic()
    predict_headers = (
        {"Authorization": f"Bearer {read_token_file(args.client_token_file)}"}
        if args.client_token_file
        else None
    )
    outcome = asyncio.run(drive(plan, features, labels, label_headers, predict_headers))
    seconds = time.monotonic() - started
    print(
        f"scenario {args.scenario}: {outcome.ok}/{outcome.sent} predictions ok ({outcome.failed} failed) in"
        f" {seconds:.1f} s, {outcome.labelled} labels sent ({outcome.label_failures} failed); RMSE against"
        f" the true labels {outcome.rmse():.4f}"
    )
    print(f"RMSE against the true labels by segment: {outcome.rmse_by_segment(features)}")
    print(
        "answered by model version:"
        f" {', '.join(f'{v} ({n:,})' for v, n in sorted(outcome.versions.items())) or 'none'}"
    )
    describe_challenger(args.url)
    for failure in outcome.errors[:3]:
        print(f"  e.g. {failure}", file=sys.stderr)
    return 0 if outcome.failed == 0 and outcome.label_failures == 0 else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--url", default="http://127.0.0.1:8000", help="Base URL of the API [default http://127.0.0.1:8000]"
    )
    parser.add_argument(
        "--scenario", default="baseline", help=f"One of {', '.join(SCENARIOS)} [default baseline]"
    )
    parser.add_argument(
        "--requests", type=int, default=1000, help="Number of /predict requests [default 1000]"
    )
    parser.add_argument(
        "--rate", type=float, default=0.0, help="Requests per second; 0 = as fast as possible [default 0]"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="Requests in flight at once [default 8]")
    parser.add_argument(
        "--label-delay", type=float, default=0.0, help="Seconds before a label is sent back [default 0]"
    )
    parser.add_argument(
        "--label-fraction", type=float, default=1.0, help="Share of predictions that get a label [default 1]"
    )
    parser.add_argument("--subpopulation", choices=sorted(SUBPOPULATIONS), default="high-income")
    parser.add_argument(
        "--inflation", type=float, default=1.3, help="Label multiplier of market-inflation [default 1.3]"
    )
    parser.add_argument("--seed", type=int, default=0, help="Which rows are sampled [default 0]")
    parser.add_argument(
        "--clients",
        type=int,
        default=0,
        help=(
            "Simulated clients: request i carries X-Routing-Key client-(i mod N), so a canary keeps each "
            "client on one model; 0 sends no key [default 0]"
        ),
    )
    parser.add_argument("--quiet", action="store_true", help="No progress bar.")
    parser.add_argument(
        "--client-token-file",
        default=None,
        type=Path,
        metavar="PATH",
        help="A file holding this client's /predict token, if the API asks for one (HOUSING_PREDICT_TOKENS).",
    )
    parser.add_argument(
        "--feedback-token-file",
        default=None,
        type=Path,
        metavar="PATH",
        help=(
            "A file holding the bearer token of /feedback, e.g. a named labeller's [default: env"
            " HOUSING_FEEDBACK_TOKEN, else the API's generated <artifacts>/secrets/feedback_token]"
        ),
    )
    cli.add_setting_flags(parser, "random_state", "test_size", "artifacts_dir")
    parser.add_argument(
        "--source",
        dest="data_source",
        default=None,
        metavar="PATH_OR_URL",
        help=(
            "The dataset [env HOUSING_DATA_SOURCE; default: the copy load_data.py stored in the artifacts "
            "dir, else scikit-learn's downloader]"
        ),
    )
    return parser


if __name__ == "__main__":
    cli.run(main, build_parser())
