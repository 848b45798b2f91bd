"""Each problem's rollout controller: `conversion_rollout` and `recommender_rollout`.

One materialization is one look (the `release_hourly` schedule makes one an hour): read the
running experiment from the marts `experiment_sessions` and `experiment_exposures`, compute
its evidence (`ml.experiments.evidence`: always-valid intervals, stratified over the ramp's
periods, CUPED), let the policy decide (`ml.release.decide`: advance, hold, roll back or
promote) and carry it out (`ml.release.carry_out`: registry roles and history, and the
server's `experiments.json`, which it hot-reloads; under the registry lock, and not at all if
the release changed since the look read it). The policy is the asset's config; the stages,
minimums, guardrails and the final decision are documented in docs/release.md.

Checks: `<problem>_not_rolled_back` fails (ERROR) on a look that rolled the challenger back;
`<problem>_sample_ratio_matches` fails (ERROR) while the sessions per variant do not match the
weights in force (the controller then holds: no comparison can be trusted).
"""

import datetime as dt
import math
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetsDefinition,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
)
from pydantic import Field

from ml import experiments as stats
from ml import release
from orchestration.experiments.replay import read_replay
from orchestration.policy import warehouse_asset
from orchestration.sql import text_sql
from skiff.settings import Settings

GROUP = "experiments"
PROBLEMS = ("conversion", "recommender")
SESSIONS = "experiment_sessions"
EXPOSURES = "experiment_exposures"
ROLLED_BACK_CHECK = "not_rolled_back"
SRM_CHECK = "sample_ratio_matches"
DEFAULT = release.Policy()
REPLAY_ESTIMATORS = ("dr", "snips", "ips")  # what the replay gate may read


def rollout_name(problem: str) -> str:
    return f"{problem}_rollout"


class RolloutConfig(Config):
    """The rollout policy (`ml.release.Policy`); defaults are the production policy."""

    stages: list[str] = Field(
        default=[f"{s.name}:{s.traffic:g}" for s in DEFAULT.stages],
        description="`name:challenger share` in order, e.g. `shadow:0`, `1%:0.01`; the share "
        "rises strictly (0 = shadow); only the last stage may promote.",
    )
    min_sessions: int = Field(
        default=DEFAULT.min_sessions,
        description="Challenger sessions a stage needs before it may advance (shadow: scores).",
    )
    min_hours: float = Field(default=DEFAULT.min_hours, description="Hours each stage runs.")
    max_error_rate_increase: float = Field(
        default=DEFAULT.max_error_rate_increase,
        description="Roll back when the challenger's error rate exceeds the champion's by more.",
    )
    max_p99_latency_ratio: float = Field(
        default=DEFAULT.max_p99_latency_ratio,
        description="Roll back when the challenger's p99 latency exceeds the champion's x this",
    )
    latency_floor_ms: float = Field(
        default=DEFAULT.latency_floor_ms, description="... and this many ms."
    )
    min_exposures: int = Field(
        default=DEFAULT.min_exposures,
        description="Challenger exposures before the error-rate and latency guardrails count.",
    )
    metric_margin: float = Field(
        default=DEFAULT.metric_margin,
        description="Roll back when a metric is worse by more than this share of the "
        "champion's value (always-valid upper bound of the difference below -margin).",
    )
    decision: str = Field(
        default=DEFAULT.decision,
        description="superior: promote when the primary metric's always-valid lower bound is "
        "above 0; non_inferior: above -non_inferiority_margin x the champion's value.",
    )
    non_inferiority_margin: float = Field(default=DEFAULT.non_inferiority_margin)
    alpha: float = Field(default=DEFAULT.alpha, description="Of the always-valid intervals.")
    srm_alpha: float = Field(
        default=DEFAULT.srm_alpha, description="A sample-ratio p-value below this holds."
    )
    replay_gate: bool = Field(
        default=DEFAULT.replay_gate,
        description="Recommender: before leaving the first stage, the challenger's replay "
        "estimate (recommender_replay) must not fall below the champion's logged CTR less "
        "replay_margin.",
    )
    replay_margin: float = Field(default=DEFAULT.replay_margin)
    replay_min_exposures: int = Field(
        default=DEFAULT.replay_min_exposures,
        description="Logged champion exposures the replay must cover before it can pass.",
    )
    replay_estimator: str = Field(
        default="dr", description="The estimator the gate reads: dr, snips or ips."
    )
    n_star: int = Field(
        default=stats.N_STAR,
        description="Sessions per arm (at 50/50) where the always-valid intervals are tightest: "
        "the traffic a decision is expected to take. Smaller decides small effects later and "
        "large ones sooner; the intervals stay valid at any value.",
    )

    def policy(self) -> release.Policy:
        values = self.model_dump()
        values.pop("n_star")
        if values.pop("replay_estimator") not in REPLAY_ESTIMATORS:
            raise ValueError(
                f"replay_estimator must be one of {REPLAY_ESTIMATORS}, got "
                f"{self.replay_estimator!r}"
            )
        stages = []
        for text in values.pop("stages"):
            name, _, share = str(text).rpartition(":")
            try:
                stages.append({"name": name, "traffic": float(share)})
            except ValueError:
                raise ValueError(f"stage {text!r} is not `name:share` (e.g. `5%:0.05`)") from None
        return release.Policy.from_dict({**values, "stages": stages})


def read_marts(warehouse: Any, sessions_where: str, exposures_where: str) -> tuple[Any, Any]:
    """Rows of `experiment_sessions` and `experiment_exposures` (the columns the statistics
    read, `exposed_at` as `at`), each filtered by its `where` (SQL; "true" for all)."""
    schema = warehouse.models_schema
    sessions = warehouse.query(f"select * from {schema}.{SESSIONS} where {sessions_where}")
    exposures = warehouse.query(
        "select problem, experiment, stage, variant, role, latency_ms, error, shadow_scored,"
        f" mode, exposed_at as at from {schema}.{EXPOSURES} where {exposures_where}"
    )
    return sessions, exposures


def read_experiment(warehouse: Any, problem: str, experiment: str) -> tuple[Any, Any, int]:
    """The experiment's sessions and exposures from the marts, and its shadow scores."""
    where = f"problem = {text_sql(problem)} and experiment = {text_sql(experiment)}"
    sessions, exposures = read_marts(warehouse, where, where)
    return sessions, exposures, int(exposures["shadow_scored"].astype(bool).sum())


def float_or_null(value: float | None) -> MetadataValue:
    """Dagster's float metadata cannot hold NaN; an undefined value is shown as null."""
    return (
        MetadataValue.null()
        if value is None or math.isnan(value)
        else MetadataValue.float(float(value))
    )


def history_markdown(history: list[dict], limit: int = 12) -> str:
    """The latest role changes and ramp steps, newest last (times in UTC, to the second)."""
    lines = [
        "| at | version | role | stage | traffic | decided by | reason |",
        "|---|---|---|---|---:|---|---|",
    ]
    for entry in history[-limit:]:
        traffic = entry.get("traffic")
        lines.append(
            f"| {str(entry['at'])[:19].replace('T', ' ')} | `{entry['version']}` | {entry['role']} "
            f"| {entry.get('stage') or '-'} "
            f"| {'-' if traffic is None else f'{traffic:.0%}'} | {entry.get('decided_by') or '-'} "
            f"| {str(entry.get('reason') or '').replace('|', '/')} |"
        )
    return "\n".join(lines)


def decision_markdown(decision: release.Decision, evidence: "stats.Evidence | None") -> str:
    """The look as a table: stage, traffic, sessions, each metric's lift and each guardrail."""
    lines = [f"**{decision.action.upper()}** — {decision.reason}", ""]
    if evidence is not None:
        lines += [
            f"Experiment `{evidence.experiment}`, stage {evidence.stage or '-'}; sessions: "
            f"champion {evidence.control.sessions:,}, challenger {evidence.treatment.sessions:,} "
            f"({evidence.stage_sessions:,} in this stage); SRM p "
            f"{evidence.srm_p_value:.3g}",
            "",
            "| metric | champion | challenger | difference | always-valid interval "
            "| fixed-horizon interval | CUPED width |",
            "|---|---:|---:|---:|---|---|---:|",
        ]
        for name, c in evidence.comparisons.items():
            primary = " (primary)" if name == evidence.primary else ""
            lines.append(
                f"| {name}{primary} | {c.control:.4f} | {c.treatment:.4f} | {c.absolute:+.4f} "
                f"| {c.low:+.4f} .. {c.high:+.4f} | {c.fixed_low:+.4f} .. {c.fixed_high:+.4f} "
                f"| {c.width_ratio:.2f} |"
            )
    if decision.guardrails:
        lines += ["", "| guardrail | ok | value | threshold |", "|---|---|---:|---:|"]
        for g in decision.guardrails:
            lines.append(
                f"| {g.name} | {'yes' if g.ok else '**NO**'} | {g.value:.4g} | {g.threshold:.4g} |"
            )
    return "\n".join(lines)


def build_rollout_asset(settings: Settings, problem: str, deps: list[str]) -> AssetsDefinition:
    name = rollout_name(problem)

    @warehouse_asset(
        name=name,
        group_name=GROUP,
        deps=deps,
        kinds={"python"},
        check_specs=[
            AssetCheckSpec(
                ROLLED_BACK_CHECK,
                asset=name,
                description="Fails on a look that rolled the challenger back.",
            ),
            AssetCheckSpec(
                SRM_CHECK,
                asset=name,
                description="Sessions per variant match the weights in force in each period.",
            ),
        ],
        description=f"The {problem} rollout controller, one look per materialization: reads "
        "the running experiment from the marts and advances, holds, rolls back or promotes "
        "the challenger by the policy in its config; writes the server's experiments.json.",
    )
    def rollout(context: AssetExecutionContext, config: RolloutConfig):
        from ml.registry import Registry

        try:
            policy = config.policy()
        except ValueError as exc:  # a config a retry cannot mend
            raise Failure(description=f"rollout config: {exc}", allow_retries=False) from exc
        registry = Registry(settings.registry)
        published = str(settings.published)
        try:
            state = release.load_state(registry, problem)
        except release.ReleaseError as exc:  # roles changed by hand: a person must look
            raise Failure(description=str(exc), allow_retries=False) from exc
        if state is None:
            context.log.info(f"{problem}: no champion yet, nothing to roll out")
            yield MaterializeResult(metadata={"action": "hold", "reason": "no champion yet"})
            yield AssetCheckResult(check_name=ROLLED_BACK_CHECK, passed=True)
            yield AssetCheckResult(check_name=SRM_CHECK, passed=True)
            return
        evidence = None
        if state.challenger is not None:
            sessions, exposures, shadows = read_experiment(
                context.resources.warehouse, problem, state.experiment
            )
            evidence = stats.evidence(
                sessions,
                exposures,
                problem,
                state.experiment,
                alpha=policy.alpha,
                n_star=config.n_star,
                shadow_scores=shadows,
            )
        replay = None
        if state.challenger is not None and problem in release.REPLAY_PROBLEMS:
            replay = read_replay(
                context.resources.warehouse,
                state.champion,
                state.challenger,
                config.replay_estimator,
            )
        now = dt.datetime.now(dt.UTC)
        decided = release.decide(policy, state, evidence, now, replay)
        # under the registry lock: if an operator, a training run or another look changed the
        # state since it was read above, nothing is applied and `decision` is a hold saying so
        after, decision = release.carry_out(registry, published, state, decided, now=now)
        if decision is not decided:
            context.log.warning(f"{problem}: {decision.reason}")
        context.log.info(f"{problem}: {decision.action}: {decision.reason}")
        yield MaterializeResult(metadata=_metadata(state, after, decision, evidence, registry))
        yield AssetCheckResult(
            check_name=ROLLED_BACK_CHECK,
            passed=decision.action != "rollback",
            severity=AssetCheckSeverity.ERROR,
            description=decision.reason if decision.action == "rollback" else "no rollback",
        )
        srm_p = evidence.srm_p_value if evidence is not None else math.nan
        yield AssetCheckResult(
            check_name=SRM_CHECK,
            passed=not srm_p < policy.srm_alpha,
            severity=AssetCheckSeverity.ERROR,
            metadata={"p_value": float_or_null(srm_p), "alpha": policy.srm_alpha},
        )

    return rollout


def _metadata(
    before: release.RolloutState,
    after: release.RolloutState,
    decision: release.Decision,
    evidence: stats.Evidence | None,
    registry: Any,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "action": MetadataValue.text(decision.action),
        "reason": MetadataValue.text(decision.reason),
        "look": MetadataValue.md(decision_markdown(decision, evidence)),
        "champion": MetadataValue.text(after.champion),
        "challenger": MetadataValue.text(after.challenger or "none"),
        "stage": MetadataValue.text(after.stage_name or "champion alone"),
        "traffic": float(after.traffic),
        "stage_before": MetadataValue.text(before.stage_name or "champion alone"),
        "history": MetadataValue.md(history_markdown(registry.history(before.problem))),
    }
    if evidence is not None:
        primary = evidence.comparisons[evidence.primary]
        metadata |= {
            "sessions_champion": evidence.control.sessions,
            "sessions_challenger": evidence.treatment.sessions,
            "stage_sessions": evidence.stage_sessions,
            "lift": float_or_null(primary.absolute),
            "lift_low": float_or_null(primary.low),
            "lift_high": float_or_null(primary.high),
            "relative_lift": float_or_null(primary.relative),
            "srm_p_value": float_or_null(evidence.srm_p_value),
        }
    for g in decision.guardrails:  # the numbers for the Plots tab, the state as text
        metadata[f"guardrail_{g.name}"] = MetadataValue.text(
            f"{'ok' if g.ok else 'BREACHED'} ({g.value:.4g} vs {g.threshold:.4g})"
        )
        metadata[f"guardrail_{g.name}_value"] = float_or_null(g.value)
        metadata[f"guardrail_{g.name}_threshold"] = float_or_null(g.threshold)
    return metadata
