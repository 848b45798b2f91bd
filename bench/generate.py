"""Benchmark the synthetic generator end to end (simulate + write CSVs + truth).

Each size runs in a fresh process so its peak RSS is its own. Example:

    .venv/bin/python bench/generate.py --sizes 7x2000 30x50000
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml.synthetic import GeneratorConfig, generate


def _size(text: str) -> tuple[int, int]:
    days, _, sessions = text.lower().partition("x")
    return int(days), int(sessions)


def _run(days: int, sessions: int, truth: bool, queue: mp.Queue) -> None:
    with tempfile.TemporaryDirectory(prefix="skiff-bench-") as tmp:
        config = GeneratorConfig(days=days, sessions_per_day=sessions, write_truth=truth)
        result = generate(Path(tmp), config)
        size = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    queue.put((result.events, result.seconds, result.events_per_second, peak_mib, size))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=_size,
        default=[(7, 2000), (30, 10000), (30, 50000)],
        help="DAYSxSESSIONS_PER_DAY, e.g. 30x50000",
    )
    parser.add_argument("--no-truth", action="store_true", help="skip the _truth/ files")
    args = parser.parse_args()

    context = mp.get_context("spawn")
    header = ("size", "events", "seconds", "events/s", "peak RSS", "on disk")
    print("{:>10} {:>12} {:>8} {:>12} {:>11} {:>9}".format(*header))
    for days, sessions in args.sizes:
        queue = context.Queue()
        child = context.Process(target=_run, args=(days, sessions, not args.no_truth, queue))
        child.start()
        events, seconds, rate, peak_mib, size = queue.get()
        child.join()
        print(
            f"{f'{days}x{sessions}':>10} {events:>12,} {seconds:>8.2f} {rate:>12,.0f} "
            f"{peak_mib:>7,.0f} MiB {size / 2**20:>5,.0f} MiB"
        )


if __name__ == "__main__":
    main()
