"""What every monitoring asset shares: its decorator (daily partitions, one run per day, the
group, its checks) and the way a day ends, graded.

Each asset saves its Evidently report as HTML through the store, at
`<reports_root>/monitoring/<asset>/<day>.html` (`orchestration.reports`: `$SKIFF_HOME/reports/` by
default, `$SKIFF_ARTIFACTS_URL/reports` in object storage), linked from the materialization (the
URL it is served at, and where it is stored). The report opens with Skiff's own banner: the
asset, the day, the model version and Skiff's verdict with its thresholds, and the share of
drifted columns at which Evidently's data-set line below calls the data set drifted (the
report's `dataset_share`, which every caller of `ml.monitoring.data_drift` names). The day is
graded with asset checks: WARN past a first threshold, ERROR past a second. The worst severity
is recorded as `severity` / `severity_level` metadata, which the drift sensor reads
(`monitoring/sensors.py`), and each check's graded value is quoted in `alerts`.

Every check is partitioned like its asset (Dagster's partitioned asset checks, a preview in
1.13): a day's result is recorded as that day's, so re-running one day never hides another's
warning. `worst_recent_day` adds, per asset, the worst severity of the `RECENT_DAYS` days ending
with the day graded, and names the day(s): a warning on an earlier day stays in sight behind a
later pass.
"""

import datetime as dt
import html
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetRecordsFilter,
    MaterializeResult,
    MetadataValue,
    PartitionsDefinition,
    PreviewWarning,
)

from orchestration.monitoring.config import GROUP
from orchestration.policy import warehouse_asset
from skiff.settings import Settings

SUMMARY_CHECK = "worst_recent_day"
# The window of the summary check: a week, so a weekday's warning stays in sight all week.
RECENT_DAYS = 7


def monitoring_asset(
    name: str,
    partitions: PartitionsDefinition,
    *,
    deps: list[AssetKey],
    checks: dict[str, str],
    description: str,
):
    summary = (
        f"The worst severity of this asset's last {RECENT_DAYS} days, ending with the day "
        "graded, and which day it was: WARN when any of them warned or failed (that day's own "
        "checks carry its ERROR)."
    )
    with warnings.catch_warnings():
        # partitioned checks are what ties a result to its day; the preview is deliberate
        warnings.simplefilter("ignore", PreviewWarning)
        specs = [
            AssetCheckSpec(check, asset=name, description=text, partitions_def=partitions)
            for check, text in {**checks, SUMMARY_CHECK: summary}.items()
        ]
    return warehouse_asset(
        name=name,
        deps=deps,
        group_name=GROUP,
        partitions_def=partitions,
        kinds={"evidently", "python"},
        check_specs=specs,
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
    model_version: str | None = None,
) -> Iterator[MaterializeResult | AssetCheckResult]:
    """Save the day's report under Skiff's banner, log `summary(worst severity)`, record the
    materialization (what the drift sensor reads, the report's links, then the asset's own
    `metadata`), one check result per grade and the `worst_recent_day` summary.

    `model_version` is the version graded against (default: the `model_version` or
    `champion_version` entry of `metadata`), named in the report's banner."""
    from ml.monitoring import level, worst
    from orchestration.reports import report_location, write_report

    severity = worst(*(g.severity for g in grades))
    version = model_version or _text(
        metadata.get("model_version", metadata.get("champion_version"))
    )
    relpath = report_relpath(asset_name, day)
    page = report.snapshot.get_html_str(as_iframe=False)
    url = write_report(
        settings,
        relpath,
        with_banner(page, banner_html(asset_name, day, version, severity, grades, report)),
    )
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
            description=f"{day}: {g.description}",
            metadata={"day": day.isoformat(), "severity": g.severity, **g.metadata},
        )
    yield worst_recent_day(context, asset_name, day, severity)


def _text(value: Any) -> str | None:
    """The text of a metadata entry given as a MetadataValue or as plain text."""
    value = getattr(value, "value", value)
    return None if value is None else str(value)


def recent_severities(
    context: AssetExecutionContext, asset_name: str, day: dt.date
) -> dict[dt.date, str]:
    """The recorded severity of each of the RECENT_DAYS days ending before `day` that has a
    materialization (its latest one)."""
    found = {}
    for back in range(1, RECENT_DAYS):
        earlier = day - dt.timedelta(days=back)
        records = context.instance.fetch_materializations(
            AssetRecordsFilter(
                asset_key=AssetKey(asset_name), asset_partitions=[earlier.isoformat()]
            ),
            limit=1,
        ).records
        if records:
            recorded = _text(records[0].asset_materialization.metadata.get("severity"))
            if recorded is not None:
                found[earlier] = recorded
    return found


def worst_recent_day(
    context: AssetExecutionContext, asset_name: str, day: dt.date, severity: str
) -> AssetCheckResult:
    """The summary check: the worst severity of the RECENT_DAYS days ending with `day` (the
    day's own, `severity`, beside the others' recorded ones) and the day(s) it was seen on."""
    days = {**recent_severities(context, asset_name, day), day: severity}
    return summary_check(asset_name, day, days)


def summary_check(
    asset_name: str, day: dt.date, days: dict[dt.date, str], what: str = "graded"
) -> AssetCheckResult:
    """`worst_recent_day` of `asset_name` from each day's severity (`days`, within the
    RECENT_DAYS days ending with `day`): the worst and the day(s) it was seen on, failing at
    WARN (a day's own check carries its ERROR). Ingestion's summary uses it too."""
    from ml.monitoring import SEVERITIES, level, worst

    worst_severity = worst(*days.values())
    worst_days = sorted(d for d, s in days.items() if s == worst_severity)
    first = day - dt.timedelta(days=RECENT_DAYS - 1)
    counts = ", ".join(f"{sum(s == name for s in days.values())} {name}" for name in SEVERITIES)
    where = ", ".join(d.isoformat() for d in worst_days)
    return AssetCheckResult(
        asset_key=asset_name,
        check_name=SUMMARY_CHECK,
        passed=worst_severity == "ok",
        severity=AssetCheckSeverity.WARN,
        description=(
            f"{first} .. {day} ({len(days)} of {RECENT_DAYS} days {what}: {counts}): "
            + (f"worst {worst_severity} on {where}" if worst_severity != "ok" else "all ok")
        ),
        metadata={
            "day": day.isoformat(),
            "window": f"{first} .. {day}",
            "worst_severity": worst_severity,
            "worst_severity_level": level(worst_severity),
            "worst_day": worst_days[-1].isoformat(),
            "worst_days": where,
            "days_graded": len(days),
        },
    )


def banner_html(
    asset_name: str,
    day: dt.date,
    version: str | None,
    severity: str,
    grades: Sequence[Grade],
    report: Any,
) -> str:
    """Skiff's banner over the Evidently report: what was graded, against which model, with
    Skiff's thresholds. Evidently's own widgets follow it unchanged."""
    e = html.escape
    checks = "".join(
        f"<li><b>{e(g.check)}</b>: {e(g.severity)} &mdash; {e(g.description)}</li>" for g in grades
    )
    columns = getattr(report, "columns", None)
    drift_rules = ""
    if columns is not None and len(columns):
        pairs = sorted(
            {
                (str(m), float(t))
                for m, t in zip(columns["method"], columns["threshold"], strict=True)
            }
        )
        share = getattr(report, "dataset_share", math.nan)
        dataset = (
            f" Evidently's data-set line below calls the data set drifted when its drifted "
            f"columns reach a share of {share:g} ({len(columns)} "
            f"column{'s' if len(columns) > 1 else ''} in all): Skiff's share for this report."
            if not math.isnan(share)
            else ""
        )
        drift_rules = (
            "<p>Skiff's column thresholds: a column drifts when its distance reaches "
            + ", ".join(f"{e(m)} &ge; {t:g}" for m, t in pairs)
            + f".{dataset} Skiff grades the day by the checks above.</p>"
        )
    return (
        '<div id="skiff-banner" style="font-family:sans-serif;margin:16px 24px;padding:12px 16px;'
        'border:1px solid #ccc;border-radius:6px;background:#f7f7f9">'
        f'<h2 style="margin:0 0 8px">{e(asset_name)} &mdash; {e(day.isoformat())}</h2>'
        f"<p>Model version <code>{e(version or 'unknown')}</code>. Skiff's verdict for the day: "
        f"<b>{e(severity)}</b>.</p>"
        f"<ul>{checks}</ul>{drift_rules}</div>"
    )


def with_banner(page: str, banner: str) -> str:
    """`page` (a whole HTML document) with `banner` first in its body."""
    head, found, rest = page.partition("<body>")
    if not found:
        return banner + page
    return head + found + banner + rest
