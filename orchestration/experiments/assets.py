"""Online experiments in Dagster: what the server's champion/challenger traffic showed.

`experiment_results` reads the marts `experiment_sessions` and `experiment_exposures` (built
by dbt from the server's log, `serving_log`) and, per experiment and variant, shows sessions,
exposures, click-through, conversion, error rate and p99 latency, the challenger's lift over
the champion with always-valid intervals (and the fixed-horizon ones beside them), and a
sample-ratio check against the weights in force in each period. It decides nothing: each
problem's rollout controller (`rollout.py`) reads the same marts and decides. The statistics
are `ml.experiments`.
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
from ml import interleaving
from orchestration.experiments.replay import ASSET as REPLAY
from orchestration.experiments.replay import CLICKS, build_replay_asset
from orchestration.experiments.rollout import (
    EXPOSURES,
    PROBLEMS,
    SESSIONS,
    build_rollout_asset,
    float_or_null,
    read_marts,
)
from orchestration.policy import warehouse_asset
from orchestration.reports import write_run_report
from orchestration.sql import date_sql
from skiff.settings import Settings

GROUP = "experiments"
RESULTS = "experiment_results"
REPORT = "experiments/results.md"  # under the reports root (orchestration.reports)
SRM_CHECK = "sample_ratio_matches"


class ExperimentResultsConfig(Config):
    days: int = Field(default=0, description="Read the log of the last N days only; 0 = all.")
    alpha: float = Field(
        default=stats.ALPHA, description="1 - the level of the always-valid intervals."
    )
    srm_alpha: float = Field(
        default=stats.SRM_ALPHA, description="A sample-ratio p-value below this is a mismatch."
    )


def _pct(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2%}"


def _interval(row: dict, metric: str) -> str:
    lift = row.get(f"{metric}_lift")
    if lift is None or math.isnan(lift):
        return "-"
    low, high = row[f"{metric}_lift_low"], row[f"{metric}_lift_high"]
    return f"{lift:+.1%} ({low:+.1%} .. {high:+.1%}), p {row[f'{metric}_p_value']:.3g}"


def _ms(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.1f}"


def results_markdown(results: list[stats.ExperimentResult], alpha: float) -> str:
    """One section per experiment: its variants as a table and the sample-ratio check."""
    if not results:
        return "No exposures in the experiment marts yet: send traffic to `skiff serve`."
    level = f"{1 - alpha:.0%}"
    parts = []
    for r in results:
        lines = [
            "| variant | role | weight | sessions | exposures | CTR | conversion | errors "
            f"| p99 ms | CTR lift ({level} always valid) "
            f"| conversion lift ({level} always valid) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        for row in r.variants.to_dict("records"):
            lines.append(
                f"| {row['variant']} | {row.get('role') or '-'} | {row['weight']:.2f} "
                f"| {int(row['sessions']):,} | {int(row['exposures']):,} | {_pct(row.get('ctr'))} "
                f"| {_pct(row.get('conversion'))} | {_pct(row.get('error_rate'))} "
                f"| {_ms(row.get('p99_latency_ms'))} | {_interval(row, 'ctr')} "
                f"| {_interval(row, 'conversion')} |"
            )
        e = r.evidence
        parts.append(
            f"### {r.problem}: `{r.experiment}`\n\n{e.first_at} .. {e.last_at}; stage "
            f"{e.stage or '-'}; primary metric **{r.primary}**; {e.shadow_scores:,} shadow "
            "scores\n\n" + "\n".join(lines) + f"\n\nSample ratio (weights in force per "
            f"period): p {e.srm_p_value:.3g}"
        )
    parts.append("_The rollout controllers (`*_rollout`) decide on these numbers._")
    return "\n\n".join(parts)


def interleaving_markdown(found: dict[str, "interleaving.InterleavingResult"], alpha: float) -> str:
    """One row per interleaving experiment: sessions, wins, the preference and its decision."""
    if not found:
        return ""
    level = f"{1 - alpha:.0%}"
    lines = [
        "### Interleaving (team draft: one list from both models, clicks credited to the model "
        "that contributed the item)",
        "",
        "| experiment | sessions | challenger wins | champion wins | ties | challenger win rate "
        f"| preference ({level} always valid) | fixed-horizon | decision |",
        "|---|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for name, r in sorted(found.items()):
        lines.append(
            f"| `{name}` | {r.sessions:,} | {r.challenger_wins:,} | {r.champion_wins:,} "
            f"| {r.ties:,} | {_pct(r.win_rate)} | {r.preference:+.3f} ({r.low:+.3f} .. "
            f"{r.high:+.3f}), p {r.p_value:.3g} | {r.fixed_low:+.3f} .. {r.fixed_high:+.3f} "
            f"| **{r.decision}** |"
        )
    return "\n".join(lines)


def read_interleaved(warehouse, where: str) -> dict[str, "interleaving.InterleavingResult"]:
    """Per interleaving experiment, the sessions' preference (`ml.interleaving`), the one with
    the latest exposure last."""
    schema = warehouse.models_schema
    exposures = warehouse.query(
        "select experiment, session_id, exposure_id, items, teams, exposed_at"
        f" from {schema}.{EXPOSURES} where mode = 'interleaving' and teams is not null"
        f" and {where}"
    )
    if exposures.empty:
        return {}
    clicks = warehouse.query(
        f"select c.exposure_id, c.item from {schema}.{CLICKS} c inner join {schema}.{EXPOSURES}"
        f" e on c.exposure_id = e.exposure_id where e.mode = 'interleaving' and {where}"
    )
    order = exposures.groupby("experiment")["exposed_at"].max().sort_values().index
    grouped = dict(list(exposures.groupby("experiment")))
    return {
        str(name): interleaving.interleaving_result(
            interleaving.session_credits(grouped[name], clicks)
        )
        for name in order
    }


def _since(days: int) -> str | None:
    """The first day read as SQL (None: all)."""
    if days <= 0:
        return None
    return date_sql(dt.datetime.now(dt.UTC).date() - dt.timedelta(days=days - 1))


def _read(warehouse, days: int):
    first = _since(days)
    if first is None:
        return read_marts(warehouse, "true", "true")
    return read_marts(warehouse, f"first_at >= {first}", f"exposed_at >= {first}")


def build_experiment_assets(settings: Settings) -> list[AssetsDefinition]:
    @warehouse_asset(
        name=RESULTS,
        group_name=GROUP,
        deps=[SESSIONS, EXPOSURES, CLICKS],
        kinds={"python"},
        check_specs=[
            AssetCheckSpec(
                SRM_CHECK,
                asset=RESULTS,
                description="Sessions per variant match the traffic weights in force in each "
                "period (chi-square); a mismatch means broken assignment or logging.",
            )
        ],
        description="Per experiment and variant of the server's traffic: exposures, "
        "click-through, conversion, errors, p99 latency, lift with always-valid intervals and "
        "a sample-ratio check, from the experiment marts. Decides nothing (see *_rollout).",
    )
    def experiment_results(context: AssetExecutionContext, config: ExperimentResultsConfig):
        warehouse = context.resources.warehouse
        sessions, exposures = _read(warehouse, config.days)
        # an interleaving experiment's variants are no A/B arms: its sessions are read apart
        sessions = sessions[sessions["mode"] != "interleaving"]
        exposures = exposures[exposures["mode"] != "interleaving"]
        shadows = exposures[exposures["shadow_scored"].astype(bool)]
        results = stats.experiment_results(
            sessions,
            exposures,
            alpha=config.alpha,
            shadow_scores=shadows.groupby("experiment").size().to_dict(),
        )
        since = _since(config.days)
        interleaved = read_interleaved(warehouse, f"exposed_at >= {since}" if since else "true")
        markdown = results_markdown(results, config.alpha)
        if interleaved:
            markdown += "\n\n" + interleaving_markdown(interleaved, config.alpha)
        url = write_run_report(settings, REPORT, context.run_id, markdown + "\n")
        context.log.info(
            f"{len(sessions):,} sessions, {len(exposures):,} exposures, {len(results)} experiments"
        )
        metadata: dict = {
            "results": MetadataValue.md(markdown),
            "sessions": len(sessions),
            "exposures": len(exposures),
            "experiments": len(results),
            "report": MetadataValue.url(url),
        }
        latest: dict[str, stats.ExperimentResult] = {}
        for r in results:
            if r.problem not in latest or r.evidence.last_at > latest[r.problem].evidence.last_at:
                latest[r.problem] = r
        for problem, r in sorted(latest.items()):
            primary = r.evidence.comparisons[r.primary]
            metadata[f"{problem}_experiment"] = MetadataValue.text(r.experiment)
            metadata[f"{problem}_stage"] = MetadataValue.text(r.evidence.stage or "-")
            metadata[f"{problem}_sessions"] = int(r.variants["sessions"].sum())
            metadata[f"{problem}_srm_p_value"] = float_or_null(r.evidence.srm_p_value)
            metadata[f"{problem}_{r.primary}_difference"] = float_or_null(primary.absolute)
            metadata[f"{problem}_{r.primary}_difference_low"] = float_or_null(primary.low)
            metadata[f"{problem}_{r.primary}_difference_high"] = float_or_null(primary.high)
        if interleaved:  # the running one: the experiment with the latest exposure
            name, r = list(interleaved.items())[-1]
            metadata["interleaving_experiment"] = MetadataValue.text(name)
            metadata["interleaving_sessions"] = r.sessions
            metadata["interleaving_preference"] = float_or_null(r.preference)
            metadata["interleaving_preference_low"] = float_or_null(r.low)
            metadata["interleaving_preference_high"] = float_or_null(r.high)
            metadata["interleaving_decision"] = MetadataValue.text(r.decision)
        yield MaterializeResult(metadata=metadata)

        # the running experiment of each problem: a finished one's mismatch is history
        p_values = {r.experiment: r.evidence.srm_p_value for r in latest.values()}
        mismatched = {k: p for k, p in p_values.items() if p < config.srm_alpha}
        known = [p for p in p_values.values() if not math.isnan(p)]
        yield AssetCheckResult(
            check_name=SRM_CHECK,
            passed=not mismatched,
            severity=AssetCheckSeverity.ERROR,
            description="; ".join(f"{k}: p {p:.2g}" for k, p in mismatched.items())
            or f"{len(known)} experiments with traffic split checked",
            metadata={
                "smallest_p_value": float_or_null(min(known)) if known else float_or_null(math.nan),
                "alpha": config.srm_alpha,
                "mismatched": len(mismatched),
            },
        )

    # One after the other: both rewrite the server's experiments.json, each its own entry.
    conversion, recommender = PROBLEMS
    return [
        experiment_results,
        build_rollout_asset(settings, conversion, [RESULTS]),
        build_replay_asset(settings),
        build_rollout_asset(settings, recommender, [RESULTS, f"{conversion}_rollout", REPLAY]),
    ]
