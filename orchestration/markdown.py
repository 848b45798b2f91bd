"""Markdown tables for the UI's metadata and the reports: one way to write a number for a
person to read, one way to lay out a table."""

import math
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any

import pandas as pd


def number(value: Any) -> str:
    """A number as a table shows it: whole numbers with separators, others with at most four
    decimals (fewer as they grow: 0.0678, 4.113, 42.18, 1,234); the full value stays in the
    numeric metadata beside the table."""
    if isinstance(value, bool) or not isinstance(value, Real):
        return str(value)
    if isinstance(value, Integral):
        return f"{int(value):,}"
    value = float(value)
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    size = abs(value)
    if size >= 1000 or (value.is_integer() and size >= 1):
        return f"{value:,.0f}"
    return f"{value:.{4 if size < 1 else 3 if size < 10 else 2}f}"


def markdown_table(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """`frame` as a markdown table, its `columns` (default: all) in that order, numbers
    rounded by `number` and right-aligned. A float column of whole numbers (counts that went
    through a float, e.g. after `fillna`) shows as whole numbers."""
    columns = list(columns or frame.columns)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"the table has no column(s) {missing}; it has {list(frame.columns)}")
    frame = frame[columns]
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) and frame[c].dtype != bool for c in columns]
    whole = [
        is_number
        and pd.api.types.is_float_dtype(frame[c])
        and bool(frame[c].dropna().map(float.is_integer).all())
        for c, is_number in zip(columns, numeric, strict=True)
    ]

    def cell(value: Any, as_whole: bool) -> str:
        if as_whole and isinstance(value, Real) and not math.isnan(value):
            return f"{int(value):,}"
        return number(value)

    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "".join("---:|" if n else "---|" for n in numeric),
    ]
    lines += [
        "| " + " | ".join(cell(v, w) for v, w in zip(row, whole, strict=True)) + " |"
        for row in frame.itertuples(index=False)
    ]
    return "\n".join(lines)


def reason_table(reasons: pd.Series, unit: str = "rows") -> str:
    """Counts by quarantine reason, most first, as a markdown table ("No <unit> was
    quarantined." when there are none): what ingestion and the serving log both show."""
    if not reasons.sum():
        return f"No {unit.rstrip('s')} was quarantined."
    counts = reasons.sort_values(ascending=False)
    frame = pd.DataFrame({"reason": [f"`{r}`" for r in counts.index], unit: counts.astype(int)})
    return markdown_table(frame.reset_index(drop=True))
