"""Daily partitions: UTC days from SKIFF_PARTITIONS_START, shared by every partitioned asset."""

from __future__ import annotations

import datetime as dt

from dagster import AssetExecutionContext, DailyPartitionsDefinition

from skiff.settings import Settings


def daily_partitions(settings: Settings) -> DailyPartitionsDefinition:
    return DailyPartitionsDefinition(
        start_date=settings.partitions_start.isoformat(), timezone="UTC"
    )


def partition_days(context: AssetExecutionContext) -> list[dt.date]:
    """The days of this run: one partition, or a whole range in a single-run backfill."""
    window = context.partition_time_window
    first, end = window.start.date(), window.end.date()
    return [first + dt.timedelta(days=i) for i in range((end - first).days)]
