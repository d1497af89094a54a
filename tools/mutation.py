"""Mutation check of the promises the docs make: break each promise in the code, one at a time, run the tests
that guard it, and report whether they caught it (killed) or not (survived).

Each mutation replaces one snippet of a module with a version that breaks one promise (the prediction log,
the promotion and retrain policies, the evidence rule, the JSON limits, the label rules). It runs in a copy
of the working tree, so the tree itself is never changed. A survived mutation is a promise no test would
notice breaking: write the test, or say why the mutation is equivalent.

    python -m tools.mutation [--only NAME ...] [--list]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_DATA_SOURCE = PROJECT_DIR.parent / "shared" / "data" / "california_housing.csv"
COPIED = (
    "housing",
    "tests",
    "app.py",
    "load_data.py",
    "preprocess.py",
    "train.py",
    "promote.py",
    "monitor.py",
    "simulate_traffic.py",
    "pyproject.toml",
    "docs",
    "README.md",
    "Makefile",
)


@dataclass(frozen=True)
class Mutation:
    name: str
    promise: str
    path: str
    original: str
    mutated: str
    tests: tuple[str, ...]


LOG = "tests/code/test_prediction_log.py"
POLICY = "tests/code/test_promotion_policy.py"
RETRAIN = "tests/code/test_retrain_policy.py"
SCAN = "tests/code/test_json_scan.py"
FAIR = "tests/code/test_fair_shares.py"
MUTATIONS = (
    Mutation(
        "rows-per-statement",
        "a flush goes to the database in multi-row statements of as many rows as 999 parameters take",
        "housing/store/tables.py",
        "ROWS_PER_STATEMENT = 999 // len(PREDICTION_COLUMNS)",
        "ROWS_PER_STATEMENT = 1",
        (LOG,),
    ),
    Mutation(
        "insert-duplicates",
        "an insert skips the request ids already stored (a retried batch adds nothing)",
        "housing/store/tables.py",
        " ON CONFLICT (request_id) DO NOTHING",
        "",
        (LOG,),
    ),
    Mutation(
        "no-buffer-cap",
        "past the buffer cap, rows spill to disk instead of filling memory",
        "housing/store/spill.py",
        "if self.max_rows is not None and self.memory_rows + incoming > self.max_rows:",
        "if False:",
        (LOG,),
    ),
    Mutation(
        "no-orphan-replay",
        "a restarted process replays the spill files of processes that died",
        "housing/store/spill_file.py",
        "    for path in orphan_paths(",
        "    for path in [] and orphan_paths(",
        (LOG,),
    ),
    Mutation(
        "labels-mutable",
        "a different label for a labelled prediction is a conflict (labels are immutable)",
        "housing/store/prediction_log.py",
        "return FeedbackResult.UNCHANGED if stored == actual else FeedbackResult.CONFLICT",
        "return FeedbackResult.UNCHANGED",
        (LOG,),
    ),
    Mutation(
        "label-range",
        "a label outside the target's range is refused (422)",
        "housing/api/schemas.py",
        "gt=TARGET.minimum, le=TARGET.maximum",
        "gt=-1e9, le=1e9",
        ("tests/code/test_schema.py",),
    ),
    Mutation(
        "gate-without-noise",
        "production moves only when the paired gain's interval lies above zero",
        "housing/registry/promotion_policy.py",
        "        return self.low > 0",
        "        return True",
        (POLICY,),
    ),
    Mutation(
        "no-production-gate",
        "a candidate must pass the production R2 gate to replace production",
        "housing/registry/promotion_policy.py",
        "    return ranked(candidates)[0].r2 > production_r2_threshold",
        "    return True",
        (POLICY,),
    ),
    Mutation(
        "no-staging-gate",
        "staging is only given to a candidate above the staging R2 gate",
        "housing/registry/promotion_policy.py",
        "    return r2 > staging_r2_threshold",
        "    return True",
        (POLICY,),
    ),
    Mutation(
        "drift-ignored",
        "more than the drift share threshold of drifted features is a reason to retrain",
        "housing/monitoring/retrain_policy.py",
        "    if figures.drift_share > thresholds.drift_share_threshold:",
        "    if False:",
        (RETRAIN,),
    ),
    Mutation(
        "evidence-ignored",
        "a retrain needs min_labels labelled districts no model has learnt from",
        "housing/monitoring/retrain_policy.py",
        "    if evidence >= thresholds.min_labels:",
        "    if evidence >= 0:",
        (RETRAIN,),
    ),
    Mutation(
        "districts-counted-twice",
        "identical feature rows count as one district of evidence",
        "housing/store/retrain_evidence.py",
        'fresh.drop_duplicates("district", keep="last")',
        "fresh",
        ("tests/code/test_retrain_evidence.py",),
    ),
    Mutation(
        "used-districts-again",
        "districts a retraining run used are never evidence again",
        "housing/store/retrain_evidence.py",
        'frame[~frame["district"].isin(used_districts)]',
        "frame",
        ("tests/code/test_retrain_evidence.py",),
    ),
    Mutation(
        "no-depth-limit",
        "a body nesting deeper than max_json_depth is a 400 before any parser runs",
        "housing/api/json_scan.py",
        "    check_depth(structure, limits.max_depth)\n",
        "",
        (SCAN,),
    ),
    Mutation(
        "no-key-limit",
        "an object with more than max_json_keys keys is a 422 before any parser runs",
        "housing/api/json_scan.py",
        "    if wide is not None:",
        "    if False:",
        (SCAN,),
    ),
    Mutation(
        "no-number-limit",
        "a number longer than max_number_chars is a 422 before any parser runs",
        "housing/api/json_scan.py",
        "    if first_long >= 0:",
        "    if False:",
        (SCAN,),
    ),
    Mutation(
        "rmse-ignored",
        "RMSE on labelled traffic above the threshold is a reason to retrain",
        "housing/monitoring/retrain_policy.py",
        "        if figures.rmse is not None and figures.rmse > thresholds.rmse_threshold:",
        "        if False:",
        (RETRAIN,),
    ),
    Mutation(
        "price-index-always",
        "the price index moves old labels only when its interval excludes 1",
        "housing/monitoring/retraining.py",
        "        return self.step if self.low > 1.0 or self.high < 1.0 else 1.0",
        "        return self.step",
        ("tests/code/test_retraining_sets.py",),
    ),
    Mutation(
        "traffic-share-uncapped",
        "labelled traffic's share of the training weight is capped",
        "housing/monitoring/retraining.py",
        "    return cap * effective / (effective + ramp_rows)",
        "    return effective / (effective + ramp_rows)",
        ("tests/code/test_retraining_sets.py",),
    ),
    Mutation(
        "few-labels-judged",
        "the gate judges on labelled traffic only from gate_min_labelled_rows rows",
        "housing/monitoring/retraining.py",
        "eval_traffic if len(eval_traffic) >= settings.gate_min_labelled_rows else eval_traffic.iloc[0:0]",
        "eval_traffic",
        ("tests/code/test_retraining_sets.py",),
    ),
    Mutation(
        "one-look-live-interval",
        "the live verdict's interval is time-uniform (valid at every look)",
        "housing/registry/live_policy.py",
        "sequence_radius(len(gain), float(np.std(gain, ddof=1)), confidence)",
        "1.96 * float(np.std(gain, ddof=1)) / math.sqrt(len(gain))",
        ("tests/code/test_live_policy.py",),
    ),
    Mutation(
        "in-flight-uncounted",
        "the memory cap counts the batch the writer holds (a failed write puts it back)",
        "housing/store/spill.py",
        "        return len(self._rows) + inflight",
        "        return len(self._rows)",
        (LOG,),
    ),
    Mutation(
        "r2-ignored",
        "R2 on labelled traffic below the threshold is a reason to retrain",
        "housing/monitoring/retrain_policy.py",
        "        if figures.r2 is not None and figures.r2 < thresholds.r2_threshold:",
        "        if False:",
        (RETRAIN,),
    ),
    Mutation(
        "production-overwritten",
        "production moves only from the version the mover read (compare-and-set), else nothing changes",
        "housing/registry/production.py",
        "    if current != expected:\n        raise ProductionMoved(",
        "    if False:\n        raise ProductionMoved(",
        ("tests/code/test_production.py",),
    ),
    Mutation(
        "body-size-unchecked",
        "a body over its size limit is a 413, refused before it is read whole",
        "housing/api/body_reading.py",
        "            if size > limit:",
        "            if False:",
        (SCAN,),
    ),
    Mutation(
        "batch-rows-unchecked",
        "a batch of more than max_batch_rows rows is a 413 before it is parsed",
        "housing/api/predict_handler.py",
        "    if rows is not None and max_rows is not None and rows > max_rows:",
        "    if False:",
        (SCAN,),
    ),
    Mutation(
        "query-number-unbounded",
        "a query-string value longer than max_number_chars is refused by its length before any pattern runs",
        "housing/api/query_params.py",
        "        elif len(text) > max_number_chars:",
        "        elif False:",
        ("tests/code/test_query_params.py",),
    ),
    Mutation(
        "labeller-share-uncapped",
        "once named labellers exist, no labeller makes up more than its share of the evidence",
        "housing/store/retrain_evidence.py",
        '    if labeller_share is None or "labeller" not in newest:',
        "    if True:",
        (FAIR,),
    ),
    Mutation(
        "window-not-fair",
        "the monitor's window is read client by client, no client over its share while others sent traffic",
        "housing/store/log_reads.py",
        "    if client_share is not None and last_n is not None:",
        "    if False:",
        (FAIR,),
    ),
    Mutation(
        "price-step-unbounded",
        "a price step beyond retrain_max_price_step is an ALERT a person approves, not a retrain",
        "housing/monitoring/retrain_policy.py",
        "        return self.moved and max(self.step, 1.0 / self.step) > self.allowed * (1 + 1e-9)",
        "        return False",
        (RETRAIN,),
    ),
    Mutation(
        "traffic-as-neighbour-target",
        "labelled traffic never becomes a neighbour target in a retrain",
        "housing/monitoring/retraining.py",
        "        reference_rows=np.arange(len(x_train)) < len(split.x_train),",
        "        reference_rows=None,",
        ("tests/code/test_retraining_sets.py",),
    ),
    Mutation(
        "lost-lease-acts",
        "a holder whose lease was taken over confirms nothing and moves nothing",
        "housing/store/locks.py",
        "    if extended is None:\n        raise LeaseLost(",
        "    if False:\n        raise LeaseLost(",
        ("tests/code/test_locks.py", "tests/code/test_production.py"),
    ),
    Mutation(
        "dead-holder-kept",
        "a lock whose holder on this machine is gone is taken over at once",
        "housing/store/locks.py",
        "    return process_start_ticks(int(parts[1])) != parts[2]",
        "    return False",
        ("tests/code/test_locks.py",),
    ),
    Mutation(
        "poison-row-blocks",
        "a row the database refuses for good goes to the dead-letter file and blocks no other row",
        "housing/store/prediction_log.py",
        "        dead = self.dead_letters.refused(refused, reasons)",
        "        dead: list[Any] = []",
        ("tests/code/test_log_safeguards.py",),
    ),
    Mutation(
        "arrays-unchecked",
        "a model whose arrays a kernel would read out of bounds is refused at load",
        "housing/registry/model_bounds.py",
        "    if not ok:\n        raise ModelArraysInvalid(",
        "    if False:\n        raise ModelArraysInvalid(",
        ("tests/code/test_model_bounds.py",),
    ),
    Mutation(
        "wrong-token-accepted",
        "a label needs a labeller's token: a wrong one is a 403",
        "housing/api/deps.py",
        "    labeller = services.labellers.labeller(credentials.credentials)",
        '    labeller = services.labellers.labeller(credentials.credentials) or "anyone"',
        ("tests/integration/test_feedback_auth.py",),
    ),
    Mutation(
        "interval-unbounded",
        "no run of labels moves a served range beyond x2 for its centre and x4 for its width",
        "housing/store/interval_state.py",
        "                width=clamped(state_table.c.width + WIDTH_STEP * miss, WIDTH_LIMIT),",
        "                width=state_table.c.width + WIDTH_STEP * miss,",
        ("tests/code/test_intervals.py",),
    ),
    Mutation(
        "interval-misses-ignored",
        "a label outside its range widens that version's ranges (misses settle at 1 - level)",
        "housing/store/interval_state.py",
        "    miss = float(outcome.missed) - (1 - level)",
        "    miss = -(1 - level)",
        ("tests/code/test_intervals.py",),
    ),
)


def copy_tree(target: Path) -> None:
    for name in COPIED:
        source = PROJECT_DIR / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target / name)


def test_environment() -> dict[str, str]:
    """The tests' environment in the copy: the real CSV named by an absolute path (the copy has no
    ``../shared`` beside it)."""
    environment = dict(os.environ)
    source = environment.get("HOUSING_DATA_SOURCE") or str(DEFAULT_DATA_SOURCE)
    if "://" not in source:
        source = str(Path(source).resolve())
    environment["HOUSING_DATA_SOURCE"] = source
    return environment


def run_tests(tree: Path, tests: tuple[str, ...]) -> tuple[int, int, int, str]:
    """Run ``tests`` in ``tree``: (exit code, failed tests, errors, the output's tail)."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=900,
        env=test_environment(),
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    failed = int(match.group(1)) if (match := re.search(r"(\d+) failed", summary)) else 0
    errors = int(match.group(1)) if (match := re.search(r"(\d+) errors?", summary)) else 0
    return result.returncode, failed, errors, (result.stdout + result.stderr)[-400:]


def run(mutation: Mutation, tree: Path) -> tuple[str, float]:
    """Apply ``mutation`` in ``tree``, run its tests, put the file back; (outcome, seconds). Killed means at
    least one test failed (an assertion), not that a fixture broke."""
    path = tree / mutation.path
    source = path.read_text()
    if source.count(mutation.original) != 1:
        return "not applicable (the snippet is not in the code exactly once)", 0.0
    path.write_text(source.replace(mutation.original, mutation.mutated))
    started = time.perf_counter()
    try:
        code, failed, errors, tail = run_tests(tree, mutation.tests)
    finally:
        path.write_text(source)
    seconds = time.perf_counter() - started
    if failed and not errors:
        return "killed", seconds
    if code == 0:
        return "SURVIVED", seconds
    return f"error (pytest exit {code}, {errors} errors): {tail}", seconds


def check_baseline(tree: Path, mutations: list[Mutation]) -> str | None:
    """Run every chosen mutation's tests on the unchanged copy; a sentence when they do not all pass."""
    tests = tuple(dict.fromkeys(test for mutation in mutations for test in mutation.tests))
    code, failed, errors, tail = run_tests(tree, tests)
    if code != 0:
        return f"the unmutated tests do not pass ({failed} failed, {errors} errors): {tail}"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME", help="Run these mutations only.")
    parser.add_argument("--list", action="store_true", help="List the mutations and exit.")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if args.only is None or m.name in args.only]
    if args.list:
        for mutation in chosen:
            print(f"{mutation.name:<24} {mutation.promise}")
        return 0
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="housing-mutation-") as folder:
        tree = Path(folder)
        copy_tree(tree)
        problem = check_baseline(tree, chosen)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
        print("the unmutated copy passes every test the mutations use")
        print(f"{'mutation':<24} {'outcome':<9} {'seconds':>7}  promise")
        for mutation in chosen:
            outcome, seconds = run(mutation, tree)
            outcomes.append(outcome)
            print(f"{mutation.name:<24} {outcome:<9} {seconds:>7.1f}  {mutation.promise}", flush=True)
    killed = outcomes.count("killed")
    print(f"\n{killed} of {len(outcomes)} mutations killed")
    return 0 if killed == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
