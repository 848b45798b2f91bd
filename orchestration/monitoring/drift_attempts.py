"""The drift sensor's attempts at an episode: their run keys, what became of them, the cool-down.

An episode (problem, first day) is retrained by attempts, found by their run keys (`run_key`:
`drift-<problem>-<first day>`, then `-<n>` for attempt n >= 2), so no sensor state is needed
for them. `attempts` reads each key's runs into an `Attempt`: running, adapted (succeeded and
its champion step admitted a model), refused (succeeded with the gates recording `kept` or `no
champion`) or failed (failed or canceled, or succeeded without its champion step recording a
decision: a run whose champion was skipped or deselected adapted nothing, so it is retried
after the cool-down like a failure, never taken as settling the episode).
`retrain_cooldown_hours` is how long after an attempt that did not adapt the next one may come
(SKIFF_RETRAIN_COOLDOWN_HOURS). What to do with them is decided in
orchestration/monitoring/sensors.py.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterRunStatus,
    RunsFilter,
    SensorEvaluationContext,
)

from skiff.settings import Settings

RUN_KEY_TAG = "dagster/run_key"
# The asset of each retraining job whose materialization records the gates' decision.
CHAMPIONS = {"conversion": "conversion_champion", "recommender": "recommender_champion"}
# Decisions of a champion step that admitted nothing: the gates refused the candidate.
REFUSED_DECISIONS = ("kept", "no champion")
COOLDOWN_VARIABLE = "SKIFF_RETRAIN_COOLDOWN_HOURS"
FINISHED = (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)


def retrain_cooldown_hours(settings: Settings) -> int:
    """Hours after a retraining attempt that did not adapt the model before the next one
    (SKIFF_RETRAIN_COOLDOWN_HOURS, read and checked with the other automation settings)."""
    return settings.automation.retrain_cooldown_hours


def run_key(problem: str, first: dt.date, attempt: int) -> str:
    """Attempt 1 keeps the key the sensor always used; later attempts carry their number."""
    base = f"drift-{problem}-{first.isoformat()}"
    return base if attempt == 1 else f"{base}-{attempt}"


@dataclass(frozen=True)
class Attempt:
    """What became of one attempt (one run key; a key re-run by hand has several runs)."""

    number: int
    run_id: str
    state: str  # "running" | "adapted" | "failed" | "refused"
    ended: float | None  # epoch seconds, when finished
    why: str


def _decision(context: SensorEvaluationContext, problem: str, run_id: str) -> str | None:
    """The decision the run's champion step recorded, or None when it recorded none (only the
    run's materializations are read, not its whole log)."""
    champion = AssetKey(CHAMPIONS[problem])
    decision = None
    records = context.instance.get_records_for_run(
        run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION
    ).records
    for record in records:
        materialization = record.event_log_entry.dagster_event.event_specific_data.materialization
        if materialization.asset_key == champion and "decision" in materialization.metadata:
            decision = str(materialization.metadata["decision"].value)
    return decision


def _attempt(context: SensorEvaluationContext, problem: str, number: int, records) -> Attempt:
    """The state of one attempt from its runs: running wins, then adapted, else the latest."""

    def ended(record) -> float:
        return record.end_time or record.update_timestamp.timestamp()

    states = []
    for record in records:
        run = record.dagster_run
        if run.status not in FINISHED:
            why = f"run {run.run_id} is {run.status.value.lower()}"
            return Attempt(number, run.run_id, "running", None, why)
        if run.status == DagsterRunStatus.SUCCESS:
            decision = _decision(context, problem, run.run_id)
            if decision is None:  # its champion step never ran: nothing was decided or admitted
                why = (
                    f"run {run.run_id} succeeded but recorded no {CHAMPIONS[problem]} decision "
                    "(the champion step did not run)"
                )
                states.append(Attempt(number, run.run_id, "failed", ended(record), why))
                continue
            if not decision.startswith(REFUSED_DECISIONS):
                why = f"run {run.run_id} succeeded ({decision})"
                states.append(Attempt(number, run.run_id, "adapted", ended(record), why))
                continue
            why = f"run {run.run_id} succeeded but its gates admitted nothing ({decision})"
            states.append(Attempt(number, run.run_id, "refused", ended(record), why))
        else:
            what = "failed" if run.status == DagsterRunStatus.FAILURE else "was canceled"
            why = f"run {run.run_id} {what}"
            states.append(Attempt(number, run.run_id, "failed", ended(record), why))
    adapted = [a for a in states if a.state == "adapted"]
    return adapted[0] if adapted else max(states, key=lambda a: a.ended or 0.0)


def attempts(context: SensorEvaluationContext, problem: str, first: dt.date) -> list[Attempt]:
    """The attempts made at the episode, in order (found by their run keys)."""
    out: list[Attempt] = []
    while True:
        key = run_key(problem, first, len(out) + 1)
        records = context.instance.get_run_records(filters=RunsFilter(tags={RUN_KEY_TAG: key}))
        if not records:
            return out
        out.append(_attempt(context, problem, len(out) + 1, records))
