"""Session conversion in Dagster: training set -> candidates -> evaluation + gates -> champion
-> daily predictions. The ML itself lives in `ml.conversion`; these assets move data between
the warehouse and the registry, and show the results in the UI. What a step gives the next (the
split as Parquet, each candidate's results and the evaluation as JSON) is its return value,
stored by the hand-off IO manager keyed by run (orchestration/handoff.py): any executor works,
a step can be rerun alone, and two training runs at once never mix their candidates. Models go
only through the registry (`settings.registry`).
"""

import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AssetsDefinition,
    Failure,
    MetadataValue,
    Output,
    PartitionsDefinition,
)

from ml.conversion import gates
from orchestration.conversion.champion import build_champion_asset, build_predictions_asset
from orchestration.conversion.config import (
    ALGORITHMS,
    BASELINES,
    CONFIGS,
    EVALUATION,
    EXAMPLES,
    GROUP,
    LEADERBOARD_REPORT,
    METRIC_COLUMNS,
    TRAINING_SET,
    EvaluationConfig,
    TrainingSetConfig,
    model_asset_name,
    split_frames,
)
from orchestration.conversion.leaderboard import (
    best_candidate,
    calibration_markdown,
    gates_report,
    leaderboard_markdown,
    selection_table,
    slices_markdown,
)
from orchestration.conversion.leakage import leakage
from orchestration.handoff import Handoff
from orchestration.markdown import markdown_table
from orchestration.policy import asset, warehouse_asset
from orchestration.reports import write_run_report
from orchestration.sql import date_sql
from skiff.settings import Settings


def build_training_set_asset(settings: Settings) -> AssetsDefinition:
    @warehouse_asset(
        name=TRAINING_SET,
        deps=[EXAMPLES],
        group_name=GROUP,
        kinds={"python", "parquet"},
        description="conversion_examples split by time: a training window, a validation day "
        "and a test day (never random; a session sits on one day, so never on two sides).",
    )
    def conversion_training_set(
        context: AssetExecutionContext, config: TrainingSetConfig
    ) -> Output[dict]:
        from ml.conversion import dataset

        warehouse = context.resources.warehouse
        table = f"{warehouse.models_schema}.conversion_examples"
        labels = warehouse.query(f"select distinct session_day, will_purchase from {table}")
        if labels.empty:
            raise Failure(
                description=f"{table} is empty: materialize the marts first.", allow_retries=False
            )
        test_day = (
            dt.date.fromisoformat(config.test_day)
            if config.test_day
            else dataset.latest_complete_day(labels)
        )
        first = test_day - dt.timedelta(days=config.train_days + 1)
        frame = warehouse.query(
            f"select * from {table} where session_day between {date_sql(first)}"
            f" and {date_sql(test_day)}"
        )
        context.log.info(f"read {len(frame):,} prefixes of {table} for {first} .. {test_day}")
        try:
            split = dataset.time_split(frame, config.train_days, test_day)
        except ValueError as exc:
            raise Failure(description=str(exc), allow_retries=False) from exc
        train = split.train.assign(
            is_example=dataset.select_prefixes(
                split.train, config.max_prefixes_per_session, config.sample_seed
            )
        )
        parts = {"train": train, "validation": split.validation, "test": split.test}
        summary: dict[str, Any] = {"window": split.window, "parts": {}}
        for name, part in parts.items():
            summary["parts"][name] = {
                "prefixes": len(part),
                "sessions": int(part["session_key"].nunique()),
                "positive_rate": float(part["will_purchase"].mean()) if len(part) else 0.0,
            }
        summary["parts"]["train"]["examples"] = int(train["is_example"].sum())
        table_md = markdown_table(
            pd.DataFrame([{"part": k, **v} for k, v in summary["parts"].items()]).fillna(0)
        )
        frames = {name: part.reset_index(drop=True) for name, part in parts.items()}
        return Output(
            {**frames, **summary},
            metadata={
                **{k: MetadataValue.text(v) for k, v in split.window.items()},
                "parts": MetadataValue.md(table_md),
                "train_examples": int(train["is_example"].sum()),
                "dagster/row_count": sum(len(p) for p in parts.values()),
            },
        )

    return conversion_training_set


def build_candidate_asset(settings: Settings, algorithm: str) -> AssetsDefinition:
    config_type = CONFIGS[algorithm]
    kind = "baseline" if algorithm in BASELINES else "candidate"

    @asset(
        name=model_asset_name(algorithm),
        ins={"training_set": AssetIn(TRAINING_SET)},
        group_name=GROUP,
        kinds={"pytorch" if algorithm == "gru" else "scikitlearn"},
        description=f"The {algorithm} {kind}: trained on the training window, threshold chosen "
        "on the validation day, scored on the test day, registered as a new version.",
    )
    def candidate(
        context: AssetExecutionContext, config: config_type, training_set: dict
    ) -> Output[dict]:
        import numpy as np

        from ml.conversion import dataset, features, metrics, models
        from ml.registry import Registry

        frames = split_frames(training_set)
        train = features.batch_from_frame(frames["train"])
        train = train.take(frames["train"]["is_example"].to_numpy(dtype=bool))
        y_train = frames["train"]["will_purchase"].to_numpy(dtype=np.int64)[
            frames["train"]["is_example"].to_numpy(dtype=bool)
        ]
        params = config.model_dump()
        model = models.make_model(algorithm, **params)
        model.log = context.log.info
        context.log.info(f"fitting {algorithm} on {len(train):,} prefixes, params {params}")
        began = time.perf_counter()
        model.fit(train, y_train)
        fit_seconds = time.perf_counter() - began

        window = training_set["window"]
        validation = features.batch_from_frame(frames["validation"])
        y_validation = dataset.labels(validation.events)
        threshold = metrics.choose_threshold(y_validation, model.predict_proba(validation))
        validation_scores = metrics.scores(y_validation, model.predict_proba(validation), threshold)
        test = features.batch_from_frame(frames["test"])
        began = time.perf_counter()
        p_test = model.predict_proba(test)
        score_seconds = time.perf_counter() - began
        evaluation = metrics.evaluate(
            dataset.labels(test.events),
            p_test,
            threshold,
            test.events["prefix_length"].to_numpy(),
            dataset.session_days(test.events).to_numpy(),
        )
        manifest = models.register_model(
            Registry(settings.registry),
            model,
            metrics=evaluation.overall,
            training_window=window,
            extra={"validation": validation_scores, "kind": kind},
        )
        context.log.info(f"registered {manifest.version}")
        result = {
            "algorithm": algorithm,
            "version": manifest.version,
            "window": window,
            "test": evaluation.overall,
            "validation": validation_scores,
            "fit_seconds": fit_seconds,
            "prefixes_per_second": len(test) / max(score_seconds, 1e-9),
            "slices": evaluation.slices.to_dict("records"),
            "calibration": evaluation.calibration.to_dict("records"),
        }
        return Output(
            result,
            metadata={
                "version": MetadataValue.text(manifest.version),
                **{m: float(evaluation.overall[m]) for m in METRIC_COLUMNS},
                "fit_seconds": float(fit_seconds),
                "train_prefixes": len(train),
                "slices": MetadataValue.md(slices_markdown(evaluation.slices)),
            },
        )

    return candidate


def build_evaluation_asset(settings: Settings) -> AssetsDefinition:
    specs = [
        AssetCheckSpec(
            "beats_logistic_pr_auc",
            asset=EVALUATION,
            description="The candidate chosen on the validation day beats logistic "
            "regression's test PR AUC by the configured margin (pr_auc_margin).",
        ),
        AssetCheckSpec(
            "no_leakage",
            asset=EVALUATION,
            description="Features recomputed from int_events_sessionized, cut strictly before "
            "the first purchase, equal the training features for a sample of sessions.",
        ),
        AssetCheckSpec(
            "calibration_bounded",
            asset=EVALUATION,
            description="The chosen candidate's expected calibration error on the test day is "
            "at most max_calibration_error.",
        ),
    ]

    @warehouse_asset(
        name=EVALUATION,
        ins={
            "training_set": AssetIn(TRAINING_SET),
            **{model_asset_name(a): AssetIn(model_asset_name(a)) for a in ALGORITHMS},
        },
        group_name=GROUP,
        kinds={"python"},
        check_specs=specs,
        description="Leaderboard of every candidate beside the baselines: the best chosen on "
        "the validation day's PR AUC, then reported and gated on the test day (slices, "
        "calibration, the promotion gates as checks).",
    )
    def conversion_evaluation(
        context: AssetExecutionContext,
        config: EvaluationConfig,
        training_set: dict,
        conversion_model_majority: dict,
        conversion_model_logistic: dict,
        conversion_model_hgb: dict,
        conversion_model_gru: dict,
    ) -> Iterator:
        given = (
            conversion_model_majority,
            conversion_model_logistic,
            conversion_model_hgb,
            conversion_model_gru,
        )
        results = {r["algorithm"]: r for r in given}
        if set(results) != set(ALGORITHMS):  # the signature above must follow ALGORITHMS
            raise Failure(description=f"expected models {ALGORITHMS}, got {sorted(results)}")
        results = {a: results[a] for a in ALGORITHMS}
        days = {r["window"]["test_day"] for r in results.values()}
        if len(days) != 1:
            raise Failure(
                description=f"models were scored on different test days {sorted(days)}: "
                "rematerialize every conversion model after the training set.",
                allow_retries=False,
            )
        best = best_candidate(results)
        chosen = results[best]
        leaderboard = leaderboard_markdown(results, best)
        frames = split_frames(training_set)
        leak_passed, leak_reason, n_sampled = leakage(
            context.resources.warehouse, frames, config.leakage_sessions
        )
        outcome = {
            "beats_logistic_pr_auc": gates.beats_baseline(
                chosen["test"], results["logistic"]["test"], config.pr_auc_margin
            ),
            "no_leakage": (leak_passed, leak_reason),
            "calibration_bounded": gates.calibration_bounded(
                chosen["test"], config.max_calibration_error
            ),
        }
        for name, (passed, reason) in outcome.items():
            context.log.info(f"gate {name}: {'pass' if passed else 'FAIL'} — {reason}")
        report = gates_report(leaderboard, best, outcome)
        url = write_run_report(settings, LEADERBOARD_REPORT, context.run_id, report + "\n")
        slices = pd.DataFrame(chosen["slices"])
        yield Output(
            {
                "best": best,
                "version": chosen["version"],
                "test_day": chosen["window"]["test_day"],
                "metrics": chosen["test"],
                "gates": {n: list(v) for n, v in outcome.items()},
                # the champion step checks other candidates' calibration against the same limit
                "max_calibration_error": config.max_calibration_error,
                "leaderboard": leaderboard,
                "selection": selection_table(results),
                # every model's results, for the champion step (same run's candidates)
                "results": results,
                # the run whose training set this was: the champion reads its test day there
                "training_set_run": Handoff(settings.handoff_root).input_run(context, TRAINING_SET),
            },
            metadata={
                "leaderboard": MetadataValue.md(report),
                "best_algorithm": MetadataValue.text(best),
                "best_version": MetadataValue.text(chosen["version"]),
                "validation_day": MetadataValue.text(chosen["window"]["validation_day"]),
                "test_day": MetadataValue.text(chosen["window"]["test_day"]),
                "validation_pr_auc": float(chosen["validation"]["pr_auc"]),
                "selection": MetadataValue.json(selection_table(results)),
                **{m: float(chosen["test"][m]) for m in METRIC_COLUMNS},
                "logistic_pr_auc": float(results["logistic"]["test"]["pr_auc"]),
                "calibration": MetadataValue.md(
                    calibration_markdown(pd.DataFrame(chosen["calibration"]))
                ),
                "slices": MetadataValue.md(slices_markdown(slices)),
                "report": MetadataValue.url(url),
            },
        )
        details = {
            "beats_logistic_pr_auc": {
                "candidate_pr_auc": float(chosen["test"]["pr_auc"]),
                "logistic_pr_auc": float(results["logistic"]["test"]["pr_auc"]),
                "margin": config.pr_auc_margin,
            },
            "no_leakage": {"sessions_sampled": n_sampled},
            "calibration_bounded": {
                "ece": float(chosen["test"]["ece"]),
                "limit": config.max_calibration_error,
            },
        }
        for name, (passed, reason) in outcome.items():
            yield AssetCheckResult(
                asset_key=EVALUATION,
                check_name=name,
                passed=passed,
                severity=AssetCheckSeverity.ERROR,
                description=reason,
                metadata={"candidate": MetadataValue.text(best), **details[name]},
            )

    return conversion_evaluation


def build_conversion_assets(
    settings: Settings, partitions_def: PartitionsDefinition
) -> list[AssetsDefinition]:
    """Every conversion asset (checks included, on conversion_evaluation), group `conversion`."""
    return [
        build_training_set_asset(settings),
        *(build_candidate_asset(settings, a) for a in ALGORITHMS),
        build_evaluation_asset(settings),
        build_champion_asset(settings),
        build_predictions_asset(settings, partitions_def),
    ]
