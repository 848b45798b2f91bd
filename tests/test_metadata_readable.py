"""Metadata a person reads: numbers in markdown tables rounded (the full value stays in numeric
metadata), columns in reading order whatever order the records came in, every slice in sight."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from orchestration.conversion.leaderboard import (
    CALIBRATION_COLUMNS,
    calibration_markdown,
    slices_markdown,
)
from orchestration.markdown import markdown_table, number

# a number in a table cell: at most four decimals
TOO_PRECISE = re.compile(r"\d\.\d{5,}")


def unreadable_numbers(markdown: str) -> list[str]:
    """The cells of the markdown tables in `markdown` that carry more than four decimals."""
    cells = []
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells += [c.strip() for c in line.strip("|").split("|") if TOO_PRECISE.search(c)]
    return cells


def header(markdown: str, first_cell: str) -> list[str]:
    """The column names of the table whose first column is `first_cell`."""
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table starting with {first_cell!r} in:\n{markdown}")


def test_numbers_are_rounded_for_reading():
    assert number(0.0678248859819702) == "0.0678"
    assert number(np.float32(0.0678248859819702)) == "0.0678"  # numpy scalars too
    assert number(4.11349) == "4.113" and number(42.1813) == "42.18"
    assert number(12867.0) == "12,867" and number(np.int64(2607)) == "2,607"
    assert number(math.nan) == "-" and number(True) == "True" and number("2-3") == "2-3"


def test_calibration_columns_in_reading_order_whatever_the_records_order():
    records = [
        {"observed": 0.01, "p_max": 0.2, "bin": 1, "n": 10, "p_min": 0.01234567, "predicted": 0.1},
        {"observed": 0.3, "p_max": 0.9, "bin": 2, "n": 10, "p_min": 0.2, "predicted": 0.5},
    ]
    table = calibration_markdown(pd.DataFrame(records))
    assert header(table, "bin") == list(CALIBRATION_COLUMNS)
    assert "| 1 | 10 | 0.0123 | 0.2000 |" in table
    assert not unreadable_numbers(table)


def test_slices_put_the_slice_first_and_counts_as_whole_numbers():
    scores = {"roc_auc": 0.81234567, "pr_auc": 0.1, "log_loss": 0.2, "brier": 0.03, "f1": 0.2}
    scores |= {"precision": 0.1, "recall": 0.3, "ece": 0.0123456, "threshold": 0.10596822}
    slices = pd.DataFrame(
        [
            {"slice": "16+", **scores, "positive_rate": 0.15, "n": 235.0, "kind": "prefix_length"},
            {"slice": "2026-01-12", **scores, "positive_rate": 0.04, "n": 2607.0, "kind": "day"},
        ]
    )
    table = slices_markdown(slices)
    assert header(table, "prefix length")[:3] == ["prefix length", "n", "positive_rate"]
    assert header(table, "day")[0] == "day"
    assert "| 16+ | 235 |" in table and "| 2026-01-12 | 2,607 |" in table
    assert "threshold 0.1060" in table
    assert max(len(header(table, "day")), len(header(table, "prefix length"))) <= 8
    assert not unreadable_numbers(table)


def test_markdown_table_names_a_missing_column():
    with pytest.raises(KeyError, match=r"\['b'\]"):
        markdown_table(pd.DataFrame({"a": [1.0]}), ["a", "b"])
