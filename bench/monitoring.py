"""Benchmark one day's monitoring against the floor: Evidently alone on the same frames.

For each size (events in the monitored day) a fresh process generates two reference days and
the day, builds the conversion examples (the pandas twin of the mart), fits the champions'
stand-ins on the reference days (logistic regression, session-kNN) and scores the day (what
`conversion_predictions` holds before monitoring runs), then times what the four monitoring
assets compute for the day: model inputs of every prefix (sampled to 20k, whole sessions), the
input drift report, the score and label drift with the day's quality, the recommender on a
seeded sample of the day's sessions (`RECOMMENDER_SESSIONS`, as the asset does) and its drift,
each HTML report written. The recommender's HR@20 on the sample is printed with its standard
error; `--check-error` also evaluates every session of the day (untimed) and prints how far the
sample's HR@20 is from the whole day's, in standard errors. Warehouse reads are not included (the
same `select ... where session_day = ...` a nightly run does anyway). The floor is
Evidently's `DataDriftPreset` run directly on the very frames our code hands it, without
writing HTML. Example:

    .venv/bin/python bench/monitoring.py --events 100000 1000000 --check-error
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EVENTS_PER_SESSION = 6.8  # the generator's mean at its defaults


def _run(events: int, check_error: bool, queue: mp.Queue) -> None:
    import pandas as pd
    from evidently import Report
    from evidently.presets import DataDriftPreset

    from bench.conversion_examples import examples_from_landing
    from ml import monitoring as mon
    from ml.conversion import dataset, features, models
    from ml.recommend.models import make_model
    from ml.synthetic import GeneratorConfig, generate
    from orchestration.monitoring.config import (
        DRIFT_SHARE,
        ONE_COLUMN_SHARE,
        RECOMMENDER_SESSIONS,
    )

    sessions = int(events / EVENTS_PER_SESSION)
    start = dt.date(2026, 1, 5)
    days = [start + dt.timedelta(days=i) for i in range(3)]
    with tempfile.TemporaryDirectory(prefix="skiff-bench-") as tmp:
        generate(Path(tmp), GeneratorConfig(days=3, sessions_per_day=sessions, write_truth=False))
        reference_examples = examples_from_landing(Path(tmp), days[:2])
        day_examples = examples_from_landing(Path(tmp), days[2:])
        day_file = Path(tmp) / days[2].isoformat() / "browsing_events.csv"
        day_events = day_file.read_bytes().count(b"\n") - 1  # the header

        def sequences(examples: pd.DataFrame) -> list[list[str]]:
            views = examples[examples["product_action"] == "detail"]
            views = views.sort_values(["session_key", "prefix_length"])
            return [g.tolist() for _, g in views.groupby("session_key")["product_sku"]]

        # the champions' stand-ins and the references (cached per version in production)
        began = time.perf_counter()
        ref_batch = features.batch_from_frame(mon.sample_sessions(reference_examples, 20_000))
        model = models.make_model("logistic").fit(ref_batch, dataset.labels(ref_batch.events))
        reference = mon.conversion_inputs(ref_batch)
        reference["purchase_probability"] = model.predict_proba(ref_batch)
        ref_sessions = sequences(reference_examples)
        recommender = make_model("sknn").fit(ref_sessions)
        known = set(recommender.vocab.items[1:])
        popularity = dict(
            zip(recommender.vocab.items[1:], recommender.popularity[1:].tolist(), strict=True)
        )
        ref_points = mon.recommender_day(
            [s for s in ref_sessions if len(s) >= 2],
            recommender.recommend_batch,
            known,
            popularity,
            max_sessions=RECOMMENDER_SESSIONS,
        ).points
        reference_seconds = time.perf_counter() - began

        # the day's scores: conversion_predictions has them before monitoring runs
        full_batch = features.batch_from_frame(day_examples)
        scored = mon.conversion_inputs(full_batch)[["session_key", "will_purchase"]]
        scored["purchase_probability"] = model.predict_proba(full_batch)

        # the day's view sequences: the asset reads them from the session_sequences mart
        requests = [s for s in sequences(day_examples) if len(s) >= 2]

        # one day's monitoring, as the four assets compute it
        out = Path(tmp) / "reports"
        numerical = [*mon.monitored_features(), *mon.NUMERICAL_EXTRA]
        began = time.perf_counter()
        batch = features.batch_from_frame(mon.sample_sessions(day_examples, 20_000))
        current = mon.conversion_inputs(batch)
        feature_drift = mon.data_drift(
            reference,
            current,
            numerical=numerical,
            categorical=mon.CATEGORICAL_INPUTS,
            drift_share=DRIFT_SHARE,
        )
        feature_drift.save_html(out / "features.html")
        mon.data_drift(
            reference, scored, numerical=["purchase_probability"], drift_share=ONE_COLUMN_SHARE
        ).save_html(out / "scores.html")
        mon.conversion_quality(scored["will_purchase"], scored["purchase_probability"])
        labels = {"will_purchase": lambda f: f["will_purchase"].astype(str)}
        mon.data_drift(
            reference.assign(**labels),
            scored.assign(**labels),
            categorical=["will_purchase"],
            drift_share=ONE_COLUMN_SHARE,
        ).save_html(out / "labels.html")
        today = mon.recommender_day(
            requests,
            recommender.recommend_batch,
            known,
            popularity,
            max_sessions=RECOMMENDER_SESSIONS,
        )
        mon.data_drift(
            ref_points,
            today.points,
            numerical=mon.RECOMMENDER_NUMERICAL,
            categorical=mon.RECOMMENDER_CATEGORICAL,
            drift_share=DRIFT_SHARE,
        ).save_html(out / "recommender.html")
        ours = time.perf_counter() - began

        # the floor: Evidently alone on the same frames
        began = time.perf_counter()
        for ref, cur, cols in (
            (reference, current, [*numerical, *mon.CATEGORICAL_INPUTS]),
            (reference, scored, ["purchase_probability"]),
            (reference.assign(**labels), scored.assign(**labels), ["will_purchase"]),
            (ref_points, today.points, [*mon.RECOMMENDER_NUMERICAL, *mon.RECOMMENDER_CATEGORICAL]),
        ):
            Report([DataDriftPreset(columns=cols)]).run(
                current_data=cur[cols], reference_data=ref[cols]
            )
        floor = time.perf_counter() - began
        whole = (
            mon.recommender_day(requests, recommender.recommend_batch, known, popularity)
            if check_error
            else None
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(
        {
            "events": day_events,
            "prefixes": len(day_examples),
            "ours": ours,
            "floor": floor,
            "reference": reference_seconds,
            "peak": peak,
            "hr": today.metrics["hr_at_20"],
            "hr_se": today.metrics["hr_at_20_se"],
            "sampled": today.metrics["sampled_sessions"],
            "requests": today.metrics["sessions"],
            "hr_all": whole.metrics["hr_at_20"] if whole else None,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", nargs="+", type=int, default=[100_000, 1_000_000])
    parser.add_argument(
        "--check-error",
        action="store_true",
        help="also evaluate every session of the day (untimed) to check the sample's error",
    )
    args = parser.parse_args()
    context = mp.get_context("spawn")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    header = (
        "events",
        "prefixes",
        "ours s",
        "floor s",
        "ours/floor",
        "reference s",
        "peak RSS",
        "recommender sessions",
        "HR@20 ± SE",
        "whole day HR@20",
    )
    print("| " + " | ".join(header) + " |\n|" + "---:|" * len(header))
    for events in args.events:
        queue = context.Queue()
        child = context.Process(target=_run, args=(events, args.check_error, queue))
        child.start()
        r = queue.get()
        child.join()
        whole = "" if r["hr_all"] is None else f"{r['hr_all']:.4f}"
        if r["hr_all"] is not None and r["hr_se"] > 0:
            whole += f" ({(r['hr'] - r['hr_all']) / r['hr_se']:+.1f} SE)"
        print(
            f"| {r['events']:,} | {r['prefixes']:,} | {r['ours']:.1f} | {r['floor']:.1f} "
            f"| {r['ours'] / r['floor']:.2f}x | {r['reference']:.1f} | {r['peak']:,.0f} MiB "
            f"| {r['sampled']:,.0f} of {r['requests']:,.0f} | {r['hr']:.4f} ± {r['hr_se']:.4f} "
            f"| {whole} |"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
