"""Online experiments in Dagster: what the server's champion/challenger traffic showed.

`experiment_results` reads the server's event log (`$SKIFF_HOME/serving/events-*.jsonl`:
exposures, shadow scores and feedback) and, per experiment and variant, shows sessions,
exposures, click-through and conversion, the challenger's lift over the champion with
confidence intervals, a sample-ratio-mismatch check and a recommendation (promote, keep,
stop). It only recommends: the registry's roles still change only through the gates of the
model assets. The statistics are `ml.experiments`.
"""

import datetime as dt
import math

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetsDefinition,
    Config,
    MaterializeResult,
    MetadataValue,
)
from pydantic import Field

from ml import experiments as stats
from orchestration.policy import asset
from skiff.settings import Settings
from skiff.urls import report_url

GROUP = "experiments"
RESULTS = "experiment_results"
SRM_CHECK = "sample_ratio_matches"


class ExperimentResultsConfig(Config):
    days: int = Field(default=0, description="Read the log of the last N days only; 0 = all.")
    confidence: float = Field(default=stats.CONFIDENCE, description="Of the lift intervals.")
    min_sessions: int = Field(
        default=stats.MIN_SESSIONS,
        description="Sessions each variant needs before a recommendation other than keep.",
    )
    srm_alpha: float = Field(
        default=stats.SRM_ALPHA, description="A sample-ratio p-value below this is a mismatch."
    )


def _pct(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2%}"


def _interval(row, metric: str) -> str:
    lift = row.get(f"{metric}_lift")
    if lift is None or math.isnan(lift):
        return "-"
    low, high = row[f"{metric}_lift_low"], row[f"{metric}_lift_high"]
    return f"{lift:+.1%} ({low:+.1%} .. {high:+.1%}), p {row[f'{metric}_p_value']:.3g}"


def results_markdown(results: list[stats.ExperimentResult], confidence: float) -> str:
    """One section per experiment: its variants as a table, the SRM check, the decision."""
    if not results:
        return "No exposures in the serving log yet: send traffic to `skiff serve`."
    parts = []
    for r in results:
        header = (
            "| variant | role | weight | sessions | exposures | CTR | conversion "
            f"| CTR lift ({confidence:.0%} CI) | conversion lift ({confidence:.0%} CI) |"
        )
        lines = [header, "|---|---|---:|---:|---:|---:|---:|---|---|"]
        for row in r.variants.to_dict("records"):
            lines.append(
                f"| {row['variant']} | {row.get('role') or '-'} | {row['weight']:.2f} "
                f"| {int(row['sessions']):,} | {int(row['exposures']):,} | {_pct(row.get('ctr'))} "
                f"| {_pct(row.get('conversion'))} | {_interval(row, 'ctr')} "
                f"| {_interval(row, 'conversion')} |"
            )
        parts.append(
            f"### {r.problem}: `{r.experiment}`\n\n{r.first_at} .. {r.last_at}; primary metric "
            f"**{r.primary}**; {r.shadow_scores:,} shadow scores\n\n"
            + "\n".join(lines)
            + f"\n\nSample ratio: chi-square {r.srm_statistic:.2f}, p {r.srm_p_value:.3g}\n\n"
            f"**Recommendation: {r.decision.upper()}** — {r.reason}"
        )
    parts.append("_A recommendation only: champions change through the gates of the model assets._")
    return "\n\n".join(parts)


def build_experiment_assets(settings: Settings) -> list[AssetsDefinition]:
    log_folder = settings.home / "serving"
    report = settings.reports / "experiments" / "results.md"

    @asset(
        name=RESULTS,
        group_name=GROUP,
        deps=["conversion_champion", "recommender_champion"],
        kinds={"python"},
        check_specs=[
            AssetCheckSpec(
                SRM_CHECK,
                asset=RESULTS,
                description="Sessions per variant match the configured traffic weights "
                "(chi-square); a mismatch means broken assignment or logging.",
            )
        ],
        description="Per experiment and variant of the server's traffic: exposures, "
        "click-through, conversion, lift with confidence intervals, sample-ratio check and a "
        "recommendation (promote, keep, stop). Reads $SKIFF_HOME/serving/events-*.jsonl.",
    )
    def experiment_results(context: AssetExecutionContext, config: ExperimentResultsConfig):
        since = (
            dt.datetime.now(dt.UTC).date() - dt.timedelta(days=config.days - 1)
            if config.days > 0
            else None
        )
        log = stats.read_log(log_folder, since)
        results = stats.experiment_results(
            log,
            confidence=config.confidence,
            min_sessions=config.min_sessions,
            srm_alpha=config.srm_alpha,
        )
        orphans = int((~log.feedback["exposure_id"].isin(log.exposures["id"])).sum())
        markdown = results_markdown(results, config.confidence)
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(markdown + "\n")
        context.log.info(
            f"{len(log.exposures):,} exposures, {len(log.feedback):,} feedback "
            f"({orphans:,} without exposure), {log.bad_lines} unreadable lines, "
            f"{len(results)} experiments"
        )
        metadata: dict = {
            "results": MetadataValue.md(markdown),
            "exposures": len(log.exposures),
            "feedback": len(log.feedback),
            "feedback_without_exposure": orphans,
            "unreadable_lines": log.bad_lines,
            "log_files": log.files,
            "experiments": len(results),
            "report": MetadataValue.url(report_url(settings, report)),
        }
        latest: dict[str, stats.ExperimentResult] = {}
        for r in results:
            if r.problem not in latest or r.last_at > latest[r.problem].last_at:
                latest[r.problem] = r
        for problem, r in sorted(latest.items()):
            variants = r.variants.set_index("variant")
            challengers = [v for v in variants.index if variants.loc[v, "role"] != "champion"]
            metadata[f"{problem}_experiment"] = MetadataValue.text(r.experiment)
            metadata[f"{problem}_recommendation"] = MetadataValue.text(r.decision)
            metadata[f"{problem}_sessions"] = int(variants["sessions"].sum())
            metadata[f"{problem}_srm_p_value"] = _number(r.srm_p_value)
            if challengers and f"{r.primary}_lift" in variants:
                row = variants.loc[challengers[0]]
                metadata[f"{problem}_{r.primary}_lift"] = _number(row[f"{r.primary}_lift"])
                metadata[f"{problem}_{r.primary}_lift_low"] = _number(row[f"{r.primary}_lift_low"])
                metadata[f"{problem}_{r.primary}_lift_high"] = _number(
                    row[f"{r.primary}_lift_high"]
                )
        yield MaterializeResult(metadata=metadata)

        mismatched = [
            r for r in results if not math.isnan(r.srm_p_value) and r.srm_p_value < config.srm_alpha
        ]
        p_values = [r.srm_p_value for r in results if not math.isnan(r.srm_p_value)]
        yield AssetCheckResult(
            check_name=SRM_CHECK,
            passed=not mismatched,
            severity=AssetCheckSeverity.ERROR,
            description="; ".join(
                f"{r.problem} {r.experiment}: p {r.srm_p_value:.2g}" for r in mismatched
            )
            or f"{len(p_values)} experiments with traffic split checked",
            metadata={
                "smallest_p_value": _number(min(p_values)) if p_values else _number(math.nan),
                "alpha": config.srm_alpha,
                "mismatched": len(mismatched),
            },
        )

    return [experiment_results]


def _number(value: float) -> MetadataValue:
    """Dagster's float metadata cannot hold NaN; an undefined value is shown as null."""
    return (
        MetadataValue.null()
        if value is None or math.isnan(value)
        else MetadataValue.float(float(value))
    )
