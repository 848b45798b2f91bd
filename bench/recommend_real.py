"""Next-item models on real public sessions: the torch model beside POP and session-kNN.

YooChoose (RecSys 2015 clicks, first 100k, GRU4Rec-style preprocessing): train on
`train_tr`, evaluate every next item of each `train_valid` session (targets unseen in training
left out and counted). The Diginetica sample: the last `--dn-test-days` days are the test.
POP is the floor and session-kNN the baseline, measured in the same run; train seconds are
wall clock (CPU seconds beside them) with the machine's load average, since other processes
share the cores. Skips a dataset whose files under ../shared/data are absent.

    .venv/bin/python bench/recommend_real.py [--models pop,sknn,gru] [--params '{"gru": {...}}']
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os

from ml.recommend.compare import fit_and_evaluate
from ml.recommend.importers import load_sessions
from skiff.settings import REPO_ROOT

DATA = REPO_ROOT.parent / "shared" / "data"
YOOCHOOSE = DATA / "yoochoose"
YOOCHOOSE_TRAIN = YOOCHOOSE / "yoochoose-clicks-100k_train_tr.txt"
YOOCHOOSE_VALID = YOOCHOOSE / "yoochoose-clicks-100k_train_valid.txt"
DIGINETICA = DATA / "diginetica" / "sample_train-item-views.csv"
TRAIN_TARGET_S = 15.0


def table(name: str, train, test, models: list[str], params: dict) -> str:
    lines = [
        f"### {name}: {len(train):,} training sessions, {len(test):,} test sessions",
        "",
        "| model | HR@20 | MRR@20 | train s (wall) | train s (CPU) | load avg (1 min) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    excluded = None
    for algorithm in models:
        _, result, row = fit_and_evaluate(algorithm, train, test, 20, params.get(algorithm))
        excluded = (result.predictions, result.excluded_targets)
        lines.append(
            f"| {algorithm} | {result.hr:.4f} | {result.mrr:.4f} | {row['train_seconds']:.1f} "
            f"| {row['train_cpu_seconds']:.1f} | {os.getloadavg()[0]:.1f} |"
        )
        print(f"  {name} {algorithm}: HR@20 {result.hr:.4f} MRR@20 {result.mrr:.4f}", flush=True)
    if excluded:
        lines.append(f"\n{excluded[0]:,} predictions, {excluded[1]:,} unseen targets left out.")
    lines.append(f"Target (issue #16): the torch model trains in under {TRAIN_TARGET_S:g} s.")
    return "\n".join(lines)


def yoochoose(models: list[str], params: dict) -> str:
    if not (YOOCHOOSE_TRAIN.exists() and YOOCHOOSE_VALID.exists()):
        return f"YooChoose skipped: {YOOCHOOSE} is absent"
    train = load_sessions(YOOCHOOSE_TRAIN, "sessions").sessions
    valid = load_sessions(YOOCHOOSE_VALID, "sessions").sessions
    return table("YooChoose 100k, train_tr -> train_valid", train, valid, models, params)


def diginetica(models: list[str], params: dict, test_days: int) -> str:
    if not DIGINETICA.exists():
        return f"Diginetica skipped: {DIGINETICA} is absent"
    data = load_sessions(DIGINETICA, "diginetica")
    split = (dt.date.fromisoformat(data.days[-1]) - dt.timedelta(days=test_days - 1)).isoformat()
    train = [s for s, d in zip(data.sessions, data.days, strict=True) if d < split]
    test = [s for s, d in zip(data.sessions, data.days, strict=True) if d >= split]
    return table(f"Diginetica sample, last {test_days} days", train, test, models, params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="pop,sknn,gru")
    parser.add_argument("--params", default="{}", help="JSON: algorithm -> constructor params")
    parser.add_argument("--dn-test-days", type=int, default=14)
    args = parser.parse_args()
    models, params = args.models.split(","), json.loads(args.params)
    print(f"cores {os.cpu_count()}, load average {os.getloadavg()[0]:.1f} at the start\n")
    print(yoochoose(models, params) + "\n")
    print(diginetica(models, params, args.dn_test_days))


if __name__ == "__main__":
    main()
