"""Daily partitions: UTC days from `settings.partitions_start` (SKIFF_PARTITIONS_START, else
the earliest landing day: docs/orchestration.md#partitions), shared by every partitioned asset;
the run tags that make one run cover a range of them."""

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


def partition_range_tags(first: dt.date, last: dt.date) -> dict[str, str]:
    """The run tags that make one run cover the daily partitions [first, last]."""
    # Dagster has no public API for running a partition range in process: execute_in_process and
    # materialize take a single partition_key (dagster-io/dagster#14905). These two tags are how
    # the UI's launchpad and the single-run backfill ask for a range, so they are spelled out
    # here rather than imported from the private dagster._core.storage.tags.
    return {
        "dagster/asset_partition_range_start": first.isoformat(),
        "dagster/asset_partition_range_end": last.isoformat(),
    }
