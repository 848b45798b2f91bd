"""SQL literals for days, portable between DuckDB and Snowflake (no bind parameters: their
syntax differs between the two). A day is parsed as a date first, so nothing can be injected."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence


def date_sql(day: dt.date | str) -> str:
    """`cast('YYYY-MM-DD' as date)` for a date or an ISO date string."""
    return f"cast('{dt.date.fromisoformat(str(day)[:10]).isoformat()}' as date)"


def days_sql(days: Sequence[dt.date]) -> str:
    """A SQL list of date literals (`null` for no day, so `in (...)` stays valid)."""
    return ", ".join(date_sql(day) for day in days) or "null"
