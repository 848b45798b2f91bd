"""Next-item recommendation: training set -> one candidate per algorithm -> evaluation with
behavioral checks -> champion (through the gates) -> batch predictions, published atomically.

- `recommender_training_set` reads `session_sequences` with a time split: the test window is
  the last `test_days` days (ending at `end_day`, default the latest day in the mart), the
  training window the `train_days` days before it. The recommender is evaluated only on next
  items of sessions later than every training session.
- `recommender_candidate_<algorithm>` fits one model, evaluates it with the one evaluator
  (`ml.recommend.evaluate`), runs the behavioral checks, computes the last-item lookup (top-20
  next items for every product) and registers the folder — model files *and* `next_items.parquet`
  — as one version of problem "recommender" in the registry.
- `recommender_evaluation` shows the leaderboard and the best candidate's behavioral checks
  (asset checks; gating ones have ERROR severity).
- `recommender_champion` promotes a candidate only when its gating checks pass and it is at
  least as good (HR@20) as the current champion on the same test days (the champion is
  re-evaluated when it was measured on other days); otherwise the champion stays and the
  metadata says why. It then publishes the champion: since the lookup is a file of the
  registered version, `registry.publish` ships model and lookup in one pointer swap, so the
  server never pairs a model with another model's lookup.
- `recommender_next_items` loads the published champion's lookup (verified) into the
  warehouse table `recommender_next_items`, for analysts and monitoring.
"""

import dataclasses
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    Config,
    MetadataValue,
    Output,
    PartitionsDefinition,
    asset,
)

from orchestration.sql import date_sql
from skiff.settings import Settings

PROBLEM = "recommender"
GROUP = "recommendation"
ALGORITHMS = ("pop", "sknn", "gru")
K = 20
LOOKUP = "next_items.parquet"
GATE_NAMES = (
    "beats_pop",
    "unseen_items",
    "similar_item_stability",
    "shuffle_stability",
    "tail_hit_rate",
)
NEXT_ITEMS_COLUMNS = {
    "product_sku_hash": "varchar",
    "rank": "integer",
    "next_sku": "varchar",
    "model_version": "varchar",
    "as_of_day": "date",
}


class TrainingSetConfig(Config):
    train_days: int = 14
    test_days: int = 1
    end_day: str = ""  # last test day (YYYY-MM-DD); empty = the latest day in the mart


class CandidateConfig(Config):
    params_json: str = ""  # hyper-parameters over ml.recommend.compare.DEFAULT_PARAMS, as JSON


class ChampionConfig(Config):
    candidate: str = ""  # propose this algorithm's candidate; empty = the evaluation's best


def _window(first: dt.date, split: dt.date, last: dt.date) -> dict:
    return {
        "train_start": first.isoformat(),
        "train_end": (split - dt.timedelta(days=1)).isoformat(),
        "test_start": split.isoformat(),
        "test_end": last.isoformat(),
    }


def build_recommendation_assets(settings: Settings, partitions_def: PartitionsDefinition) -> list:
    """Every asset of the `recommendation` group. The assets are not partitioned: they read
    a window of days of the (daily-partitioned) `session_sequences` mart."""
    del partitions_def  # the windows are days of the mart, chosen by config
    registry_root = settings.registry
    published = settings.published
    report_dir = settings.reports / PROBLEM

    @asset(
        name="recommender_training_set",
        group_name=GROUP,
        deps=[AssetKey("session_sequences")],
        pool="warehouse",
        required_resource_keys={"warehouse"},
        kinds={"python"},
        description="Sessions of session_sequences split by time: train days, then test days.",
    )
    def recommender_training_set(
        context: AssetExecutionContext, config: TrainingSetConfig
    ) -> Output[dict]:
        warehouse = context.resources.warehouse
        table = f"{warehouse.models_schema}.session_sequences"
        if config.end_day:
            last = dt.date.fromisoformat(config.end_day)
        else:
            latest = warehouse.query(f"select max(session_day) as day from {table}")["day"].iloc[0]
            if latest is None or str(latest) in ("NaT", "None"):
                raise ValueError(f"{table} is empty: materialize the marts first")
            last = dt.date.fromisoformat(str(latest)[:10])
        split = last - dt.timedelta(days=config.test_days - 1)
        first = split - dt.timedelta(days=config.train_days)
        frame = warehouse.query(
            f"select session_day, product_skus from {table}"
            f" where session_day between {date_sql(first)} and {date_sql(last)}"
            " order by first_view_at, session_key"
        )
        days = frame["session_day"].astype(str).str[:10]
        sessions = [s.split(" ") for s in frame["product_skus"]]
        train = [s for s, d in zip(sessions, days, strict=True) if d < split.isoformat()]
        test = [s for s, d in zip(sessions, days, strict=True) if d >= split.isoformat()]
        if not train or not any(len(s) >= 2 for s in test):
            raise ValueError(
                f"not enough sessions: {len(train)} to train ({first} .. {split}), "
                f"{len(test)} to test ({split} .. {last})"
            )
        window = _window(first, split, last)
        context.log.info(f"{len(train):,} training and {len(test):,} test sessions, {window}")
        return Output(
            {"train": train, "test": test, "window": window},
            metadata={
                "train_sessions": len(train),
                "test_sessions": len(test),
                "train_views": sum(map(len, train)),
                "test_predictions": sum(max(len(s) - 1, 0) for s in test),
                **{key: MetadataValue.text(value) for key, value in window.items()},
            },
        )

    def build_candidate(algorithm: str):
        @asset(
            name=f"recommender_candidate_{algorithm}",
            group_name=GROUP,
            ins={"training_set": AssetIn("recommender_training_set")},
            kinds={"python", "torch"} if algorithm in ("gru", "sasrec") else {"python"},
            description=f"The {algorithm} recommender fitted on the training days, evaluated on "
            "the test days, with its last-item lookup, registered as a version.",
        )
        def candidate(
            context: AssetExecutionContext, config: CandidateConfig, training_set: dict
        ) -> Output[dict]:
            from ml.recommend.behavior import run_checks
            from ml.recommend.compare import fit_and_evaluate
            from ml.registry import Registry

            train, test = training_set["train"], training_set["test"]
            params = json.loads(config.params_json) if config.params_json else {}
            context.log.info(
                f"fitting {algorithm} on {len(train):,} sessions ({params or 'defaults'})"
            )
            _, pop_result, _ = fit_and_evaluate("pop", train, test, K)
            model, result, row = fit_and_evaluate(
                algorithm, train, test, K, params, progress=context.log.info
            )
            popularity = dict(
                zip(model.vocab.items[1:], model.popularity[1:].tolist(), strict=True)
            )
            outcomes, slices = run_checks(
                result, pop_result, model.recommend_batch, train, test, popularity
            )
            began = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="skiff-rec-") as tmp:
                folder = model.save(Path(tmp) / algorithm)
                n_products = _write_lookup(model, folder / LOOKUP)
                lookup_seconds = time.perf_counter() - began
                manifest = Registry(registry_root).register(
                    PROBLEM,
                    folder,
                    algorithm=algorithm,
                    params=row["params"],
                    metrics={
                        key: row[key]
                        for key in (
                            "hr_at_20",
                            "mrr_at_20",
                            "ndcg_at_20",
                            "coverage",
                            "popularity_bias",
                            "predictions",
                            "train_seconds",
                        )
                    },
                    training_window=training_set["window"],
                    extra={
                        "test_window": _test_window(training_set["window"]),
                        "lookup": LOOKUP,
                        "checks": [dataclasses.asdict(o) for o in outcomes],
                    },
                )
            context.log.info(f"registered {manifest.version}: HR@20 {row['hr_at_20']:.4f}")
            return Output(
                {
                    "algorithm": algorithm,
                    "version": manifest.version,
                    "row": row,
                    "checks": [dataclasses.asdict(o) for o in outcomes],
                    "slices": slices,
                },
                metadata={
                    "version": manifest.version,
                    "hr_at_20": row["hr_at_20"],
                    "mrr_at_20": row["mrr_at_20"],
                    "ndcg_at_20": row["ndcg_at_20"],
                    "coverage": row["coverage"],
                    "train_seconds": row["train_seconds"],
                    "recs_per_second": row["recs_per_second"],
                    "lookup_products": n_products,
                    "lookup_seconds": round(lookup_seconds, 2),
                    "unseen_input_items": model.vocab.unseen_items,
                },
            )

        return candidate

    candidates = [build_candidate(a) for a in ALGORITHMS]

    @asset(
        name="recommender_evaluation",
        group_name=GROUP,
        ins={f"candidate_{a}": AssetIn(f"recommender_candidate_{a}") for a in ALGORITHMS},
        check_specs=[
            AssetCheckSpec(name, asset="recommender_evaluation", description=_gate_text(name))
            for name in GATE_NAMES
        ],
        kinds={"python"},
        description="The leaderboard of the candidates on the same test days, and the best "
        "candidate's behavioral checks (gating checks block its promotion).",
    )
    def recommender_evaluation(
        context: AssetExecutionContext,
        candidate_pop: dict,
        candidate_sknn: dict,
        candidate_gru: dict,
    ):
        from ml.recommend.compare import format_leaderboard

        entries = {e["algorithm"]: e for e in (candidate_pop, candidate_sknn, candidate_gru)}
        rows = sorted((e["row"] for e in entries.values()), key=lambda r: -r["hr_at_20"])
        best = entries[rows[0]["model"]]
        markdown = _leaderboard_markdown(format_leaderboard(rows), best)
        report_dir.mkdir(parents=True, exist_ok=True)
        (report_dir / "leaderboard.md").write_text(markdown + "\n")
        yield Output(
            {
                "rows": rows,
                "best": best["algorithm"],
                "candidates": {
                    a: {"version": e["version"], "checks": e["checks"], "row": e["row"]}
                    for a, e in entries.items()
                },
            },
            metadata={
                "leaderboard": MetadataValue.md(markdown),
                "best": best["algorithm"],
                "best_version": best["version"],
                "hr_at_20": best["row"]["hr_at_20"],
                "mrr_at_20": best["row"]["mrr_at_20"],
                "ndcg_at_20": best["row"]["ndcg_at_20"],
                "coverage": best["row"]["coverage"],
                "report": MetadataValue.path(str(report_dir / "leaderboard.md")),
            },
        )
        for check in best["checks"]:
            yield AssetCheckResult(
                check_name=check["name"],
                passed=check["passed"],
                severity=AssetCheckSeverity.ERROR if check["gating"] else AssetCheckSeverity.WARN,
                metadata={
                    "candidate": best["algorithm"],
                    "value": float(check["value"]),
                    "threshold": float(check["threshold"]),
                    "gating": check["gating"],
                },
            )

    @asset(
        name="recommender_champion",
        group_name=GROUP,
        ins={
            "evaluation": AssetIn("recommender_evaluation"),
            "training_set": AssetIn("recommender_training_set"),
        },
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

        registry = Registry(registry_root)
        name = config.candidate or evaluation["best"]
        if name not in evaluation["candidates"]:
            raise ValueError(f"no candidate {name!r}; have {sorted(evaluation['candidates'])}")
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

    @asset(
        name="recommender_next_items",
        group_name=GROUP,
        ins={"champion": AssetIn("recommender_champion")},
        pool="warehouse",
        required_resource_keys={"warehouse"},
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
        exploded = lookup.explode("next_items").dropna(subset=["next_items"])
        frame = pd.DataFrame(
            {
                "product_sku_hash": exploded["product_sku_hash"].to_numpy(),
                "rank": exploded.groupby(level=0).cumcount().to_numpy() + 1,
                "next_sku": exploded["next_items"].to_numpy(),
                "model_version": manifest.version,
                "as_of_day": as_of,
            }
        )
        warehouse = context.resources.warehouse
        warehouse.replace_days(
            "recommender_next_items",
            "as_of_day",
            [as_of],
            frame,
            columns=NEXT_ITEMS_COLUMNS,
            schema=warehouse.models_schema,
        )
        sample = ["| product | first next items |", "|---|---|"] + [
            f"| {sku} | {' '.join(items[:5])} |"
            for sku, items in zip(
                lookup["product_sku_hash"][:5], lookup["next_items"][:5], strict=True
            )
        ]
        return Output(
            None,
            metadata={
                "model_version": manifest.version,
                "products": len(lookup),
                "rows": len(frame),
                "dagster/row_count": len(frame),
                "sample": MetadataValue.md("\n".join(sample)),
            },
        )

    return [
        recommender_training_set,
        *candidates,
        recommender_evaluation,
        recommender_champion,
        recommender_next_items,
    ]


def _test_window(window: dict) -> dict:
    return {"start": window["test_start"], "end": window["test_end"]}


def _champion_hr(registry, current, training_set: dict, context) -> float:
    """The current champion's HR@20 on this run's test days: recorded, or measured again."""
    from ml.recommend.evaluate import evaluate, popularity_counts
    from ml.recommend.models import Recommender

    if current.extra.get("test_window") == _test_window(training_set["window"]):
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


def _write_lookup(model, path: Path) -> int:
    """Top-K next items after each known product alone: the last-item lookup."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    products = model.vocab.items[1:]
    lists = []
    for start in range(0, len(products), 2048):
        lists.extend(model.recommend_batch([[p] for p in products[start : start + 2048]], K))
    table = pa.table(
        {
            "product_sku_hash": pa.array(products, pa.string()),
            "next_items": pa.array(lists, pa.list_(pa.string())),
        }
    )
    pq.write_table(table, path)
    return len(products)


def _gate_text(name: str) -> str:
    from ml.recommend.behavior import GATES

    gate = GATES[name]
    role = "gates promotion" if gate.gating else "reports"
    return f"{gate.description}; threshold {gate.threshold} ({role})"


def _leaderboard_markdown(table: str, best: dict) -> str:
    checks = ["| check | value | threshold | gating | passed |", "|---|---:|---:|---|---|"]
    checks += [
        f"| {c['name']} | {c['value']:.4f} | {c['threshold']} | {c['gating']} | {c['passed']} |"
        for c in best["checks"]
    ]
    slices = best["slices"]
    parts = ["| slice | bucket | HR@20 | MRR@20 | predictions |", "|---|---|---:|---:|---:|"]
    for kind in ("by_popularity", "by_length"):
        for bucket, m in slices[kind].items():
            parts.append(
                f"| {kind[3:]} | {bucket} | {m['hr_at_20']:.4f} | {m['mrr_at_20']:.4f} "
                f"| {m['predictions']:,} |"
            )
    return "\n\n".join(
        [
            "### Leaderboard (HR/MRR/NDCG@20 over every next item of the test days)",
            table,
            f"### Behavioral checks of the best candidate ({best['algorithm']})",
            "\n".join(checks),
            "\n".join(parts),
        ]
    )
