"""`recommender_offline_online`: the table that shows why one offline metric misleads.

For the latest training run's recommender candidates, plus `TailFirst` of session-kNN (the
candidate built to look good offline: the same top 20 as session-kNN, weakest first), side by
side: offline HR@20 and MRR@20 on the test days, replay estimates (IPS, SNIPS, DM, DR) on a
log of the champion exploring, interleaving against the champion, A/B lift against it, and the
simulator's true click-through, with each method's rank correlation with the truth
(`ml.offline_online`).

It needs ground truth, so it runs on the synthetic data's world (`ml.simulate.world`, the
generator's seed and catalogue size in the config) with simulated shoppers in process; it is
not part of any scheduled job (job `offline_vs_online`, or `skiff demo`). On real data the
replay estimates on real logged traffic are `recommender_replay`'s.
"""

import datetime as dt
import json
from contextlib import ExitStack

from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetsDefinition,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
)
from pydantic import Field

from orchestration.handoff import Handoff
from orchestration.policy import asset
from orchestration.recommendation.config import EVALUATION, PROBLEM, TRAINING_SET, K
from orchestration.reports import write_run_report
from skiff.settings import Settings

ASSET = "recommender_offline_online"
GROUP = "offline_vs_online"
TAIL_FIRST = "sknn_tail_first"
REPORT = "recommendation/offline_online.md"  # under the reports root (orchestration.reports)


class OfflineOnlineConfig(Config):
    world_seed: int = Field(
        default=7, description="The generator seed of the synthetic data (skiff demo --seed)."
    )
    world_products: int = Field(default=5000, description="The generator's catalogue size.")
    regime: str = Field(default="pre", description="The world's regime: pre or post (drift).")
    logged_sessions: int = Field(
        default=4000, description="Simulated sessions of the champion exploring (the log)."
    )
    online_sessions: int = Field(
        default=2000, description="Simulated sessions of each A/B, interleaving and truth run."
    )
    explore: float = Field(default=0.05, description="The logging policy's exploration share.")
    explore_pool: int = Field(default=20, description="... over the champion's top M.")
    seed: int = Field(default=0, description="Seed of the simulated shoppers.")


def build_offline_online_asset(settings: Settings) -> AssetsDefinition:
    @asset(
        name=ASSET,
        group_name=GROUP,
        ins={"evaluation": AssetIn(EVALUATION)},
        deps=[TRAINING_SET],  # the candidates' own, from the run they record (not the latest)
        kinds={"python"},
        description="Offline HR@20/MRR@20 beside replay estimates, interleaving, A/B lift and "
        "the simulator's true click-through for each recommender candidate (and one built to "
        "look good offline), with each method's rank correlation with the truth.",
    )
    def recommender_offline_online(
        context: AssetExecutionContext,
        config: OfflineOnlineConfig,
        evaluation: dict,
    ) -> MaterializeResult:
        from ml.offline_online import TailFirst, offline_online
        from ml.offpolicy import Exploration
        from ml.recommend.evaluate import evaluate, popularity_counts
        from ml.recommend.models import Recommender
        from ml.registry import Registry
        from ml.simulate import ShopperModel, world
        from ml.synthetic import GeneratorConfig

        registry = Registry(settings.registry)
        champion = registry.role(PROBLEM, "champion")
        if champion is None:
            raise Failure(description="no recommender champion yet", allow_retries=False)
        if config.regime not in ("pre", "post"):
            raise Failure(
                description=f"regime must be pre or post, got {config.regime!r}",
                allow_retries=False,
            )
        candidates = evaluation["candidates"]
        training_set = Handoff(settings.handoff_root).load_recorded(
            candidates[evaluation["best"]].get("training_set_run"), TRAINING_SET, EVALUATION
        )
        versions = {name: entry["version"] for name, entry in candidates.items()}
        offline = {
            name: {k: float(entry["row"][k]) for k in ("hr_at_20", "mrr_at_20")}
            for name, entry in candidates.items()
        }
        names = {version: name for name, version in versions.items()}
        if champion.version not in names:  # e.g. a retraining ran since it was promoted
            names[champion.version] = f"champion ({champion.algorithm})"
            versions[names[champion.version]] = champion.version
        # the models stay on disk until the table is done (a loaded model may read lazily)
        with ExitStack() as copies:
            models = {
                name: Recommender.load(copies.enter_context(registry.fetched(PROBLEM, version)))
                for name, version in versions.items()
            }
            if "sknn" in models:
                models[TAIL_FIRST] = TailFirst(models["sknn"])
            popularity = popularity_counts(training_set["train"])
            for name in set(models) - set(offline):  # on the candidates' test days too
                measured = evaluate(
                    training_set["test"],
                    recommend_batch=models[name].recommend_batch,
                    k=K,
                    popularity=popularity,
                    known_items=set(popularity),
                )
                offline[name] = {"hr_at_20": measured.hr, "mrr_at_20": measured.mrr}
            generator = GeneratorConfig(seed=config.world_seed, n_products=config.world_products)
            context.log.info(
                f"simulating {config.logged_sessions:,} logged sessions of "
                f"{names[champion.version]} and {config.online_sessions:,} per online run for "
                f"{len(models)} models"
            )
            found = offline_online(
                world(generator, config.regime),
                models,
                offline,
                names[champion.version],
                transitions_sessions=training_set["train"],
                logged_sessions=config.logged_sessions,
                online_sessions=config.online_sessions,
                seed=config.seed,
                exploration=Exploration(config.explore, config.explore_pool),
                shopper=ShopperModel(),
            )
        markdown = found.markdown()
        stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        text = f"# Offline vs online ({stamp})\n\n{markdown}\n"
        url = write_run_report(settings, REPORT, context.run_id, text)
        context.log.info(f"offline vs online in {found.seconds:.0f} s: {url}")
        metadata = {
            "table": MetadataValue.md(markdown),
            "report": MetadataValue.url(url),
            "champion": MetadataValue.text(names[champion.version]),
            "logged_exposures": found.logged_exposures,
            # NaN (a correlation over tied values, an undecided test) is no JSON: null
            "rows": MetadataValue.json(
                json.loads(found.to_json(), parse_constant=lambda _: None)["rows"]
            ),
        }
        for method, value in found.correlations.items():
            if value == value:  # NaN has no float metadata
                metadata[f"rank_correlation_{method}"] = float(value)
        return MaterializeResult(metadata=metadata)

    return recommender_offline_online
