"""What every monitoring asset shares: its decorator (daily partitions, one run per day, the
group, its checks) and the way a day ends, graded.

Each asset saves its Evidently report as HTML through the store, at
`<reports_root>/monitoring/<asset>/<day>.html` (`orchestration.reports`: `$SKIFF_HOME/reports/` by
default, `$SKIFF_ARTIFACTS_URL/reports` in object storage), linked from the materialization (the
URL it is served at, and where it is stored), and grades the
day with asset checks: WARN past a first threshold, ERROR past a second. The worst severity is
recorded as `severity` / `severity_level` metadata, which the drift sensor reads
(`monitoring/sensors.py`), and each check's graded value is quoted in `alerts`.
"""

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    MaterializeResult,
    MetadataValue,
    PartitionsDefinition,
)

from orchestration.monitoring.config import GROUP
from orchestration.policy import warehouse_asset
from skiff.settings import Settings


def monitoring_asset(
    name: str,
    partitions: PartitionsDefinition,
    *,
    deps: list[AssetKey],
    checks: dict[str, str],
    description: str,
):
    return warehouse_asset(
        name=name,
        deps=deps,
        group_name=GROUP,
        partitions_def=partitions,
        kinds={"evidently", "python"},
        check_specs=[
            AssetCheckSpec(check, asset=name, description=text) for check, text in checks.items()
        ],
        description=description,
    )


def report_relpath(asset_name: str, day: dt.date) -> str:
    """The day's report under the reports root."""
    return f"monitoring/{asset_name}/{day.isoformat()}.html"


@dataclass(frozen=True)
class Grade:
    """One check's verdict on the day."""

    check: str
    severity: str  # ok, warn or error (ml.monitoring.grade)
    value: float  # what was graded
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


def graded_day(
    context: AssetExecutionContext,
    settings: Settings,
    asset_name: str,
    day: dt.date,
    *,
    report: Any,
    grades: Sequence[Grade],
    summary: Callable[[str], str],
    metadata: dict[str, Any],
) -> Iterator[MaterializeResult | AssetCheckResult]:
    """Save the day's report, log `summary(worst severity)`, record the materialization (what
    the drift sensor reads, the report's links, then the asset's own `metadata`) and one check
    result per grade."""
    from ml.monitoring import level, worst
    from orchestration.reports import report_location, write_report

    relpath = report_relpath(asset_name, day)
    url = write_report(settings, relpath, report.snapshot.get_html_str(as_iframe=False))
    severity = worst(*(g.severity for g in grades))
    context.log.info(f"{day}: {summary(severity)}")
    alerts = ", ".join(f"{g.check}={g.value:.3f} ({g.severity})" for g in grades)
    yield MaterializeResult(
        metadata={
            "day": MetadataValue.text(day.isoformat()),
            "severity": MetadataValue.text(severity),
            "alerts": MetadataValue.text(alerts),
            "severity_level": level(severity),
            "report": MetadataValue.url(url),
            "report_path": MetadataValue.path(report_location(settings, relpath)),
            **metadata,
        }
    )
    for g in grades:
        yield AssetCheckResult(
            asset_key=asset_name,
            check_name=g.check,
            passed=g.severity == "ok",
            severity=AssetCheckSeverity.ERROR if g.severity == "error" else AssetCheckSeverity.WARN,
            description=g.description,
            metadata={"severity": g.severity, **g.metadata},
        )
