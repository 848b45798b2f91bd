"""Benchmark the conversion models: training time and peak memory per algorithm, scoring
throughput, and the quality table against the generator's answer key.

A size is the number of sessions in the training window (10 days); one validation and one
test day of the same daily volume follow. Examples are built straight from the generated
landing files by `bench/conversion_examples.py` (the dbt mart's logic in pandas;
tests/test_conversion_assets.py checks the two agree) and featurized by the one shared batch
builder: the full Dagster + dbt pipeline at a million sessions would measure dbt, not the
models. Each algorithm trains in a fresh process, so its peak RSS is its own. With `--workdir`
the generated split is kept there (one folder per size and seed) and reused by the next run, so
models can be compared on the same data without paying for it twice. Example:

    .venv/bin/python bench/conversion.py --sizes 100000 1000000
    .venv/bin/python bench/conversion.py --sizes 1000000 --workdir /tmp/skiff-bench-data
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd

from bench.conversion_examples import examples_from_landing
from ml.conversion import dataset, features, metrics, models
from ml.synthetic import TRUTH_DIR, GeneratorConfig, generate

TRAIN_DAYS = 10
START = dt.date(2026, 1, 5)
ALGORITHMS = ("majority", "logistic", "hgb", "gru")
METRICS = ("roc_auc", "pr_auc", "log_loss", "brier", "f1", "precision", "recall", "ece")
SERVING_PREFIXES = 300


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _reset_peak() -> None:
    """Linux: restart the process's peak RSS (VmHWM) count, so the fit's own peak shows."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def _vm_hwm_mib() -> float:
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def prepare(sessions: int, folder: Path, seed: int) -> dict:
    """Generate the days and write the split (train / validation / test) as Parquet; a folder
    a previous run prepared (its `prepared.json` written last) is reused as it is."""
    done = folder / "prepared.json"
    if done.exists():
        return json.loads(done.read_text())
    per_day = sessions // TRAIN_DAYS
    days = [START + dt.timedelta(days=i) for i in range(TRAIN_DAYS + 2)]
    began = time.perf_counter()
    generate(
        folder / "landing", GeneratorConfig(days=len(days), sessions_per_day=per_day, seed=seed)
    )
    generated = time.perf_counter() - began
    began = time.perf_counter()
    frame = examples_from_landing(folder / "landing", days)
    split = dataset.time_split(frame, TRAIN_DAYS, days[-1])
    examples = time.perf_counter() - began
    for name in ("train", "validation", "test"):
        getattr(split, name).to_parquet(folder / f"{name}.parquet", index=False)
    truth = pd.read_parquet(
        folder / "landing" / TRUTH_DIR / str(split.test_day) / "sessions.parquet"
    )
    truth[["session_id_hash", "purchase_probability"]].to_parquet(folder / "truth.parquet")
    began = time.perf_counter()
    n_train = len(features.batch_from_frame(split.train))
    featurize = time.perf_counter() - began
    prepared = {
        "sessions": int(split.train["session_key"].nunique()),
        "train_prefixes": n_train,
        "test_prefixes": len(split.test),
        "generate_s": generated,
        "examples_s": examples,
        "features_s": featurize,
        "features_per_s": n_train / featurize,
    }
    done.write_text(json.dumps(prepared))
    return prepared


def _fit(folder: str, algorithm: str, params: dict, queue: mp.Queue) -> None:
    folder = Path(folder)
    frames = {n: pd.read_parquet(folder / f"{n}.parquet") for n in ("train", "validation", "test")}
    train = features.batch_from_frame(frames["train"])
    rss_before = _rss_mib()
    _reset_peak()
    model = models.make_model(algorithm, **params)
    began = time.perf_counter()
    model.fit(train, dataset.labels(train.events))
    fit_s = time.perf_counter() - began
    sample = models.fit_sample(
        train.starts, model.params.get("max_fit_prefixes"), model.params.get("seed", 0)
    )
    fit_peak = _vm_hwm_mib()
    peak = _peak_mib()
    validation = features.batch_from_frame(frames["validation"])  # after the fit, as the asset
    threshold = metrics.choose_threshold(
        dataset.labels(validation.events), model.predict_proba(validation)
    )
    began = time.perf_counter()
    test = features.batch_from_frame(frames["test"])
    featurized = time.perf_counter() - began
    began = time.perf_counter()
    p = model.predict_proba(test)
    scored = time.perf_counter() - began
    quality = metrics.scores(dataset.labels(test.events), p, threshold)

    # serving: one prefix at a time, as the server receives them (features + model)
    sessions = test.events.groupby("session_key", sort=False)
    served, began = 0, time.perf_counter()
    for _, session in sessions:
        events = session[list(features.EVENT_COLUMNS)].to_dict("records")
        for k in range(1, len(events) + 1):
            model.predict_proba(features.batch_from_events(events[:k]))
            served += 1
        if served >= SERVING_PREFIXES:
            break
    serving_ms = (time.perf_counter() - began) / served * 1000
    queue.put(
        {
            "algorithm": algorithm,
            "load": os.getloadavg()[0],
            "fit_s": fit_s,
            "fit_prefixes": len(train) if sample is None else int(sample.sum()),
            "rss_before_fit_mib": rss_before,
            "peak_rss_mib": peak,
            "fit_peak_rss_mib": fit_peak,
            "score_prefixes_per_s": len(test) / scored,
            "features_and_score_prefixes_per_s": len(test) / (featurized + scored),
            "serving_ms_per_prefix": serving_ms,
            **{m: quality[m] for m in METRICS},
            "threshold": quality["threshold"],
        }
    )


def oracle(folder: Path) -> dict:
    """The answer key as a score: each prefix gets its session's true purchase probability.

    It knows the session's future cart, and its F1 threshold is picked on the test day itself:
    a ceiling, not a model.
    """
    test = pd.read_parquet(folder / "test.parquet")
    truth = pd.read_parquet(folder / "truth.parquet").set_index("session_id_hash")
    p = test["session_id"].map(truth["purchase_probability"]).to_numpy()
    y = dataset.labels(test)
    quality = metrics.scores(y, p, metrics.choose_threshold(y, p))
    return {"algorithm": "oracle (truth)", **{m: quality[m] for m in METRICS}}


PARAMS = {
    "majority": {},
    "logistic": {"seed": 0},
    "hgb": {"seed": 0},
    "gru": {"seed": 0},
}


def _table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    head = "| " + " | ".join(title for _, title, _ in columns) + " |"
    rule = "|" + "|".join("---" if fmt == "s" else "---:" for _, _, fmt in columns) + "|"
    lines = [head, rule]
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            value = row.get(key, "")
            cells.append(format(value, fmt) if value != "" else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[100_000, 1_000_000])
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--workdir", type=Path, help="keep the generated split here and reuse it next time"
    )
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    cost, quality = [], []
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    for size in args.sizes:
        with contextlib.ExitStack() as stack:
            if args.workdir:
                folder = args.workdir / f"{size}-seed{args.seed}"
                folder.mkdir(parents=True, exist_ok=True)
            else:
                tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="skiff-bench-"))
                folder = Path(tmp)
            prepared = prepare(size, folder, args.seed)
            print(f"size {size:,}: {json.dumps(prepared)}", file=sys.stderr, flush=True)
            for algorithm in args.algorithms:
                queue = ctx.Queue()
                process = ctx.Process(
                    target=_fit, args=(str(folder), algorithm, PARAMS[algorithm], queue)
                )
                process.start()
                row = queue.get()
                process.join()
                row |= {"size": f"{prepared['sessions']:,}", "prefixes": prepared["train_prefixes"]}
                print(json.dumps(row), file=sys.stderr, flush=True)
                cost.append(row)
                quality.append(row)
            quality.append({"size": f"{prepared['sessions']:,}", **oracle(folder)})
            print(
                f"\nsize {size:,}: {prepared['sessions']:,} training sessions, "
                f"{prepared['train_prefixes']:,} training prefixes, "
                f"{prepared['test_prefixes']:,} test prefixes; generate "
                f"{prepared['generate_s']:.1f} s, examples {prepared['examples_s']:.1f} s, "
                f"batch features {prepared['features_s']:.1f} s "
                f"({prepared['features_per_s']:,.0f} prefixes/s)",
                flush=True,
            )
    print("\n## Training cost and scoring throughput\n")
    print(
        _table(
            cost,
            [
                ("size", "train sessions", "s"),
                ("prefixes", "train prefixes", ",d"),
                ("algorithm", "model", "s"),
                ("fit_prefixes", "fit prefixes", ",d"),
                ("fit_s", "fit s", ".1f"),
                ("load", "load avg", ".1f"),
                ("rss_before_fit_mib", "RSS before fit MiB", ",.0f"),
                ("fit_peak_rss_mib", "peak RSS during fit MiB", ",.0f"),
                ("peak_rss_mib", "process peak RSS MiB", ",.0f"),
                ("score_prefixes_per_s", "score prefixes/s (batch)", ",.0f"),
                ("features_and_score_prefixes_per_s", "features+score prefixes/s", ",.0f"),
                ("serving_ms_per_prefix", "one prefix ms (serving path)", ".2f"),
            ],
        )
    )
    print("\n## Quality on the test day (F1 at the validation day's threshold)\n")
    print(
        _table(
            quality,
            [
                ("size", "train sessions", "s"),
                ("algorithm", "model", "s"),
                *((m, m, ".4f") for m in METRICS),
            ],
        )
    )
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
