"""The recommender champion and its batch predictions.

- `recommender_champion` is the offline side of release by evidence (`ml.release`); it never
  promotes. Without a champion it bootstraps one at once: the proposed candidate if its gating
  checks pass, else POP (a baseline counts, so a small shop is served from day one); with
  `bootstrap: baseline`, POP first and the proposed candidate admitted as challenger. With a
  champion, a proposed candidate whose gating checks pass and that is at least as good (HR@20)
  as the champion on the same test days (the champion is re-evaluated when it was measured on
  other days) is admitted as challenger, for the rollout controller to ramp; a challenger in its
  rollout is not replaced, except by an operator's override (`challenger`; on an empty registry
  the bootstrap runs first, then the override is admitted against it). Publishing ships
  each role's model and lookup in one pointer swap (the lookup is a file of the version), so
  the server never pairs a model with another model's lookup.
- `recommender_next_items` loads the published champion's lookup (verified) into the
  warehouse table `recommender_next_items`, for analysts and monitoring.
"""

import datetime as dt
import functools

from dagster import AssetExecutionContext, AssetIn, AssetsDefinition, Failure, MetadataValue, Output

from orchestration.handoff import Handoff
from orchestration.policy import asset, warehouse_asset
from orchestration.recommendation.config import (
    BASELINE,
    BETTER_THAN_GATES,
    BOOTSTRAP_MODES,
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


def failed_gates(entry: dict, skip: tuple[str, ...] = ()) -> list[str]:
    """The gating checks a candidate failed, leaving out `skip`."""
    return [
        c["name"]
        for c in entry["checks"]
        if c["gating"] and not c["passed"] and c["name"] not in skip
    ]


def first_champion(
    candidates: dict, proposed: str, mode: str
) -> tuple[str | None, str | None, str]:
    """Who serves a problem without a champion: (champion, challenger, reason), as algorithms.
    The proposed candidate qualifies when its gating checks pass (so it beats POP); POP when
    the checks other than beating itself pass."""
    failed = {
        proposed: failed_gates(candidates[proposed]),
        BASELINE: failed_gates(candidates[BASELINE], BETTER_THAN_GATES),
    }
    order = list(dict.fromkeys([proposed, BASELINE] if mode == "best" else [BASELINE, proposed]))
    champion = next((a for a in order if not failed[a]), None)
    both = mode == "baseline" and champion == BASELINE and proposed != BASELINE
    challenger = proposed if both and not failed[proposed] else None
    said = {a: ", ".join(failed[a]) for a in order}
    reason = "; ".join(
        f"{a}: gating check(s) failed: {said[a]}" if said[a] else f"{a}: gating checks passed"
        for a in order
    )
    return champion, challenger, reason


def _hr(candidates: dict, name: str) -> float:
    return float(candidates[name]["row"]["hr_at_20"])


def build_champion_asset(settings: Settings) -> AssetsDefinition:
    published = settings.published

    @asset(
        name=CHAMPION,
        group_name=GROUP,
        ins={"evaluation": AssetIn(EVALUATION)},
        # read from the run the proposed candidate was trained in, not the latest: a
        # champion-only run compares on that candidate's own test days
        deps=[TRAINING_SET],
        kinds={"python"},
        description="Release by evidence, offline side: bootstraps a first champion (POP "
        "counts); otherwise admits a candidate that passes the gating checks and is at least as "
        "good as the champion on the same test days as challenger, for the rollout controller "
        "to ramp. Publishes both roles, each with its last-item lookup in one pointer swap.",
    )
    def recommender_champion(
        context: AssetExecutionContext,
        config: ChampionConfig,
        evaluation: dict,
    ) -> Output[dict]:
        from ml import release
        from ml.registry import Registry

        candidates = evaluation["candidates"]
        for field, value in (("candidate", config.candidate), ("challenger", config.challenger)):
            if value and value not in candidates:
                raise Failure(
                    description=f"{field}: no candidate {value!r}; have {sorted(candidates)}",
                    allow_retries=False,
                )
        if config.bootstrap not in BOOTSTRAP_MODES:
            raise Failure(
                description=f"bootstrap must be one of {BOOTSTRAP_MODES}, got {config.bootstrap!r}",
                allow_retries=False,
            )
        registry = Registry(settings.registry)
        url = str(published)
        admit = functools.partial(release.admit, registry, url, PROBLEM)
        before = registry.roles(PROBLEM)
        current = registry.role(PROBLEM, "champion")
        name = config.challenger or config.candidate or evaluation["best"]
        proposed = candidates[name]
        training_set = Handoff(settings.handoff_root).load_recorded(
            proposed.get("training_set_run"), TRAINING_SET, f"{EVALUATION} ({name})"
        )
        window = training_set["window"]
        days = f"{window['test_start']} .. {window['test_end']}"
        evidence = {"test_days": days, "algorithm": name, "hr_at_20": _hr(candidates, name)}
        current_hr = None
        decided_by = "offline gates"

        decision, reasons, bootstrapped = "", [], current is None
        if bootstrapped:
            base = config.candidate or evaluation["best"]
            first, second, why = first_champion(candidates, base, config.bootstrap)
            decision, reasons = "no champion", [f"nothing qualifies as first champion — {why}"]
            if first is not None:
                decision, decided_by = "bootstrap", "bootstrap"
                reasons = [
                    f"first champion ({config.bootstrap}): {first} HR@20 "
                    f"{_hr(candidates, first):.4f} on {days} — {why}"
                ]
                first_evidence = {
                    **evidence,
                    "algorithm": first,
                    "hr_at_20": _hr(candidates, first),
                }
                release.bootstrap(
                    registry,
                    url,
                    PROBLEM,
                    candidates[first]["version"],
                    reasons[0],
                    evidence=first_evidence,
                )
            if second is not None and not config.challenger:
                reasons.append(f"{second} admitted as challenger: its gating checks passed")
                admit(candidates[second]["version"], reasons[-1], evidence=evidence)
                decision += " + admitted as challenger"
            current, before = registry.role(PROBLEM, "champion"), registry.roles(PROBLEM)
        if config.challenger:
            decided_by = "operator/override"
            failed = failed_gates(proposed, BETTER_THAN_GATES)
            if current is None or proposed["version"] in before.values() or failed:
                why = (
                    "no champion to challenge: nothing qualifies as first champion"
                    if current is None
                    else f"gating check(s) failed: {', '.join(failed)}"
                    if failed
                    else f"{name} is already the champion or challenger"
                )
                raise Failure(description=f"override refused: {why}", allow_retries=False)
            decision = (f"{decision} + " if bootstrapped else "") + (
                "admitted as challenger (override)"
            )
            reasons.append(f"operator override: {name} admitted without the 'better than' gates")
            admit(proposed["version"], reasons[-1], decided_by=decided_by, evidence=evidence)
        elif bootstrapped:
            pass
        elif proposed["version"] in before.values():
            role = next(r for r, v in before.items() if v == proposed["version"])
            decision, reasons = "unchanged", [f"the proposed version is already the {role}"]
        else:
            reasons = []
            if failed := failed_gates(proposed):
                reasons.append(f"gating check(s) failed: {', '.join(failed)}")
            current_hr = _champion_hr(registry, current, training_set, context)
            evidence["champion_hr_at_20"] = current_hr
            if _hr(candidates, name) < current_hr:
                reasons.append(
                    f"HR@20 {_hr(candidates, name):.4f} is below the champion's "
                    f"{current_hr:.4f} on the same test days"
                )
            rollout = release.load_state(registry, PROBLEM)
            if not reasons and rollout.challenger is not None:
                reasons.append(
                    f"challenger {rollout.challenger} is still in its rollout (stage "
                    f"{rollout.stage_name}): the candidate waits for its promotion or rollback"
                )
            decision = "kept" if reasons else "admitted as challenger"
            if not reasons:
                reasons = [
                    f"{name} HR@20 {_hr(candidates, name):.4f} on {days}, gates passed; "
                    f"champion had {current_hr:.4f}"
                ]
                admit(proposed["version"], reasons[0], evidence=evidence)
        roles = registry.roles(PROBLEM)
        champion = registry.role(PROBLEM, "champion")
        challenger = registry.role(PROBLEM, "challenger")
        why = "\n".join(f"- {r}" for r in reasons)
        if champion is None:
            context.log.warning(f"no champion: {'; '.join(reasons)}")
            return Output(
                {"version": None}, metadata={"decision": decision, "why": MetadataValue.md(why)}
            )
        context.log.info(f"{decision}: champion {champion.version} ({'; '.join(reasons)})")
        return Output(
            {"version": champion.version, "algorithm": champion.algorithm},
            metadata={
                "decision": decision,
                "decided_by": decided_by,
                "why": MetadataValue.md(why),
                "champion": champion.version,
                "champion_algorithm": champion.algorithm,
                "challenger": challenger.version if challenger else "none",
                "challenger_algorithm": challenger.algorithm if challenger else "none",
                "proposed": proposed["version"],
                "proposed_role": next(
                    (r for r, v in roles.items() if v == proposed["version"]), "none"
                ),
                "proposed_hr_at_20": _hr(candidates, name),
                "champion_hr_at_20": current_hr
                if current_hr is not None
                else champion.metrics.get("hr_at_20", float("nan")),
                # a string join: `published` is a path, or a URL when artifacts are remote
                "published_to": MetadataValue.path(f"{published}/{PROBLEM}"),
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
    with registry.fetched(PROBLEM, current.version) as folder:
        model = Recommender.load(folder)
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

        from ml.registry import published_copy

        if champion.get("version") is None:
            return Output(None, metadata={"rows": 0, "why": "no champion yet"})
        with published_copy(published, PROBLEM) as (manifest, folder):
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
