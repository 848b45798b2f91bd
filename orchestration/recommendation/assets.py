"""Next-item recommendation: training set -> one candidate per algorithm -> evaluation with
behavioral checks -> champion (through the gates, `champion.py`) -> batch predictions.

- `recommender_training_set` reads `session_sequences` with a time split: the test window is
  the last `test_days` days (ending at `end_day`, default the latest day in the mart), the
  validation window the `validation_days` before it, the training window the `train_days`
  days before that. The recommender is evaluated only on next items of sessions later than
  every training session.
- `recommender_candidate_<algorithm>` fits one model, evaluates it with the one evaluator
  (`ml.recommend.evaluate`), runs the behavioral checks, computes the last-item lookup (top-20
  next items for every product) and registers the folder — model files *and* `next_items.parquet`
  — as one version of problem "recommender" in the registry.
- `recommender_evaluation` chooses the best candidate on the validation days (HR@20), then
  shows the leaderboard (validation HR@20 beside the test metrics) and the chosen candidate's
  behavioral checks on the test days (asset checks; gating ones have ERROR severity).

The assets are not partitioned: they read a window of days of the (daily-partitioned)
`session_sequences` mart, chosen by config. What they hand each other (the training set's
sessions as lists of product lists, each candidate's results, the evaluation) is plain JSON,
stored by the hand-off IO manager keyed by run (orchestration/handoff.py), never pickled.
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
    AssetsDefinition,
    Failure,
    MetadataValue,
    Output,
)

from orchestration.handoff import Handoff
from orchestration.policy import asset, warehouse_asset
from orchestration.recommendation.champion import build_champion_asset, build_next_items_asset
from orchestration.recommendation.config import (
    ALGORITHMS,
    EVALUATION,
    GATE_NAMES,
    GROUP,
    LEADERBOARD_REPORT,
    LOOKUP,
    PROBLEM,
    REGISTERED_METRICS,
    TRAINING_SET,
    CandidateConfig,
    K,
    TrainingSetConfig,
    candidate_asset_name,
    split_window,
    test_window,
    validation_window,
)
from orchestration.recommendation.reports import gate_text, leaderboard_markdown, write_lookup
from orchestration.reports import write_run_report
from orchestration.sql import date_sql
from skiff.settings import Settings


def build_training_set_asset() -> AssetsDefinition:
    @warehouse_asset(
        name=TRAINING_SET,
        group_name=GROUP,
        deps=[AssetKey("session_sequences")],
        kinds={"python"},
        description="Sessions of session_sequences split by time: train days, validation "
        "days (the best candidate is chosen there), then test days (reported and gated).",
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
                raise Failure(
                    description=f"{table} is empty: materialize the marts first",
                    allow_retries=False,
                )
            last = dt.date.fromisoformat(str(latest)[:10])
        if config.validation_days < 1 or config.test_days < 1:
            raise Failure(
                description="validation_days and test_days must be at least 1 (got "
                f"{config.validation_days}, {config.test_days})",
                allow_retries=False,
            )
        split = last - dt.timedelta(days=config.test_days - 1)
        validation_start = split - dt.timedelta(days=config.validation_days)
        first = validation_start - dt.timedelta(days=config.train_days)
        frame = warehouse.query(
            f"select session_day, product_skus from {table}"
            f" where session_day between {date_sql(first)} and {date_sql(last)}"
            " order by first_view_at, session_key"
        )
        days = frame["session_day"].astype(str).str[:10].tolist()
        sessions = [s.split(" ") for s in frame["product_skus"]]
        window = split_window(first, validation_start, split, last)
        parts: dict[str, list[list[str]]] = {"train": [], "validation": [], "test": []}
        for session, day in zip(sessions, days, strict=True):
            if day < window["validation_start"]:
                parts["train"].append(session)
            elif day < window["test_start"]:
                parts["validation"].append(session)
            else:
                parts["test"].append(session)
        train, validation, test = parts["train"], parts["validation"], parts["test"]
        if not train or not all(any(len(s) >= 2 for s in p) for p in (validation, test)):
            raise Failure(
                description=f"not enough sessions: {len(train)} to train ({window['train_start']}"
                f" .. {window['train_end']}), {len(validation)} to validate "
                f"({window['validation_start']} .. {window['validation_end']}), {len(test)} to "
                f"test ({window['test_start']} .. {window['test_end']}); validation and test "
                "need a session of 2+ views",
                allow_retries=False,
            )
        context.log.info(
            f"{len(train):,} training, {len(validation):,} validation and {len(test):,} test "
            f"sessions, {window}"
        )
        return Output(
            {"train": train, "validation": validation, "test": test, "window": window},
            metadata={
                "train_sessions": len(train),
                "validation_sessions": len(validation),
                "test_sessions": len(test),
                "train_views": sum(map(len, train)),
                "test_predictions": sum(max(len(s) - 1, 0) for s in test),
                **{key: MetadataValue.text(value) for key, value in window.items()},
            },
        )

    return recommender_training_set


def build_candidate_asset(settings: Settings, algorithm: str) -> AssetsDefinition:
    @asset(
        name=candidate_asset_name(algorithm),
        group_name=GROUP,
        ins={"training_set": AssetIn(TRAINING_SET)},
        kinds={"python", "torch"} if algorithm in ("gru", "sasrec") else {"python"},
        description=f"The {algorithm} recommender fitted on the training days, evaluated on "
        "the validation days (what chooses) and the test days (what is reported and gated), "
        "with its last-item lookup, registered as a version.",
    )
    def candidate(
        context: AssetExecutionContext, config: CandidateConfig, training_set: dict
    ) -> Output[dict]:
        from ml.recommend.behavior import run_checks
        from ml.recommend.compare import evaluate_model, fit_and_evaluate
        from ml.registry import Registry

        train, test = training_set["train"], training_set["test"]
        params = json.loads(config.params_json) if config.params_json else {}
        context.log.info(f"fitting {algorithm} on {len(train):,} sessions ({params or 'defaults'})")
        _, pop_result, _ = fit_and_evaluate("pop", train, test, K)
        model, result, row = fit_and_evaluate(
            algorithm, train, test, K, params, progress=context.log.info
        )
        validation = evaluate_model(model, train, training_set["validation"], K)
        row = {
            **row,
            f"validation_hr_at_{K}": validation.hr,
            f"validation_mrr_at_{K}": validation.mrr,
            "validation_predictions": validation.predictions,
        }
        popularity = dict(zip(model.vocab.items[1:], model.popularity[1:].tolist(), strict=True))
        outcomes, slices = run_checks(
            result, pop_result, model.recommend_batch, train, test, popularity
        )
        checks = [dataclasses.asdict(o) for o in outcomes]
        began = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="skiff-rec-") as tmp:
            folder = model.save(Path(tmp) / algorithm)
            n_products = write_lookup(model, folder / LOOKUP)
            lookup_seconds = time.perf_counter() - began
            manifest = Registry(settings.registry).register(
                PROBLEM,
                folder,
                algorithm=algorithm,
                params=row["params"],
                metrics={key: row[key] for key in REGISTERED_METRICS},
                training_window=training_set["window"],
                extra={
                    "test_window": test_window(training_set["window"]),
                    "validation_window": validation_window(training_set["window"]),
                    "validation": {
                        key: row[f"validation_{key}"] for key in ("hr_at_20", "mrr_at_20")
                    },
                    "lookup": LOOKUP,
                    "checks": checks,
                },
            )
        context.log.info(
            f"registered {manifest.version}: HR@20 {row['validation_hr_at_20']:.4f} on the "
            f"validation days, {row['hr_at_20']:.4f} on the test days"
        )
        return Output(
            {
                "algorithm": algorithm,
                "version": manifest.version,
                "row": row,
                "checks": checks,
                "slices": slices,
                # the run whose training set this was: the champion compares on its test days
                "training_set_run": Handoff(settings.handoff_root).input_run(context, TRAINING_SET),
            },
            metadata={
                "version": manifest.version,
                "validation_hr_at_20": row["validation_hr_at_20"],
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


def build_evaluation_asset(settings: Settings) -> AssetsDefinition:
    @asset(
        name=EVALUATION,
        group_name=GROUP,
        ins={f"candidate_{a}": AssetIn(candidate_asset_name(a)) for a in ALGORITHMS},
        check_specs=[
            AssetCheckSpec(name, asset=EVALUATION, description=gate_text(name))
            for name in GATE_NAMES
        ],
        kinds={"python"},
        description="The best candidate chosen on the validation days (HR@20); the leaderboard "
        "of the candidates on the same test days beside it, and the chosen candidate's "
        "behavioral checks on the test days (gating checks block its promotion).",
    )
    def recommender_evaluation(
        context: AssetExecutionContext,
        candidate_pop: dict,
        candidate_sknn: dict,
        candidate_gru: dict,
    ):
        from ml.recommend.compare import best_row, format_leaderboard

        entries = {e["algorithm"]: e for e in (candidate_pop, candidate_sknn, candidate_gru)}
        rows = sorted((e["row"] for e in entries.values()), key=lambda r: -r["validation_hr_at_20"])
        best = entries[best_row(rows, K)["model"]]
        markdown = leaderboard_markdown(format_leaderboard(rows), best)
        url = write_run_report(settings, LEADERBOARD_REPORT, context.run_id, markdown + "\n")
        yield Output(
            {
                "rows": rows,
                "best": best["algorithm"],
                "candidates": {
                    a: {
                        "version": e["version"],
                        "checks": e["checks"],
                        "row": e["row"],
                        "training_set_run": e.get("training_set_run"),
                    }
                    for a, e in entries.items()
                },
            },
            metadata={
                "leaderboard": MetadataValue.md(markdown),
                "best": best["algorithm"],
                "best_version": best["version"],
                "validation_hr_at_20": best["row"]["validation_hr_at_20"],
                "selection": MetadataValue.json(
                    {
                        a: {
                            "validation_hr_at_20": e["row"]["validation_hr_at_20"],
                            "test_hr_at_20": e["row"]["hr_at_20"],
                        }
                        for a, e in entries.items()
                    }
                ),
                "hr_at_20": best["row"]["hr_at_20"],
                "mrr_at_20": best["row"]["mrr_at_20"],
                "ndcg_at_20": best["row"]["ndcg_at_20"],
                "coverage": best["row"]["coverage"],
                "report": MetadataValue.url(url),
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

    return recommender_evaluation


def build_recommendation_assets(settings: Settings) -> list[AssetsDefinition]:
    """Every asset of the `recommendation` group."""
    return [
        build_training_set_asset(),
        *(build_candidate_asset(settings, a) for a in ALGORITHMS),
        build_evaluation_asset(settings),
        build_champion_asset(settings),
        build_next_items_asset(settings),
    ]
