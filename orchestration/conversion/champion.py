"""What the conversion champion does: the offline side of release by evidence (`ml.release`),
then the champion's purchase probabilities for every session prefix of each day.

`conversion_champion` never promotes. Without a champion it bootstraps one at once (a small
shop is served from day one, a baseline included); with one, the chosen candidate that passes
every gate and scores at least as well as the champion on the same test day is admitted as
challenger, and the rollout controller ramps it on live traffic. A challenger in its rollout is
not replaced by a newer candidate (the experiment would restart every night); an operator's
override (`challenger`) replaces it. Both roles are published for the server.
"""

import functools
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetsDefinition,
    BackfillPolicy,
    Failure,
    MaterializeResult,
    MetadataValue,
    PartitionsDefinition,
)

from ml.conversion import gates
from orchestration.conversion.config import (
    ALGORITHMS,
    BOOTSTRAP_MODES,
    CHAMPION,
    EVALUATION,
    EXAMPLES,
    GROUP,
    PREDICTION_COLUMNS,
    PREDICTIONS,
    PROBLEM,
    TRAINING_SET,
    ChampionConfig,
    split_frames,
)
from orchestration.handoff import Handoff
from orchestration.partitions import partition_days
from orchestration.policy import asset, warehouse_asset
from orchestration.sql import date_sql
from skiff.settings import Settings

Results = dict[str, dict[str, Any]]


def safety(evaluation: dict, results: Results, algorithm: str) -> gates.Gate:
    """The gates no model skips: leakage (one training set for all) and its own calibration."""
    leak_passed, leak_reason = evaluation["gates"]["no_leakage"]
    if not leak_passed:
        return False, f"no_leakage: {leak_reason}"
    limit = evaluation.get("max_calibration_error", gates.MAX_CALIBRATION_ERROR)
    passed, reason = gates.calibration_bounded(results[algorithm]["test"], limit)
    return passed, reason if passed else f"calibration_bounded: {reason}"


def first_champion(
    evaluation: dict, results: Results, mode: str
) -> tuple[str | None, str | None, str]:
    """Who serves a problem without a champion: (champion, challenger, reason), as algorithms.

    The chosen candidate qualifies when every gate passes (so it beats logistic regression);
    logistic regression when it passes leakage and calibration and beats the majority
    baseline's PR AUC. "best" takes the candidate first; "baseline" takes logistic regression
    first and admits a qualifying candidate as challenger at once."""
    best = evaluation["best"]
    failed = [f"{name}: {why}" for name, (ok, why) in evaluation["gates"].items() if not ok]
    logistic, majority = (
        results["logistic"]["test"]["pr_auc"],
        results["majority"]["test"]["pr_auc"],
    )
    safe, why = safety(evaluation, results, "logistic")
    beats = logistic > majority
    qualified = {
        best: (not failed, "; ".join(failed) or "every gate passed"),
        "logistic": (
            safe and beats,
            why
            if not safe
            else f"PR AUC {logistic:.4f} {'>' if beats else '<='} the majority "
            f"baseline's {majority:.4f}; {why}",
        ),
    }
    order = [best, "logistic"] if mode == "best" else ["logistic", best]
    champion = next((a for a in order if qualified[a][0]), None)
    challenger = (
        best if champion == "logistic" and mode == "baseline" and qualified[best][0] else None
    )
    return champion, challenger, "; ".join(f"{a}: {qualified[a][1]}" for a in order)


def _champion_metrics(context, registry, current, training_set: dict) -> dict[str, float] | None:
    """The current champion scored on this run's test day, so both face the same sessions."""
    from ml.conversion import dataset, features, metrics, models
    from ml.registry import ArtifactError

    try:
        with registry.fetched(PROBLEM, current.version) as folder:
            model = models.load_model(folder)
    except ArtifactError as exc:
        context.log.warning(f"current champion {current.version} unusable: {exc}")
        return None
    test = features.batch_from_frame(split_frames(training_set)["test"])
    return metrics.scores(
        dataset.labels(test.events),
        model.predict_proba(test),
        float(current.metrics.get("threshold", 0.5)),
    )


def _evidence(evaluation: dict, results: Results, algorithm: str, champion: dict | None) -> dict:
    test = results[algorithm]["test"]
    numbers = {
        "test_day": evaluation["test_day"],
        "algorithm": algorithm,
        **{m: float(test[m]) for m in ("pr_auc", "roc_auc", "ece")},
        "logistic_pr_auc": float(results["logistic"]["test"]["pr_auc"]),
    }
    if champion is not None:
        numbers["champion_pr_auc"] = float(champion["pr_auc"])
    return numbers


def build_champion_asset(settings: Settings) -> AssetsDefinition:
    @asset(
        name=CHAMPION,
        ins={"evaluation": AssetIn(EVALUATION)},
        # read from the run the evaluation names (`training_set_run`), not the latest: a
        # champion-only run must score the champion on the evaluation's own test day
        deps=[TRAINING_SET],
        group_name=GROUP,
        kinds={"python"},
        description="Release by evidence, offline side: bootstraps a first champion (the best "
        "model passing leakage and calibration, a baseline counts); otherwise admits the "
        "candidate that passes every gate and beats the champion on the same test day as "
        "challenger, for the rollout controller to ramp. Publishes both roles for the server.",
    )
    def conversion_champion(
        context: AssetExecutionContext,
        config: ChampionConfig,
        evaluation: dict,
    ) -> MaterializeResult:
        from ml import release
        from ml.registry import Registry

        if config.bootstrap not in BOOTSTRAP_MODES:
            raise Failure(
                description=f"bootstrap must be one of {BOOTSTRAP_MODES}, got {config.bootstrap!r}",
                allow_retries=False,
            )
        if config.challenger and config.challenger not in ALGORITHMS:
            raise Failure(
                description=f"challenger {config.challenger!r} is not a model; have {ALGORITHMS}",
                allow_retries=False,
            )
        results = evaluation["results"]  # the candidates this evaluation chose among
        registry = Registry(settings.registry)
        url = str(settings.published)
        before = registry.roles(PROBLEM)
        current = registry.role(PROBLEM, "champion")
        best, candidate = evaluation["best"], evaluation["version"]
        champion_metrics = None
        decided_by = "offline gates"

        admit = functools.partial(release.admit, registry, url, PROBLEM)

        def refuse(why: str):
            raise Failure(description=f"override refused: {why}", allow_retries=False)

        if config.challenger:
            name, decided_by = config.challenger, "operator/override"
            version = results[name]["version"]
            if current is None:
                refuse("no champion to challenge yet; materialize once without `challenger`")
            if version in before.values():
                refuse(f"{name} ({version}) is already the {PROBLEM} champion or challenger")
            passed, why = safety(evaluation, results, name)
            if not passed:
                refuse(f"{name} fails {why}")
            reason = f"operator override: {name} admitted without the 'better than' gates; {why}"
            admit(
                version,
                reason,
                decided_by=decided_by,
                evidence=_evidence(evaluation, results, name, None),
            )
            decision = "admitted as challenger (override)"
        elif current is None:
            first, second, why = first_champion(evaluation, results, config.bootstrap)
            if first is None:
                decision, reason = "no champion", f"nothing qualifies as first champion — {why}"
            else:
                decision, decided_by = "bootstrap", "bootstrap"
                reason = f"first champion ({config.bootstrap}): {first} — {why}"
                release.bootstrap(
                    registry,
                    url,
                    PROBLEM,
                    results[first]["version"],
                    reason,
                    evidence=_evidence(evaluation, results, first, None),
                )
            if second is not None:
                why = (
                    f"{second} passed every gate: {evaluation['gates']['beats_logistic_pr_auc'][1]}"
                )
                admit(
                    results[second]["version"],
                    why,
                    evidence=_evidence(evaluation, results, second, None),
                )
                decision += " + admitted as challenger"
        elif candidate in before.values():
            role = next(r for r, v in before.items() if v == candidate)
            decision, reason = "unchanged", f"{candidate} is already the {role}"
        else:
            training_set = Handoff(settings.handoff_root).load_recorded(
                evaluation.get("training_set_run"), TRAINING_SET, EVALUATION
            )
            champion_metrics = _champion_metrics(context, registry, current, training_set)
            versus = gates.at_least_as_good(evaluation["metrics"], champion_metrics)
            results_of_gates = {n: tuple(v) for n, v in evaluation["gates"].items()}
            admitted, reason = gates.promotion(results_of_gates, versus)
            rollout = release.load_state(registry, PROBLEM)
            if admitted and rollout.challenger is not None:
                admitted = False
                reason += (
                    f", but challenger {rollout.challenger} is still in its rollout (stage "
                    f"{rollout.stage_name}): the candidate waits for its promotion or rollback"
                )
            decision = "admitted as challenger" if admitted else "kept"
            if admitted:
                admit(
                    candidate,
                    reason,
                    evidence=_evidence(evaluation, results, best, champion_metrics),
                )
        context.log.info(f"{decision}: {reason}")
        roles = registry.roles(PROBLEM)
        champion = registry.role(PROBLEM, "champion")
        metadata: dict[str, Any] = {
            "decision": MetadataValue.text(decision),
            "promoted": roles.get("champion") != before.get("champion"),  # only a bootstrap
            "decided_by": MetadataValue.text(decided_by),
            "reason": MetadataValue.text(reason),
            "candidate_version": MetadataValue.text(candidate),
            "candidate_role": MetadataValue.text(
                next((r for r, v in roles.items() if v == candidate), "none")
            ),
            "champion_version": MetadataValue.text(roles.get("champion", "none")),
            "challenger_version": MetadataValue.text(roles.get("challenger", "none")),
            "test_day": MetadataValue.text(evaluation["test_day"]),
            "candidate_pr_auc": float(evaluation["metrics"]["pr_auc"]),
        }
        if champion_metrics is not None:
            metadata["champion_pr_auc"] = float(champion_metrics["pr_auc"])
        if champion is not None:
            metadata["champion_algorithm"] = MetadataValue.text(champion.algorithm)
        return MaterializeResult(metadata=metadata)

    return conversion_champion


def build_predictions_asset(
    settings: Settings, partitions_def: PartitionsDefinition
) -> AssetsDefinition:
    @warehouse_asset(
        name=PREDICTIONS,
        deps=[CHAMPION, EXAMPLES],
        group_name=GROUP,
        kinds={"python"},
        partitions_def=partitions_def,
        backfill_policy=BackfillPolicy.single_run(),
        description="The published champion's purchase probability for every session prefix "
        "of the day (conversion_examples rows), with the model version that scored it.",
    )
    def conversion_predictions(context: AssetExecutionContext) -> MaterializeResult:
        from ml.conversion import features, models
        from ml.registry import ArtifactError, published_copy

        try:
            with published_copy(settings.published, PROBLEM) as (manifest, folder):
                model = models.load_model(folder)
        except ArtifactError as exc:
            raise Failure(
                description=f"{exc}. Materialize {CHAMPION} (its gates must pass once) first.",
                allow_retries=False,
            ) from exc
        warehouse = context.resources.warehouse
        rows = 0
        for day in partition_days(context):
            frame = warehouse.query(
                f"select * from {warehouse.models_schema}.conversion_examples"
                f" where session_day = {date_sql(day)}"
            )
            batch = features.batch_from_frame(frame)
            scored = batch.events.assign(
                purchase_probability=model.predict_proba(batch),
                model_version=manifest.version,
                algorithm=manifest.algorithm,
            )
            warehouse.replace_days(
                PREDICTIONS,
                "session_day",
                [day],
                scored[list(PREDICTION_COLUMNS)],
                columns=PREDICTION_COLUMNS,
                schema=warehouse.models_schema,
            )
            context.log.info(f"{PREDICTIONS} {day}: {len(scored):,} prefixes scored")
            rows += len(scored)
        return MaterializeResult(
            metadata={
                "model_version": MetadataValue.text(manifest.version),
                "algorithm": MetadataValue.text(manifest.algorithm),
                "dagster/row_count": rows,
            }
        )

    return conversion_predictions
