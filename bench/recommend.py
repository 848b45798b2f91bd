"""Next-item recommendation benchmark: leaderboard, training time, latency and throughput.

Datasets (time splits only): the Diginetica sample (the last `--dn-test-days` days are the
test), and generated data at two sizes (the last day is the test). For generated data the
oracle row is the generator's own next-view distribution: the mean top-20 mass of the true
transition row of the current item, the best HR@20 any model can expect.

    .venv/bin/python bench/recommend.py [--sizes 7x20000 15x23000] [--models pop,sknn,gru,sasrec]
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ml.recommend.compare import fit_and_evaluate, format_leaderboard
from ml.recommend.evaluate import prediction_points
from ml.recommend.importers import landing_sessions, load_sessions
from ml.synthetic import GeneratorConfig, generate
from skiff.settings import REPO_ROOT

DIGINETICA = REPO_ROOT.parent / "shared" / "data" / "diginetica" / "sample_train-item-views.csv"


def latency(model, test: list[list[str]], n: int = 300, seed: int = 0) -> tuple[float, float]:
    """p50 and p99 milliseconds of one `recommend` call on one test prefix."""
    points = prediction_points(test)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(points), min(n, len(points)), replace=False)
    times = []
    for i in picks:
        began = time.perf_counter()
        model.recommend(points.prefixes[i], 20)
        times.append((time.perf_counter() - began) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def oracle_hr(truth: Path, test: list[list[str]], k: int = 20) -> float:
    table = pq.read_table(truth).to_pandas()
    table = table.sort_values(["from_sku", "probability"], ascending=[True, False])
    mass = table.groupby("from_sku").head(k).groupby("from_sku")["probability"].sum()
    points = prediction_points(test)
    return float(np.mean([mass.get(p[-1], 0.0) for p in points.prefixes]))


def run(name: str, train, test, models: list[str], oracle: float | None = None) -> str:
    rows, extra = [], []
    for algorithm in models:
        model, _, row = fit_and_evaluate(algorithm, train, test)
        p50, p99 = latency(model, test)
        rows.append(row)
        extra.append((algorithm, row["train_seconds"], p50, p99, row["recs_per_second"]))
        print(f"  {name} {algorithm}: HR@20 {row['hr_at_20']:.4f}", flush=True)
    views = sum(map(len, train))
    head = (
        f"### {name}: {len(train):,} training sessions ({views:,} views), "
        f"{len(test):,} test sessions, {rows[0]['predictions']:,} predictions "
        f"({rows[0]['excluded_targets']:,} with a target unseen in training excluded)"
    )
    table = format_leaderboard(rows)
    if oracle is not None:
        table += f"\n| oracle (true transitions) | {oracle:.4f} | | | | | | | |"
    timing = [
        "| model | train s | latency p50 ms | latency p99 ms | batch recs/s |",
        "|---|---:|---:|---:|---:|",
    ]
    timing += [
        f"| {a} | {t:.1f} | {p50:.2f} | {p99:.2f} | {r:,.0f} |" for a, t, p50, p99, r in extra
    ]
    return "\n\n".join([head, table, "\n".join(timing)])


def diginetica(models: list[str], test_days: int) -> str | None:
    if not DIGINETICA.exists():
        return None
    data = load_sessions(DIGINETICA, "diginetica")
    last = dt.date.fromisoformat(data.days[-1])
    split = (last - dt.timedelta(days=test_days - 1)).isoformat()
    train = [s for s, d in zip(data.sessions, data.days, strict=True) if d < split]
    test = [s for s, d in zip(data.sessions, data.days, strict=True) if d >= split]
    return run(f"Diginetica sample (test = last {test_days} days)", train, test, models)


def synthetic(size: str, models: list[str], seed: int) -> str:
    days, per_day = (int(x) for x in size.split("x"))
    with tempfile.TemporaryDirectory(prefix="skiff-bench-rec-") as tmp:
        out = Path(tmp)
        result = generate(out, GeneratorConfig(days=days, sessions_per_day=per_day, seed=seed))
        by_day = landing_sessions(out, result.days)
        train = [s for day in result.days[:-1] for s in by_day[day]]
        test = by_day[result.days[-1]]
        oracle = oracle_hr(out / "_truth" / "transitions_pre.parquet", test)
    return run(f"synthetic {size} (test = last day)", train, test, models, oracle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", nargs="*", default=["7x20000", "15x23000"])
    parser.add_argument("--models", default="pop,sknn,gru,sasrec")
    parser.add_argument("--dn-test-days", type=int, default=14)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    models = args.models.split(",")
    sections = [diginetica(models, args.dn_test_days)]
    sections += [synthetic(size, models, args.seed) for size in args.sizes]
    print("\n\n".join(s for s in sections if s))


if __name__ == "__main__":
    main()
