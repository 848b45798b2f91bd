"""Session conversion in Dagster: training set -> candidates -> evaluation + gates -> champion
-> daily predictions. The ML itself lives in `ml.conversion`; these assets move data between
the warehouse, the registry and files under SKIFF_HOME, and show the results in the UI.

Hand-over between steps is files under `$SKIFF_HOME/artifacts/conversion/` (the split as
Parquet, one JSON per candidate, the evaluation), so any IO manager or executor works and a
step can be rerun alone. Models go only through the registry (`settings.registry`).
"""

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    BackfillPolicy,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    PartitionsDefinition,
    asset,
)
from pydantic import Field

from ml.conversion import gates
from orchestration.assets.ingestion import partition_days
from orchestration.sql import date_sql
from skiff.settings import Settings

GROUP = "conversion"
PROBLEM = "conversion"
EXAMPLES = AssetKey("conversion_examples")
TRAINING_SET = "conversion_training_set"
EVALUATION = "conversion_evaluation"
CHAMPION = "conversion_champion"
PREDICTIONS = "conversion_predictions"
ALGORITHMS = ("majority", "logistic", "hgb", "gru")
BASELINES = ("majority", "logistic")
CANDIDATES = ("hgb", "gru")
CHECKS = ("beats_logistic_pr_auc", "no_leakage", "calibration_bounded")
METRIC_COLUMNS = ("roc_auc", "pr_auc", "log_loss", "brier", "f1", "ece", "threshold")

PREDICTION_COLUMNS: dict[str, str] = {
    "session_key": "varchar",
    "session_id": "varchar",
    "session_day": "date",
    "prefix_length": "integer",
    "event_at": "timestamp",
    "purchase_probability": "double",
    "model_version": "varchar",
    "algorithm": "varchar",
}


def model_asset_name(algorithm: str) -> str:
    return f"conversion_model_{algorithm}"


def work_dir(settings: Settings) -> Path:
    return settings.artifacts / "conversion"


def leaderboard_path(settings: Settings) -> Path:
    """The latest leaderboard as markdown, for the command line's summary."""
    return settings.reports / "conversion" / "leaderboard.md"


# --- configuration ----------------------------------------------------------------------------


class TrainingSetConfig(Config):
    train_days: int = Field(default=14, description="Days in the training window.")
    test_day: str | None = Field(
        default=None,
        description="YYYY-MM-DD test day (validation = the day before, training = the "
        "train_days before that). Default: the latest day of conversion_examples with both "
        "buying and non-buying sessions.",
    )
    max_prefixes_per_session: int | None = Field(
        default=None,
        description="Training examples per session: all prefixes (default) or at most this "
        "many, chosen by a seeded hash. Validation and test always use every prefix.",
    )
    sample_seed: int = Field(default=0, description="Seed of the prefix sample.")


class MajorityConfig(Config):
    pass


class LogisticConfig(Config):
    seed: int = 0
    C: float = Field(default=1.0, description="Inverse L2 regularization strength.")
    max_iter: int = 2000


class HGBConfig(Config):
    seed: int = 0
    max_iter: int = Field(default=200, description="Boosting iterations.")
    learning_rate: float = 0.1
    max_leaf_nodes: int = 31
    l2_regularization: float = 0.0


class GRUConfig(Config):
    seed: int = 0
    hidden: int = 32
    embedding: int = 8
    epochs: int = Field(default=4, description="Passes over the training sessions.")
    batch_sessions: int = 256
    learning_rate: float = 3e-3
    max_categories: int = 200


CONFIGS: dict[str, type[Config]] = {
    "majority": MajorityConfig,
    "logistic": LogisticConfig,
    "hgb": HGBConfig,
    "gru": GRUConfig,
}


class EvaluationConfig(Config):
    pr_auc_margin: float = Field(
        default=gates.PR_AUC_MARGIN,
        description="Gate: the best candidate's test PR AUC must exceed logistic regression's "
        "by more than this.",
    )
    max_calibration_error: float = Field(
        default=gates.MAX_CALIBRATION_ERROR,
        description="Gate: the best candidate's expected calibration error on the test day.",
    )
    leakage_sessions: int = Field(
        default=200,
        description="Gate: sessions (half of them buyers) whose features are recomputed from "
        "int_events_sessionized cut strictly before the purchase.",
    )


# --- helpers ----------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise Failure(description=f"{path} is missing: materialize its upstream asset first.")
    return json.loads(path.read_text())


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    tmp.replace(path)


def _split_frames(settings: Settings) -> dict[str, pd.DataFrame]:
    folder = work_dir(settings) / "training_set"
    if not (folder / "split.json").exists():
        raise Failure(description=f"No training set in {folder}: materialize {TRAINING_SET}.")
    return {
        part: pd.read_parquet(folder / f"{part}.parquet")
        for part in ("train", "validation", "test")
    }


def _markdown(frame: pd.DataFrame, digits: int = 4) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.{digits}f}"
        return str(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += [
        "| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)
    ]
    return "\n".join(lines)


def best_candidate(results: dict[str, dict[str, Any]]) -> str:
    """The candidate with the best test PR AUC (undefined counts as worst; ties: first)."""

    def key(algorithm: str) -> float:
        value = results[algorithm]["test"]["pr_auc"]
        return -1.0 if value is None or value != value else float(value)

    return max(CANDIDATES, key=key)


def leaderboard_markdown(results: dict[str, dict[str, Any]], best: str) -> str:
    """All models on the test day, best first by PR AUC; baselines beside the candidates."""
    rows = []
    for algorithm, result in results.items():
        kind = "baseline" if algorithm in BASELINES else "candidate"
        name = f"**{algorithm}** (best)" if algorithm == best else algorithm
        metrics = result["test"]
        rows.append(
            {
                "model": name,
                "kind": kind,
                **{m: float(metrics[m]) for m in METRIC_COLUMNS},
                "fit s": float(result["fit_seconds"]),
                "version": f"`{result['version']}`",
            }
        )
    frame = pd.DataFrame(rows).sort_values("pr_auc", ascending=False, na_position="last")
    day = next(iter(results.values()))["window"]["test_day"]
    return f"Test day {day} (F1 at the threshold chosen on the validation day)\n\n" + _markdown(
        frame
    )


# --- assets -----------------------------------------------------------------------------------


def build_training_set_asset(settings: Settings) -> AssetsDefinition:
    @asset(
        name=TRAINING_SET,
        deps=[EXAMPLES],
        group_name=GROUP,
        kinds={"python", "parquet"},
        pool="warehouse",
        required_resource_keys={"warehouse"},
        description="conversion_examples split by time: a training window, a validation day "
        "and a test day (never random; a session sits on one day, so never on two sides).",
    )
    def conversion_training_set(
        context: AssetExecutionContext, config: TrainingSetConfig
    ) -> MaterializeResult:
        from ml.conversion import dataset

        warehouse = context.resources.warehouse
        table = f"{warehouse.models_schema}.conversion_examples"
        labels = warehouse.query(f"select distinct session_day, will_purchase from {table}")
        if labels.empty:
            raise Failure(description=f"{table} is empty: materialize the marts first.")
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
            raise Failure(description=str(exc)) from exc
        train = split.train.assign(
            is_example=dataset.select_prefixes(
                split.train, config.max_prefixes_per_session, config.sample_seed
            )
        )
        folder = work_dir(settings) / "training_set"
        folder.mkdir(parents=True, exist_ok=True)
        parts = {"train": train, "validation": split.validation, "test": split.test}
        summary: dict[str, Any] = {"window": split.window, "parts": {}}
        for name, part in parts.items():
            part.to_parquet(folder / f"{name}.parquet", index=False)
            summary["parts"][name] = {
                "prefixes": len(part),
                "sessions": int(part["session_key"].nunique()),
                "positive_rate": float(part["will_purchase"].mean()) if len(part) else 0.0,
            }
        summary["parts"]["train"]["examples"] = int(train["is_example"].sum())
        _write_json(folder / "split.json", summary)
        table_md = _markdown(
            pd.DataFrame([{"part": k, **v} for k, v in summary["parts"].items()]).fillna(0)
        )
        return MaterializeResult(
            metadata={
                **{k: MetadataValue.text(v) for k, v in split.window.items()},
                "parts": MetadataValue.md(table_md),
                "train_examples": int(train["is_example"].sum()),
                "dagster/row_count": sum(len(p) for p in parts.values()),
            }
        )

    return conversion_training_set


def build_candidate_asset(settings: Settings, algorithm: str) -> AssetsDefinition:
    config_type = CONFIGS[algorithm]
    kind = "baseline" if algorithm in BASELINES else "candidate"

    @asset(
        name=model_asset_name(algorithm),
        deps=[TRAINING_SET],
        group_name=GROUP,
        kinds={"pytorch" if algorithm == "gru" else "scikitlearn"},
        description=f"The {algorithm} {kind}: trained on the training window, threshold chosen "
        "on the validation day, scored on the test day, registered as a new version.",
    )
    def candidate(context: AssetExecutionContext, config: config_type) -> MaterializeResult:
        import numpy as np

        from ml.conversion import dataset, features, metrics, models
        from ml.registry import Registry

        frames = _split_frames(settings)
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

        window = json.loads((work_dir(settings) / "training_set" / "split.json").read_text())[
            "window"
        ]
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
        _write_json(work_dir(settings) / "candidates" / f"{algorithm}.json", result)
        return MaterializeResult(
            metadata={
                "version": MetadataValue.text(manifest.version),
                **{m: float(evaluation.overall[m]) for m in METRIC_COLUMNS},
                "fit_seconds": float(fit_seconds),
                "train_prefixes": len(train),
                "slices": MetadataValue.md(_markdown(evaluation.slices)),
            }
        )

    return candidate


def _leakage(
    warehouse: Any, frames: dict[str, pd.DataFrame], n_sessions: int
) -> tuple[bool, str, int]:
    """Recompute sampled sessions' features from raw events cut before the purchase."""
    from ml.conversion import features, gates

    every = pd.concat(frames.values(), ignore_index=True)
    sessions = every.groupby("session_key")["will_purchase"].first().reset_index()
    sessions["h"] = pd.util.hash_pandas_object(sessions["session_key"], index=False).to_numpy()
    sessions = sessions.sort_values("h")
    half = max(n_sessions // 2, 1)
    chosen = pd.concat(
        [
            sessions[sessions["will_purchase"]].head(half),
            sessions[~sessions["will_purchase"]].head(n_sessions - half),
        ]
    )["session_key"].tolist()
    keys = ", ".join("'" + key.replace("'", "''") + "'" for key in chosen)
    raw = warehouse.query(
        "select session_key, event_index, event_type, product_action, product_sku, event_at,"
        f" category, price_bucket from {warehouse.models_schema}.int_events_sessionized"
        f" where session_key in ({keys}) order by session_key, event_index"
    )
    rows, index = [], []
    for key, events in raw.groupby("session_key", sort=True):
        kept = features.before_first_purchase(events.to_dict("records"))
        for k in range(1, len(kept) + 1):
            rows.append(features.prefix_features(kept[:k]))
            index.append((key, k))
    recomputed = pd.DataFrame(
        rows, index=pd.MultiIndex.from_tuples(index, names=["session_key", "prefix_length"])
    )
    sample = features.ordered_events(every[every["session_key"].isin(chosen)])
    training = features.batch_features(sample)
    training.index = pd.MultiIndex.from_frame(sample[["session_key", "prefix_length"]])
    passed, reason = gates.no_leakage(training, recomputed)
    return passed, reason, len(chosen)


def build_evaluation_asset(settings: Settings) -> AssetsDefinition:
    specs = [
        AssetCheckSpec(
            "beats_logistic_pr_auc",
            asset=EVALUATION,
            description="The best candidate's test PR AUC beats logistic regression's by the "
            "configured margin (pr_auc_margin).",
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
            description="The best candidate's expected calibration error on the test day is at "
            "most max_calibration_error.",
        ),
    ]

    @asset(
        name=EVALUATION,
        deps=[TRAINING_SET, *(model_asset_name(a) for a in ALGORITHMS)],
        group_name=GROUP,
        kinds={"python"},
        check_specs=specs,
        pool="warehouse",
        required_resource_keys={"warehouse"},
        description="Leaderboard of every candidate beside the baselines on the test day, the "
        "best candidate's slices and calibration, and the promotion gates as checks.",
    )
    def conversion_evaluation(context: AssetExecutionContext, config: EvaluationConfig) -> Iterator:
        results = {
            a: _read_json(work_dir(settings) / "candidates" / f"{a}.json") for a in ALGORITHMS
        }
        days = {r["window"]["test_day"] for r in results.values()}
        if len(days) != 1:
            raise Failure(
                description=f"models were scored on different test days {sorted(days)}: "
                "rematerialize every conversion model after the training set."
            )
        best = best_candidate(results)
        chosen = results[best]
        leaderboard = leaderboard_markdown(results, best)
        frames = _split_frames(settings)
        leak_passed, leak_reason, n_sampled = _leakage(
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
        report = (
            leaderboard
            + "\n\nGates for "
            + best
            + ":\n\n"
            + "\n".join(f"- {'pass' if p else 'FAIL'} `{n}`: {r}" for n, (p, r) in outcome.items())
        )
        path = leaderboard_path(settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(report + "\n")
        _write_json(
            work_dir(settings) / "evaluation.json",
            {
                "best": best,
                "version": chosen["version"],
                "test_day": chosen["window"]["test_day"],
                "metrics": chosen["test"],
                "gates": {n: list(v) for n, v in outcome.items()},
                "leaderboard": leaderboard,
            },
        )
        slices = pd.DataFrame(chosen["slices"])
        yield MaterializeResult(
            metadata={
                "leaderboard": MetadataValue.md(report),
                "best_algorithm": MetadataValue.text(best),
                "best_version": MetadataValue.text(chosen["version"]),
                "test_day": MetadataValue.text(chosen["window"]["test_day"]),
                **{m: float(chosen["test"][m]) for m in METRIC_COLUMNS},
                "logistic_pr_auc": float(results["logistic"]["test"]["pr_auc"]),
                "calibration": MetadataValue.md(_markdown(pd.DataFrame(chosen["calibration"]))),
                "slices": MetadataValue.md(_markdown(slices)),
                "leaderboard_path": MetadataValue.path(str(path)),
            }
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

        evaluation = _read_json(work_dir(settings) / "evaluation.json")
        registry = Registry(settings.registry)
        candidate = evaluation["version"]
        current = registry.role(PROBLEM, "champion")
        champion_metrics: dict[str, float] | None = None
        note = ""
        if current is not None and current.version != candidate:
            try:
                model = models.load_registered(registry, current.version)
                test = features.batch_from_frame(_split_frames(settings)["test"])
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
    @asset(
        name=PREDICTIONS,
        deps=[CHAMPION, EXAMPLES],
        group_name=GROUP,
        kinds={"python", "duckdb" if settings.env == "local" else "snowflake"},
        partitions_def=partitions_def,
        backfill_policy=BackfillPolicy.single_run(),
        pool="warehouse",
        required_resource_keys={"warehouse"},
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
