"""What the conversion champion does: promotion through the gates (published for the server),
then the champion's purchase probabilities for every session prefix of each day."""

from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    BackfillPolicy,
    Failure,
    MaterializeResult,
    MetadataValue,
    PartitionsDefinition,
)

from ml.conversion import gates
from orchestration.conversion.config import (
    CHAMPION,
    EVALUATION,
    EXAMPLES,
    GROUP,
    PREDICTION_COLUMNS,
    PREDICTIONS,
    PROBLEM,
)
from orchestration.conversion.files import evaluation_path, read_json, split_frames
from orchestration.partitions import partition_days
from orchestration.policy import asset, warehouse_asset
from orchestration.sql import date_sql
from skiff.settings import Settings


def build_champion_asset(settings: Settings) -> AssetsDefinition:
    @asset(
        name=CHAMPION,
        deps=[EVALUATION],
        group_name=GROUP,
        kinds={"python"},
        description="Promotion: the best candidate becomes champion only when every gate "
        "passes and it scores at least as well as the current champion on the same test day; "
        "otherwise the champion stays and the metadata says why. Publishes for the server.",
    )
    def conversion_champion(context: AssetExecutionContext) -> MaterializeResult:
        from ml.conversion import dataset, features, metrics, models
        from ml.registry import ArtifactError, Registry

        evaluation = read_json(evaluation_path(settings))
        registry = Registry(settings.registry)
        candidate = evaluation["version"]
        current = registry.role(PROBLEM, "champion")
        champion_metrics: dict[str, float] | None = None
        note = ""
        if current is not None and current.version != candidate:
            try:
                model = models.load_registered(registry, current.version)
                test = features.batch_from_frame(split_frames(settings)["test"])
                champion_metrics = metrics.scores(
                    dataset.labels(test.events),
                    model.predict_proba(test),
                    float(current.metrics.get("threshold", 0.5)),
                )
            except ArtifactError as exc:
                note = f" (current champion {current.version} unusable: {exc})"
                context.log.warning(note)
        gate_results = {name: tuple(value) for name, value in evaluation["gates"].items()}
        if current is not None and current.version == candidate:
            promoted, reason = False, f"{candidate} is already the champion"
        else:
            versus = gates.at_least_as_good(evaluation["metrics"], champion_metrics)
            promoted, reason = gates.promotion(gate_results, versus)
        reason += note
        if promoted:
            registry.assign(PROBLEM, "champion", candidate, reason)
            if current is not None and current.version != candidate:
                registry.assign(PROBLEM, "challenger", current.version, f"replaced by {candidate}")
        elif all(passed for passed, _ in gate_results.values()) and (
            current is None or current.version != candidate
        ):
            registry.assign(PROBLEM, "challenger", candidate, f"not promoted: {reason}")
        published = registry.publish(PROBLEM, settings.published)
        champion = registry.role(PROBLEM, "champion")
        context.log.info(f"{'promoted' if promoted else 'kept'}: {reason}")
        metadata: dict[str, Any] = {
            "promoted": promoted,
            "reason": MetadataValue.text(reason),
            "candidate_version": MetadataValue.text(candidate),
            "champion_version": MetadataValue.text(champion.version if champion else "none"),
            "challenger_version": MetadataValue.text(published.get("challenger", "none")),
            "test_day": MetadataValue.text(evaluation["test_day"]),
            "candidate_pr_auc": float(evaluation["metrics"]["pr_auc"]),
        }
        if champion_metrics is not None:
            metadata["previous_champion_pr_auc"] = float(champion_metrics["pr_auc"])
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
        from ml.registry import ArtifactError, load_published

        try:
            manifest, folder = load_published(settings.published, PROBLEM)
        except ArtifactError as exc:
            raise Failure(
                description=f"{exc}. Materialize {CHAMPION} (its gates must pass once) first.",
                allow_retries=False,
            ) from exc
        model = models.load_model(folder)
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
