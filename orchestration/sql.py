"""SQL literals for days and text, portable between DuckDB and Snowflake (no bind parameters:
their syntax differs between the two). A day is parsed as a date first and quotes in text are
doubled, so nothing can be injected."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence


def date_sql(day: dt.date | str) -> str:
    """`cast('YYYY-MM-DD' as date)` for a date or an ISO date string."""
    return f"cast('{dt.date.fromisoformat(str(day)[:10]).isoformat()}' as date)"


def days_sql(days: Sequence[dt.date]) -> str:
    """A SQL list of date literals (`null` for no day, so `in (...)` stays valid)."""
    return ", ".join(date_sql(day) for day in days) or "null"


def text_sql(value: str) -> str:
    """A string literal: quotes doubled, as both dialects read them. A backslash is refused:
    Snowflake reads it as an escape, DuckDB does not, so no quoting suits both."""
    if "\\" in str(value):
        raise ValueError(f"text for SQL must not hold a backslash: {value!r}")
    return "'" + str(value).replace("'", "''") + "'"
