"""Writing the landing days and the answer key (`_truth/`), one day in flight at a time."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ml.contract import EVENTS_FILE, PRODUCTS_FILE
from ml.synthetic.catalogue import Catalogue, build_catalogue
from ml.synthetic.config import GeneratorConfig, regime_of
from ml.synthetic.day import Day, simulate_day

TRUTH_DIR = "_truth"
_TRUTH_README = """\
Ground truth of the synthetic generator (ml/synthetic.py): the purchase probability each
session was drawn with and the exact next-view transition tables. For grading only: training,
features and models must never read this folder.
"""


@dataclass(frozen=True)
class GenerateResult:
    """What was written; `events` counts every row, duplicates and malformed included."""

    days: list[dt.date]
    events: int
    sessions: int
    malformed: int
    duplicates: int
    seconds: float
    out_dir: Path

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")


def generate(
    out_dir: Path,
    config: GeneratorConfig,
    progress: Callable[[str], None] | None = None,
) -> GenerateResult:
    """Write `config.days` landing days (and their truth) under `out_dir`; see `ml.synthetic`."""
    began = time.perf_counter()
    out_dir = Path(out_dir)
    cat = build_catalogue(config)
    days = [config.start + dt.timedelta(days=i) for i in range(config.days)]
    events = sessions = malformed = duplicates = 0
    # Writing (pyarrow, GIL released) overlaps with simulating the next day; one day in flight.
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending: Future[None] | None = None
        for index, day in enumerate(days):
            simulated = simulate_day(cat, config, index, day)
            if pending is not None:
                pending.result()
            pending = writer.submit(_write_day, out_dir, day, simulated, cat, config)
            n_rows = simulated.events.num_rows
            events += n_rows
            sessions += simulated.sessions
            malformed += simulated.malformed
            duplicates += simulated.duplicates
            if progress is not None:
                progress(f"{day.isoformat()}: {n_rows:,} events, {simulated.sessions:,} sessions")
        if pending is not None:
            pending.result()
    if config.write_truth and days:
        _write_transitions(out_dir / TRUTH_DIR, cat, {regime_of(day, config) for day in days})
    return GenerateResult(
        days=days,
        events=events,
        sessions=sessions,
        malformed=malformed,
        duplicates=duplicates,
        seconds=time.perf_counter() - began,
        out_dir=out_dir,
    )


def transitions_table(config: GeneratorConfig, regime: str) -> pa.Table:
    """The exact next-view distribution of a regime: from_sku, to_sku, probability."""
    return _transitions_table(build_catalogue(config), regime)


def _transitions_table(cat: Catalogue, regime: str) -> pa.Table:
    t = cat.transitions[regime]
    return pa.table(
        {
            "from_sku": cat.sku.take(pa.array(t.src)),
            "to_sku": cat.sku.take(pa.array(t.dst)),
            "probability": t.prob,
        }
    )


def _write_day(
    out_dir: Path, day: dt.date, simulated: Day, cat: Catalogue, config: GeneratorConfig
) -> None:
    folder = out_dir / day.isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    _write_csv(simulated.events, folder / EVENTS_FILE)
    _write_csv(cat.products[regime_of(day, config)], folder / PRODUCTS_FILE)
    if config.write_truth:
        truth = out_dir / TRUTH_DIR / day.isoformat()
        truth.mkdir(parents=True, exist_ok=True)
        _write_parquet(simulated.truth, truth / "sessions.parquet")


def _write_transitions(truth_dir: Path, cat: Catalogue, regimes: set[str]) -> None:
    truth_dir.mkdir(parents=True, exist_ok=True)
    (truth_dir / "README.txt").write_text(_TRUTH_README)
    for regime in sorted(regimes):
        _write_parquet(_transitions_table(cat, regime), truth_dir / f"transitions_{regime}.parquet")


def _write_csv(table: pa.Table, path: Path) -> None:
    """Write then rename, so a rewritten day never shows a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    pacsv.write_csv(table, tmp, pacsv.WriteOptions(quoting_style="none", quoting_header="none"))
    os.replace(tmp, path)


def _write_parquet(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
