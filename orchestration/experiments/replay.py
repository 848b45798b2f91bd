"""Test before traffic: `recommender_replay`, off-policy estimates of how the challenger (and
the champion, and any version named in the config) would do on the champion's logged traffic.

One partition is one UTC log day, like `serving_log`. For each logging version (the champion
that served the day's exposures) and each target version, `ml.offpolicy.replay` computes IPS,
SNIPS, the direct method and the doubly robust estimate of click-through per exposure, each
with a session-clustered interval and its effective sample size, beside the logging version's
own click-through on its non-explored exposures (estimator `logged`). Rows go to the table
`recommender_replay` (a rerun replaces the day).

Decisions:
- Logged traffic is the exposures answered by the champion role in A/B mode (interleaved and
  failed answers are not a policy's list). The server logs each shown item's propensity under
  its exploration (`ml.offpolicy.Exploration`); without exploration every propensity is 1 and
  only positions where the target agrees with the champion count.
- The direct method's click model is learned offline: next-view probabilities from the
  `transition_days` latest days of `session_sequences` (the sessions the models train on),
  the attraction curve fitted on the day's log. Its interval is conditional on that model.
- The replay gate (`ml.release`, first stage) reads these rows through `read_replay`: the
  challenger's estimate over the days replayed (weighted by exposures) beside the champion's
  logged clicks per exposure on the same days.
"""

import datetime as dt
import math
import statistics
from contextlib import ExitStack
from typing import Any

import pandas as pd
from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    BackfillPolicy,
    Config,
    MaterializeResult,
    MetadataValue,
)
from pydantic import Field

from ml import release
from ml.offpolicy import ESTIMATORS
from orchestration.experiments.log import serving_log_partitions
from orchestration.partitions import partition_days
from orchestration.policy import warehouse_asset
from orchestration.sql import date_sql, text_sql
from skiff.settings import Settings

ASSET = TABLE = "recommender_replay"
GROUP = "experiments"
PROBLEM = "recommender"
EXPOSURES, CLICKS = "experiment_exposures", "experiment_clicks"
LOGGED = "logged"
ALPHA = 0.05  # every interval is a 95% one; the gate compares its upper bound
COLUMNS = {
    "log_day": "date",
    "logging_version": "varchar",
    "target_version": "varchar",
    "target_role": "varchar",
    "estimator": "varchar",
    "value": "double",
    "low": "double",
    "high": "double",
    "ess": "double",
    "exposures": "bigint",
    "sessions": "bigint",
    "matched": "bigint",
}


class ReplayConfig(Config):
    transition_days: int = Field(
        default=14,
        description="Latest days of session_sequences the direct method's next-view model "
        "learns from.",
    )
    versions: list[str] = Field(
        default=[],
        description="Registered recommender versions to estimate besides the champion and "
        "the challenger (e.g. the candidates of the latest training run).",
    )


def _transition_sessions(warehouse: Any, days: int) -> list[list[str]]:
    """The latest `days` days of session_sequences (none when the mart is not built yet)."""
    if not warehouse.exists("session_sequences", schema=warehouse.models_schema):
        return []
    table = f"{warehouse.models_schema}.session_sequences"
    latest = warehouse.query(f"select max(session_day) as day from {table}")["day"].iloc[0]
    if latest is None or pd.isna(latest):
        return []
    first = dt.date.fromisoformat(str(latest)[:10]) - dt.timedelta(days=days - 1)
    frame = warehouse.query(
        f"select product_skus from {table} where session_day >= {date_sql(first)}"
        " order by first_view_at, session_key"
    )
    return [s.split(" ") for s in frame["product_skus"] if s]


def _logged(warehouse: Any, day: dt.date) -> tuple[pd.DataFrame, pd.DataFrame]:
    schema = warehouse.models_schema
    exposures = warehouse.query(
        "select exposure_id, session_id, problem, mode, error, explored, items, context,"
        f" propensities, role, model_version from {schema}.{EXPOSURES}"
        f" where problem = {text_sql(PROBLEM)} and role = 'champion'"
        f" and log_day = {date_sql(day)}"
    )
    clicks = warehouse.query(
        f"select c.exposure_id, c.item from {schema}.{CLICKS} c"
        f" inner join {schema}.{EXPOSURES} e on c.exposure_id = e.exposure_id"
        f" where e.log_day = {date_sql(day)} and e.problem = {text_sql(PROBLEM)}"
    )
    return exposures, clicks


def _targets(registry: Any, extra: list[str]) -> dict[str, str]:
    """version -> its role now (champion, challenger or candidate), champion first."""
    roles = registry.roles(PROBLEM)
    out = {v: r for r, v in sorted(roles.items()) if r in ("champion", "challenger")}
    for version in extra:
        out.setdefault(version, "candidate")
    return dict(sorted(out.items(), key=lambda item: item[1] != "champion"))


def _rows(day, logging_version, target, role, estimates) -> list[dict]:
    return [
        {
            "log_day": day,
            "logging_version": logging_version,
            "target_version": target,
            "target_role": role,
            "estimator": e.estimator,
            "value": e.value,
            "low": e.low,
            "high": e.high,
            "ess": e.ess,
            "exposures": e.exposures,
            "sessions": e.sessions,
            "matched": e.matched,
        }
        for e in estimates
    ]


def _num(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.4f}"


def replay_markdown(frame: pd.DataFrame) -> str:
    """One row per (logging version, target): each estimator's value over the run's days
    (`combine_days`), DR's interval, effective sample size and exposures."""
    if frame.empty:
        return "No logged champion exposures with propensities in these days."
    lines = [
        "| logged by | target | role | logged CTR | IPS | SNIPS | DM | DR (interval) | ESS (DR) "
        "| exposures |",
        "|---|---|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for (logging, target), rows in frame.groupby(["logging_version", "target_version"], sort=False):
        if rows["target_role"].iloc[0] == "logging":
            continue
        combined = {e: combine_days(rows[rows["estimator"] == e]) for e in ESTIMATORS}
        logged = combine_days(
            frame[(frame["logging_version"] == logging) & (frame["estimator"] == LOGGED)]
        )
        dr = combined["dr"]
        lines.append(
            f"| `{logging}` | `{target}` | {rows['target_role'].iloc[0]} | {_num(logged[0])} "
            + " ".join(f"| {_num(combined[e][0])}" for e in ("ips", "snips", "dm"))
            + f" | {_num(dr[0])} ({_num(dr[1])} .. {_num(dr[2])}) "
            f"| {rows.loc[rows['estimator'] == 'dr', 'ess'].sum():,.0f} "
            f"| {int(rows.loc[rows['estimator'] == 'dr', 'exposures'].sum()):,} |"
        )
    return "\n".join(lines)


def combine_days(rows: pd.DataFrame) -> tuple[float, float, float, int]:
    """(value, low, high, exposures) of per-day estimates of clicks per exposure, combined as
    the estimate over all those exposures would be: each day weighted by its exposures, the
    variance sum_d n_d^2 var_d / N^2 (each day's variance from its interval's half width; a
    day without a finite interval adds no variance). Inverse-variance weights would be biased
    here: a day with a few heavily weighted clicks has both a higher value and a wider
    interval, so they would favour the low days."""
    rows = rows[rows["value"].notna() & (rows["exposures"] > 0)]
    if rows.empty:
        return math.nan, math.nan, math.nan, 0
    n = rows["exposures"].astype(float)
    total = float(n.sum())
    value = float((rows["value"] * n).sum() / total)
    z = statistics.NormalDist().inv_cdf(1 - ALPHA / 2)  # stdlib: scipy.stats costs 1.5 s to import
    variance = (((rows["high"] - rows["low"]) / (2 * z)) ** 2).fillna(0.0)
    half = z * math.sqrt(float((n**2 * variance).sum())) / total
    return value, value - half, value + half, int(total)


def ensure_table(warehouse: Any) -> None:
    """Create the table if it is missing (replacing no day inserts nothing)."""
    empty = pd.DataFrame(columns=list(COLUMNS))
    warehouse.replace_days(
        TABLE, "log_day", [], empty, columns=COLUMNS, schema=warehouse.models_schema
    )


def read_replay(
    warehouse: Any, champion: str, challenger: str, estimator: str = "dr"
) -> release.ReplayCheck | None:
    """The challenger's replay on the champion's logs, all days combined (None: no rows)."""
    ensure_table(warehouse)
    rows = warehouse.query(
        f"select * from {warehouse.models_schema}.{TABLE}"
        f" where logging_version = {text_sql(champion)}"
        f" and (target_version = {text_sql(challenger)} or estimator = '{LOGGED}')"
    )
    target = rows[(rows["target_version"] == challenger) & (rows["estimator"] == estimator)]
    if target.empty:
        return None
    value, low, high, exposures = combine_days(target)
    # the champion's own click-through on the same days' logs, not on every day it served
    logged = rows[(rows["estimator"] == LOGGED) & rows["log_day"].isin(set(target["log_day"]))]
    logged = combine_days(logged)
    days = sorted(str(d)[:10] for d in target["log_day"])
    return release.ReplayCheck(
        estimator=estimator,
        challenger=challenger,
        champion=champion,
        estimate=value,
        low=low,
        high=high,
        champion_ctr=logged[0],
        exposures=exposures,
        days=f"{days[0]} .. {days[-1]}",
    )


def build_replay_asset(settings: Settings) -> AssetsDefinition:
    @warehouse_asset(
        name=ASSET,
        group_name=GROUP,
        deps=[EXPOSURES, CLICKS, "session_sequences"],
        kinds={"python"},
        partitions_def=serving_log_partitions(settings),
        backfill_policy=BackfillPolicy.single_run(),
        description="Off-policy estimates (IPS, SNIPS, direct method, doubly robust) of the "
        "challenger's and champion's click-through on the champion's logged, explored traffic "
        "of each log day, with intervals and effective sample sizes; the replay gate reads them "
        "before a challenger's first stage.",
    )
    def recommender_replay(context: AssetExecutionContext, config: ReplayConfig):
        from ml import offpolicy
        from ml.recommend.models import Recommender
        from ml.registry import Registry

        warehouse = context.resources.warehouse
        registry = Registry(settings.registry)
        days = partition_days(context)
        targets = _targets(registry, list(config.versions))
        logs = {}
        for day in days:
            exposures, clicks = _logged(warehouse, day)
            for logging_version, group in exposures.groupby("model_version"):
                log = offpolicy.replay_log(group, clicks)
                if len(log):
                    logs[(day, str(logging_version))] = log
        transitions = None
        if logs and targets:
            sessions = _transition_sessions(warehouse, config.transition_days)
            transitions = offpolicy.TransitionModel.fit(sessions) if sessions else None
            if transitions is None:
                context.log.warning(
                    "session_sequences is empty or missing: no click model, so no DM or DR "
                    "(the replay gate reads DR by default)"
                )
            context.log.info(
                f"replaying {len(targets)} version(s) on {len(logs)} day(s) of logs; next-view "
                f"model from {len(sessions):,} sessions"
            )
        rows: list[dict] = []
        with ExitStack() as copies:  # remote copies removed once the replay is done
            models = {
                version: Recommender.load(copies.enter_context(registry.fetched(PROBLEM, version)))
                for version in (targets if logs else {})
            }
            for (day, logging_version), log in logs.items():
                model = None
                if transitions is not None and sum(map(sum, log["clicks"])):
                    model = offpolicy.fit_click_model(transitions, log)
                logged = offpolicy.logged_ctr(log)
                rows += _rows(day, logging_version, logging_version, "logging", [logged])
                for version, role in targets.items():
                    lists = offpolicy.target_lists(models[version].recommend_batch, log)
                    found = offpolicy.replay(log, lists, model, alpha=ALPHA)
                    rows += _rows(day, logging_version, version, role, found.values())
                fitted = (
                    f"; click model alpha {model.alpha:.2f}, eta {model.eta:.2f}, leave "
                    f"{model.leave:.2f}"
                    if model is not None
                    else ""
                )
                context.log.info(
                    f"{day}: {len(log):,} exposures logged by {logging_version} "
                    f"({int(log['explored'].sum()):,} explored), logged CTR {logged.value:.4f}"
                    + fitted
                )
        frame = pd.DataFrame(rows, columns=list(COLUMNS))
        warehouse.replace_days(
            TABLE, "log_day", days, frame, columns=COLUMNS, schema=warehouse.models_schema
        )
        shown = frame[frame["target_role"] != "logging"]
        metadata: dict = {
            "days": MetadataValue.text(f"{days[0]} .. {days[-1]}"),
            "replay": MetadataValue.md(replay_markdown(frame)),
            "dagster/row_count": len(frame),
            "versions": MetadataValue.json(targets),
        }
        roles = {r: v for v, r in targets.items()}
        for role in ("champion", "challenger"):
            picked = shown[
                (shown["target_version"] == roles.get(role)) & (shown["estimator"] == "dr")
            ]
            if len(picked):
                value = combine_days(picked)[0]
                metadata[f"{role}_dr_ctr"] = (
                    MetadataValue.float(value) if not math.isnan(value) else MetadataValue.null()
                )
        return MaterializeResult(metadata=metadata)

    return recommender_replay
