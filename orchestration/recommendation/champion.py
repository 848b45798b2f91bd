"""The recommender champion and its batch predictions.

- `recommender_champion` promotes a candidate only when its gating checks pass and it is at
  least as good (HR@20) as the current champion on the same test days (the champion is
  re-evaluated when it was measured on other days); otherwise the champion stays and the
  metadata says why. It then publishes the champion: since the lookup is a file of the
  registered version, `registry.publish` ships model and lookup in one pointer swap, so the
  server never pairs a model with another model's lookup.
- `recommender_next_items` loads the published champion's lookup (verified) into the
  warehouse table `recommender_next_items`, for analysts and monitoring.
"""

import datetime as dt
import tempfile
from pathlib import Path

from dagster import AssetExecutionContext, AssetIn, AssetsDefinition, Failure, MetadataValue, Output

from orchestration.policy import asset, warehouse_asset
from orchestration.recommendation.config import (
    CHAMPION,
    EVALUATION,
    GROUP,
    LOOKUP,
    NEXT_ITEMS,
    NEXT_ITEMS_COLUMNS,
    PROBLEM,
    TRAINING_SET,
    ChampionConfig,
    K,
    test_window,
)
from orchestration.recommendation.reports import lookup_rows, lookup_sample
from skiff.settings import Settings


def build_champion_asset(settings: Settings) -> AssetsDefinition:
    published = settings.published

    @asset(
        name=CHAMPION,
        group_name=GROUP,
        ins={"evaluation": AssetIn(EVALUATION), "training_set": AssetIn(TRAINING_SET)},
        kinds={"python"},
        description="The recommender the server uses: changed only through the gating checks "
        "and when at least as good as the current champion on the same test days; published "
        "with its last-item lookup in one pointer swap.",
    )
    def recommender_champion(
        context: AssetExecutionContext,
        config: ChampionConfig,
        evaluation: dict,
        training_set: dict,
    ) -> Output[dict]:
        from ml.registry import Registry

        registry = Registry(settings.registry)
        name = config.candidate or evaluation["best"]
        if name not in evaluation["candidates"]:
            raise Failure(
                description=f"no candidate {name!r}; have {sorted(evaluation['candidates'])}",
                allow_retries=False,
            )
        proposed = evaluation["candidates"][name]
        proposed_hr = proposed["row"]["hr_at_20"]
        failed = [c["name"] for c in proposed["checks"] if c["gating"] and not c["passed"]]
        current = registry.role(PROBLEM, "champion")
        current_hr = None
        reasons = []
        if failed:
            reasons.append(f"gating check(s) failed: {', '.join(failed)}")
        if current is not None and current.version != proposed["version"]:
            current_hr = _champion_hr(registry, current, training_set, context)
            if proposed_hr < current_hr:
                reasons.append(
                    f"HR@20 {proposed_hr:.4f} is below the champion's {current_hr:.4f} "
                    "on the same test days"
                )
        if current is not None and current.version == proposed["version"]:
            decision, reasons = "unchanged", ["the proposed version is already the champion"]
        elif reasons:
            decision = "kept"
        else:
            decision = "promoted"
            reason = (
                f"{name} HR@20 {proposed_hr:.4f} on {training_set['window']['test_start']}"
                f" .. {training_set['window']['test_end']}, gates passed"
                + (f"; champion had {current_hr:.4f}" if current_hr is not None else "")
            )
            registry.assign(PROBLEM, "champion", proposed["version"], reason)
            reasons = [reason]
        champion = registry.role(PROBLEM, "champion")
        if champion is None:
            context.log.warning(f"no champion: {'; '.join(reasons)}")
            return Output(
                {"version": None},
                metadata={"decision": decision, "why": MetadataValue.md("\n".join(reasons))},
            )
        registry.publish(PROBLEM, published, roles=("champion",))
        context.log.info(f"{decision}: champion {champion.version} ({'; '.join(reasons)})")
        return Output(
            {"version": champion.version, "algorithm": champion.algorithm},
            metadata={
                "decision": decision,
                "why": MetadataValue.md("\n".join(f"- {r}" for r in reasons)),
                "champion": champion.version,
                "champion_algorithm": champion.algorithm,
                "proposed": proposed["version"],
                "proposed_hr_at_20": proposed_hr,
                "champion_hr_at_20": champion.metrics.get("hr_at_20", float("nan"))
                if current_hr is None or decision == "promoted"
                else current_hr,
                "published_to": MetadataValue.path(str(published / PROBLEM)),
            },
        )

    return recommender_champion


def _champion_hr(registry, current, training_set: dict, context) -> float:
    """The current champion's HR@20 on this run's test days: recorded, or measured again."""
    from ml.recommend.evaluate import evaluate, popularity_counts
    from ml.recommend.models import Recommender

    if current.extra.get("test_window") == test_window(training_set["window"]):
        return float(current.metrics["hr_at_20"])
    context.log.info(f"re-evaluating champion {current.version} on this run's test days")
    with tempfile.TemporaryDirectory(prefix="skiff-champion-") as tmp:
        model = Recommender.load(registry.fetch(PROBLEM, current.version, Path(tmp)))
        popularity = popularity_counts(training_set["train"])
        result = evaluate(
            training_set["test"],
            recommend_batch=model.recommend_batch,
            k=K,
            popularity=popularity,
            known_items=set(popularity),
        )
    return result.hr


def build_next_items_asset(settings: Settings) -> AssetsDefinition:
    published = settings.published

    @warehouse_asset(
        name=NEXT_ITEMS,
        group_name=GROUP,
        ins={"champion": AssetIn(CHAMPION)},
        kinds={"python"},
        description="Batch predictions: the published champion's top-20 next items for every "
        "product (the server's fallback when a request has no usable history), as a table.",
    )
    def recommender_next_items(context: AssetExecutionContext, champion: dict) -> Output[None]:
        import pandas as pd

        from ml.registry import load_published

        if champion.get("version") is None:
            return Output(None, metadata={"rows": 0, "why": "no champion yet"})
        manifest, folder = load_published(published, PROBLEM)
        lookup = pd.read_parquet(folder / LOOKUP)
        as_of = dt.date.fromisoformat(manifest.extra["test_window"]["end"])
        frame = lookup_rows(lookup, manifest.version, as_of)
        warehouse = context.resources.warehouse
        warehouse.replace_days(
            NEXT_ITEMS,
            "as_of_day",
            [as_of],
            frame,
            columns=NEXT_ITEMS_COLUMNS,
            schema=warehouse.models_schema,
        )
        return Output(
            None,
            metadata={
                "model_version": manifest.version,
                "products": len(lookup),
                "rows": len(frame),
                "dagster/row_count": len(frame),
                "sample": MetadataValue.md(lookup_sample(lookup)),
            },
        )

    return recommender_next_items
