"""The serving log through the warehouse: a real log file -> `serving_log` (real Dagster, real
DuckDB file) -> the experiment dbt models (real dbt) -> marts equal to the pandas twin.

The log is written here as the server writes it (one JSON object a line, the server's field
set), with the faults a real one has: an exposure logged twice, feedback for an exposure of
another replica, a last line cut short by a crash, a wrong-typed field, an unknown kind and the
other reasons of `ml.serving_log.REASONS`. Two server versions wrote it: the lines of some
sessions lack the off-policy and interleaving fields (issue #14), the others log them, and one
experiment switches from A/B to interleaving while some of its sessions are under way.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from dagster import (
    AssetKey,
    AssetSelection,
    DagsterInstance,
    Definitions,
    define_asset_job,
)

from ml import serving_log
from ml.experiments import SESSION_COLUMNS, assign, log_file, sessions_table
from orchestration.dbt.assets import build_dbt_assets, build_experiment_dbt_assets
from orchestration.dbt.project import build_dbt_project
from orchestration.experiments import log as log_asset
from orchestration.experiments.log import (
    DAY_COLUMN,
    build_serving_log_asset,
    serving_log_partitions,
)
from orchestration.partitions import daily_partitions
from orchestration.resources import build_resources
from skiff.settings import Settings, ensure_home, load_settings

DAY = dt.date(2026, 3, 2)
START = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
RAW = ("serving_exposures", "serving_feedback", "serving_shadows", "serving_log_quarantine")
REC = "recommender:r1:vs:r2"
CONV = "conversion:c1:vs:c2"
IL = "recommender:r1:il:r3"  # switches from A/B to interleaving (same stage and weights)
# The recommender ramps from 25% to 50% half-way: two periods of one experiment.
CONV_WEIGHTS = {"challenger": 1, "champion": 1}
PERIODS = [
    ("25%", {"challenger": 0.25, "champion": 0.75}),
    ("50%", {"challenger": 0.5, "champion": 0.5}),
]
VERSIONS = {
    REC: {"champion": "r1", "challenger": "r2"},
    CONV: {"champion": "c1", "challenger": "c2"},
    IL: {"champion": "r1", "challenger": "r3"},
}
# The fields a server before issue #14 did not log.
NEW_FIELDS = ("mode", "context", "propensities", "teams", "explored", "logging_policy")
POLICY = "shuffle:top20:0.05"


def _at(seconds: float) -> str:
    return (START + dt.timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


def _exposure(rng, problem, experiment, stage, weights, session, seconds, *, error=False) -> dict:
    variant = None
    if experiment:
        order = sorted(weights, key=lambda v: v != "challenger")  # challenger first, as served
        variant = assign(experiment, session, [(v, weights[v]) for v in order])
    record = {
        "kind": "exposure",
        "id": f"{rng.getrandbits(128):032x}",
        "at": _at(seconds),
        "problem": problem,
        "experiment": experiment,
        "stage": stage,
        "session_id": session,
        "variant": variant or "champion",
        "role": variant or "champion",
        "model_version": VERSIONS[experiment][variant] if experiment else "r1",
        "weights": weights,
        "latency_ms": round(rng.uniform(0.5, 30), 3),
        "error": error,
        "history_events": rng.randint(1, 12),
        "history_adds": rng.randint(0, 2) if problem == "conversion" else 0,
    }
    if not error and problem == "conversion":
        record["probability"] = round(rng.random(), 4)
    elif not error:
        record.update(items=[f"sku{rng.randint(1, 50)}" for _ in range(5)], path="model")
    return record


def _logged(record: dict, rng: random.Random, mode: str) -> dict:
    """The fields of issue #14 on a recommender exposure, as the newer server logs them."""
    record["mode"] = mode
    if record["error"]:
        return record
    k = len(record["items"])
    record["context"] = [f"sku{rng.randint(1, 50)}" for _ in range(rng.randint(1, 3))]
    record["logging_policy"] = POLICY
    record["explored"] = mode == "ab" and rng.random() < 0.3
    if mode == "interleaving" and record["role"] == "challenger":
        record["teams"] = [rng.choice(serving_log.ROLES) for _ in range(k)]
    elif record["explored"]:  # a shuffled top 20: share / 20, or that plus 1 - share
        record["propensities"] = [rng.choice([0.0025, 0.9525]) for _ in range(k)]
    else:
        record["propensities"] = [0.9525 if mode == "ab" else 1.0] * k
    return record


def _feedback(exposure: dict, action: str, seconds: float, item: str | None = None) -> dict:
    record = {"kind": "feedback", "exposure_id": exposure["id"], "action": action}
    record["at"] = _at(seconds)
    return record if item is None else {**record, "item": item}


def _clicks(rng: random.Random, exposure: dict, seconds: float) -> list[tuple[float, dict]]:
    """A click on one shown item; now and then the same item again (a double click, the
    server's retry) or a second item."""
    item = rng.choice(exposure["items"])
    clicks = [(seconds, _feedback(exposure, "click", seconds, item))]
    if rng.random() < 0.3:
        clicks.append((seconds + 1, _feedback(exposure, "click", seconds + 1, item)))
    if rng.random() < 0.3:
        other = rng.choice(exposure["items"])
        clicks.append((seconds + 3, _feedback(exposure, "click", seconds + 3, other)))
    return clicks


def server_records(seed: int = 7) -> list[dict]:
    """A day of traffic in time order: three experiments (one ramping, one switching to
    interleaving), lookups outside any. The recommender sessions s0..s19 and the lookups come
    from the older server (none of the fields of issue #14); the item a click names too."""
    rng, fields = random.Random(seed), random.Random(seed + 1)
    timed: list[tuple[float, dict]] = []
    for n in range(170):
        problem, experiment = ("conversion", CONV) if 100 <= n < 150 else ("recommender", REC)
        experiment = IL if n >= 150 else experiment
        start = n * 60.0
        # sessions 160..169 of the interleaving experiment began before its switch from A/B
        steps = rng.randint(2, 4) if n >= 160 else rng.randint(1, 4)
        for step in range(steps):
            # sessions 40..49 are still browsing when the ramp moves on: rows in both periods
            period = PERIODS[int(n >= 50 or (n >= 40 and step > 0))]
            stage, weights = period if problem == "recommender" else (None, CONV_WEIGHTS)
            # every tenth session has two exposures in one millisecond (ties break by id)
            seconds = start + (0 if n % 10 == 0 and step < 2 else step * 7.5)
            exposure = _exposure(
                rng,
                problem,
                experiment,
                stage,
                weights,
                f"s{n}",
                seconds,
                error=rng.random() < 0.05,
            )
            if problem == "recommender" and n >= 20:
                mode = "ab" if n < 150 or (n >= 160 and step == 0) else "interleaving"
                exposure = _logged(exposure, fields, mode)
            timed.append((seconds, exposure))
            for action, chance in (("click", 0.35), ("add", 0.12), ("purchase", 0.05)):
                if not exposure["error"] and rng.random() < chance:
                    if action == "click" and "mode" in exposure:
                        timed.extend(_clicks(fields, exposure, seconds + 2))
                    else:
                        timed.append((seconds + 2, _feedback(exposure, action, seconds + 2)))
            if problem == "conversion" and step == 0:
                shadow = {k: exposure[k] for k in ("problem", "at")}
                shadow.update(kind="shadow", exposure_id=exposure["id"], role="challenger")
                shadow.update(model_version="c3", probability=0.5, latency_ms=1.0, error=False)
                timed.append((seconds + 0.1, shadow))
    for n in range(10):  # the product lookup: no experiment, no session
        timed.append((n * 900.0, _exposure(rng, "recommender", None, None, None, None, n * 900.0)))
    timed.sort(key=lambda pair: pair[0])
    return [record for _, record in timed]


def write_log(folder: Path, day: dt.date = DAY) -> tuple[list[dict], dict[int, str]]:
    """The day's log file; returns the valid records written and {line number: reason} of
    the lines that must be quarantined."""
    records: list = server_records()
    exposures = [r for r in records if r["kind"] == "exposure" and r["experiment"]]
    # a click of another replica's exposure: it waits in experiment_clicks too
    orphan = {**_feedback(exposures[0], "click", 10, "sku1"), "exposure_id": "f" * 32}
    ab = [r for r in exposures if r.get("propensities") and r["mode"] == "ab"]
    teamed = [r for r in exposures if r.get("teams")]
    bad = {
        "wrong_type:latency_ms": json.dumps({**exposures[3], "id": "a" * 32, "latency_ms": "12"}),
        "unknown_kind": json.dumps({"kind": "heartbeat", "at": _at(1)}),
        "missing_field:stage": json.dumps(
            {k: v for k, v in {**exposures[4], "id": "b" * 32}.items() if k != "stage"}
        ),
        "unknown_problem": json.dumps({**exposures[5], "id": "c" * 32, "problem": "search"}),
        "unknown_action": json.dumps({**_feedback(exposures[5], "like", 3)}),
        "bad_timestamp": json.dumps({**_feedback(exposures[6], "click", 3), "at": "yesterday"}),
        "wrong_type:history_events": json.dumps(
            {**exposures[7], "id": "d" * 32, "history_events": True}
        ),
        "not_json": '{"kind": "exposure", "id": ',
        "not_an_object": "[1, 2, 3]",
        "empty_line": "",
        # the fields of issue #14
        "unknown_mode": json.dumps({**ab[0], "id": "1" * 32, "mode": "bandit"}),
        "wrong_type:context": json.dumps({**ab[0], "id": "2" * 32, "context": "sku1"}),
        "wrong_type:propensities": json.dumps(
            {**ab[1], "id": "3" * 32, "propensities": [0.0] * len(ab[1]["items"])}
        ),
        "wrong_type:explored": json.dumps({**ab[2], "id": "4" * 32, "explored": "yes"}),
        "length_mismatch:propensities": json.dumps(
            {**ab[3], "id": "5" * 32, "propensities": ab[3]["propensities"][:-1]}
        ),
        "wrong_type:teams": json.dumps(
            {**teamed[0], "id": "6" * 32, "teams": ["shadow"] * len(teamed[0]["items"])}
        ),
        "length_mismatch:teams": json.dumps(
            {**teamed[1], "id": "7" * 32, "teams": [*teamed[1]["teams"], "champion"]}
        ),
    }
    lines = [json.dumps(r).encode() for r in records]
    lines.insert(40, json.dumps(orphan).encode())
    records.insert(40, orphan)
    duplicate = json.dumps(exposures[10]).encode()
    lines.insert(200, duplicate)  # the server retried a write: the same record twice
    records.insert(200, exposures[10])
    for i, (reason, text) in enumerate(bad.items()):
        lines.insert(20 + 25 * i, text.encode())
        records.insert(20 + 25 * i, reason)  # a refused line: its reason in place of a record
    lines.insert(300, b"\xff\xfe not utf-8")
    records.insert(300, "invalid_utf8")
    cut = json.dumps({**exposures[-1], "id": "e" * 32}).encode()[:60]  # crashed mid-write
    expected = {n: r for n, r in enumerate(records, start=1) if isinstance(r, str)}
    expected[len(lines) + 1] = "cut_short"
    path = log_file(folder, day)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(lines) + b"\n" + cut)
    return [r for r in records if isinstance(r, dict)], expected


def _table(settings: Settings, sql: str) -> pd.DataFrame:
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        return con.execute(sql).fetchdf()


def _raw(settings: Settings) -> dict[str, pd.DataFrame]:
    return {
        t: _table(settings, f"select * from raw.{t} order by log_day, line_number") for t in RAW
    }


def _definitions(settings: Settings) -> Definitions:
    project = build_dbt_project(settings)
    marts = build_experiment_dbt_assets(project)
    return Definitions(
        assets=[build_serving_log_asset(settings), marts],
        jobs=[
            define_asset_job("log_day", selection=[log_asset.ASSET]),
            define_asset_job("experiment_marts", selection=AssetSelection.assets(marts)),
        ],
        resources=build_resources(settings, project),
    )


def _load_day(defs: Definitions, day: dt.date, instance: DagsterInstance):
    return defs.resolve_job_def("log_day").execute_in_process(
        partition_key=day.isoformat(), instance=instance, raise_on_error=False
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One log day loaded twice, then the marts built: what each step left behind."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SKIFF_HOME", str(tmp_path_factory.mktemp("skiff")))
        patch.setenv("SKIFF_ENV", "local")
        for name in ("SKIFF_DBT_TARGET", "SKIFF_RAW_SCHEMA", "SKIFF_PARTITIONS_START"):
            patch.delenv(name, raising=False)
        settings = ensure_home(load_settings())
        records, expected = write_log(settings.home / "serving")
        defs = _definitions(settings)
        instance = DagsterInstance.ephemeral()
        first = _load_day(defs, DAY, instance)
        raw_first = _raw(settings)
        second = _load_day(defs, DAY, instance)
        raw_second = _raw(settings)
        marts = defs.resolve_job_def("experiment_marts").execute_in_process(
            instance=instance, raise_on_error=False
        )
        yield {
            "settings": settings,
            "records": records,
            "expected": expected,
            "first": first,
            "second": second,
            "raw_first": raw_first,
            "raw": raw_second,
            "marts": marts,
            "defs": defs,
            "instance": instance,
        }


def test_lines_reconcile_and_every_refused_line_keeps_its_reason(run) -> None:
    assert run["first"].success
    raw, expected = run["raw"], run["expected"]
    kinds = pd.Series([r["kind"] for r in run["records"]]).value_counts()
    assert len(raw["serving_exposures"]) == kinds["exposure"]  # the duplicate is still here
    assert len(raw["serving_feedback"]) == kinds["feedback"]
    assert len(raw["serving_shadows"]) == kinds["shadow"]
    quarantine = raw["serving_log_quarantine"]
    assert dict(zip(quarantine["line_number"], quarantine["reason"], strict=True)) == expected
    with open(log_file(run["settings"].home / "serving", DAY), "rb") as handle:
        lines = sum(1 for _ in handle)
    assert sum(len(t) for t in raw.values()) == lines == len(run["records"]) + len(expected)
    # every line number appears exactly once across the four tables
    numbers = pd.concat([t["line_number"] for t in raw.values()])
    assert sorted(numbers) == list(range(1, lines + 1))

    (check,) = run["first"].get_asset_check_evaluations()
    assert check.check_name == log_asset.RECONCILE_CHECK and check.passed
    (materialization,) = run["first"].asset_materializations_for_node(log_asset.ASSET)
    meta = materialization.metadata
    assert meta["lines"].value == lines
    assert meta["exposures"].value == kinds["exposure"]
    assert meta["quarantined"].value == len(expected)
    assert meta["quarantined_by_reason"].value == pd.Series(expected).value_counts().to_dict()


def test_records_are_loaded_with_their_types(run) -> None:
    exposures = run["raw"]["serving_exposures"]
    errors = exposures[exposures["error"]]
    assert len(errors) and errors["probability"].isna().all() and errors["items"].isna().all()
    conversion = exposures[(exposures["problem"] == "conversion") & ~exposures["error"]]
    assert conversion["probability"].notna().all()
    first = next(r for r in run["records"] if r["kind"] == "exposure" and r["experiment"])
    row = exposures.set_index("id").loc[first["id"]]
    assert row["logged_at"] == pd.Timestamp(first["at"]).tz_convert(None)
    assert json.loads(row["weights"]) == first["weights"]
    assert json.loads(row["items"]) == first["items"]
    assert (row["history_events"], row["latency_ms"]) == (
        first["history_events"],
        first["latency_ms"],
    )
    assert exposures["log_day"].eq(pd.Timestamp(DAY)).all()


def test_a_rerun_replaces_the_day(run) -> None:
    assert run["second"].success
    for table in RAW:
        pd.testing.assert_frame_equal(run["raw_first"][table], run["raw"][table])


def test_a_day_without_a_file_is_empty_and_leaves_other_days(run) -> None:
    settings, other = run["settings"], DAY + dt.timedelta(days=1)
    result = _load_day(run["defs"], other, run["instance"])
    assert result.success
    (check,) = result.get_asset_check_evaluations()
    assert check.passed and check.metadata["lines_in_files"].value == 0
    for table in RAW:
        counts = _table(settings, f"select log_day, count(*) as n from raw.{table} group by 1")
        assert list(counts["log_day"]) == [pd.Timestamp(DAY)], table


def test_the_marts_pass_their_dbt_tests_and_the_orphan_feedback_warns(run) -> None:
    assert run["marts"].success
    checks = {c.check_name: c for c in run["marts"].get_asset_check_evaluations()}
    assert len(checks) > 20
    failed = {name for name, c in checks.items() if not c.passed}
    assert failed == {
        "relationships_stg_serving_feedback_exposure_id__exposure_id__ref_stg_serving_exposures_",
        "relationships_experiment_clicks_exposure_id__exposure_id__ref_experiment_exposures_",
    }
    assert {checks[name].severity.value for name in failed} == {"WARN"}


def _mart(settings: Settings, name: str) -> pd.DataFrame:
    return _table(settings, f"select * from main.{name}")


def test_experiment_exposures_has_one_row_per_exposure_with_its_feedback(run) -> None:
    mart = _mart(run["settings"], "experiment_exposures").set_index("exposure_id")
    exposures = [r for r in run["records"] if r["kind"] == "exposure"]
    assert mart.index.is_unique and set(mart.index) == {r["id"] for r in exposures}
    acted = {(r["exposure_id"], r["action"]) for r in run["records"] if r["kind"] == "feedback"}
    for column, action in (("clicked", "click"), ("added", "add"), ("purchased", "purchase")):
        expected = pd.Series([int((i, action) in acted) for i in mart.index], index=mart.index)
        pd.testing.assert_series_equal(mart[column].astype("int64"), expected, check_names=False)
    assert mart["clicked"].sum() > 20 and mart["error"].sum() > 0


def test_experiment_sessions_equals_the_pandas_twin(run) -> None:
    """The mart against ml.experiments.sessions_table on the same records (those the contract
    accepts, each exposure once; a missing mode is 'ab' in both): equal up to row order and
    dtypes."""
    settings = run["settings"]
    parsed = serving_log.parse_log(log_file(settings.home / "serving", DAY).read_bytes())
    exposures = parsed.exposures.drop_duplicates("id")
    mart = _mart(settings, "experiment_sessions")
    twin = sessions_table(exposures, parsed.feedback)
    assert list(mart.columns) == list(SESSION_COLUMNS)
    assert len(mart) == len(twin) > 150  # two periods of the ramp give some sessions two rows
    assert set(mart["stage"].dropna()) == {"25%", "50%"} and mart["stage"].isna().any()

    def canonical(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.assign(
            first_at=pd.to_datetime(frame["first_at"]), stage=frame["stage"].fillna("-")
        )
        counts = ["exposures", "clicked", "added", "purchased", "errors", "history_events"]
        frame = frame.astype({c: "int64" for c in [*counts, "history_adds"]})
        keys = ["problem", "experiment", "mode", "stage", "weights", "variant", "session_id"]
        return frame.sort_values(keys).reset_index(drop=True)

    pd.testing.assert_frame_equal(canonical(mart), canonical(twin), check_dtype=False)


def test_an_experiment_switched_to_interleaving_keeps_each_modes_sessions_apart(run) -> None:
    """Sessions s160..s169 of IL were shown an A/B answer, then (same stage, same weights)
    interleaved ones: a row per mode, each with its own exposures."""
    mart = _mart(run["settings"], "experiment_sessions")
    il = mart[mart["experiment"] == IL]
    modes = il.groupby("session_id")["mode"].agg(lambda m: tuple(sorted(m)))
    switched = {f"s{n}" for n in range(160, 170)}
    assert set(modes[modes.map(len) == 2].index) == switched
    assert set(modes[list(switched)]) == {("ab", "interleaving")}
    assert set(modes.drop(list(switched))) == {("interleaving",)}
    shown = pd.Series(
        [r["session_id"] for r in run["records"] if r["kind"] == "exposure" and r.get("mode")]
    )
    ab = il[il["mode"] == "ab"].set_index("session_id")
    assert ab["exposures"].eq(1).all()  # the first exposure of each switched session
    counts = il.groupby("session_id")["exposures"].sum()
    # each exposure is counted once (the duplicate line aside: it is in REC)
    assert counts.to_dict() == shown[shown.isin(counts.index)].value_counts().to_dict()
    assert set(mart.loc[mart["experiment"] != IL, "mode"]) == {"ab"}


def _newer(records: list[dict]) -> dict[str, dict]:
    return {r["id"]: r for r in records if r["kind"] == "exposure" and "mode" in r}


def test_the_fields_of_issue_14_round_trip_from_the_log_to_experiment_exposures(run) -> None:
    records = _newer(run["records"])
    raw = run["raw"]["serving_exposures"].drop_duplicates("id").set_index("id")
    mart = _mart(run["settings"], "experiment_exposures").set_index("exposure_id")
    assert {"mode", "explored", *NEW_FIELDS} <= set(raw.columns) & set(mart.columns)
    kinds = {"teams": 0, "propensities": 0, "explored": 0}
    for exposure_id, record in records.items():
        for table in (raw, mart):
            row = table.loc[exposure_id]
            assert row["mode"] == record["mode"]
            for name in ("items", "context", "propensities", "teams"):
                value = row[name]
                assert (None if pd.isna(value) else json.loads(value)) == record.get(name), name
            assert pd.isna(row["logging_policy"]) or row["logging_policy"] == POLICY
            assert (row["logging_policy"] == POLICY) == ("logging_policy" in record)
        assert bool(mart.loc[exposure_id, "explored"]) == record.get("explored", False)
        kinds["teams"] += "teams" in record
        kinds["propensities"] += "propensities" in record
        kinds["explored"] += record.get("explored", False)
    assert min(kinds.values()) >= 10, kinds  # every kind of answer is among them
    assert raw["explored"].isna().any()  # the raw table keeps what the line said: nothing


def test_lines_of_the_older_server_load_as_ab_and_not_explored(run) -> None:
    older = [r for r in run["records"] if r["kind"] == "exposure" and "mode" not in r]
    assert len(older) > 100 and not any(set(NEW_FIELDS) & set(r) for r in older)
    raw = run["raw"]["serving_exposures"].set_index("id").loc[[r["id"] for r in older]]
    assert raw[list(NEW_FIELDS)].isna().all().all()
    mart = _mart(run["settings"], "experiment_exposures").set_index("exposure_id")
    rows = mart.loc[[r["id"] for r in older]]
    assert (rows["mode"] == "ab").all() and not rows["explored"].any()
    assert rows[["context", "propensities", "teams", "logging_policy"]].isna().all().all()
    stg = _table(run["settings"], "select mode, explored from main.stg_serving_exposures")
    assert stg.notna().all().all()


def test_experiment_clicks_has_one_row_per_clicked_item_at_its_first_click(run) -> None:
    clicks = [
        r
        for r in run["records"]
        if r["kind"] == "feedback" and r["action"] == "click" and r.get("item") is not None
    ]
    expected: dict[tuple[str, str], pd.Timestamp] = {}
    for click in clicks:
        key, at = (click["exposure_id"], click["item"]), pd.Timestamp(click["at"]).tz_convert(None)
        expected[key] = min(expected.get(key, at), at)
    twice = len(clicks) - len(expected)
    assert twice >= 10  # clicked again on the same item, or the same line logged twice
    per_exposure = pd.Series([k[0] for k in expected]).value_counts()
    assert (per_exposure > 1).sum() >= 5  # exposures with clicks on two items
    mart = _mart(run["settings"], "experiment_clicks")
    assert list(mart.columns) == ["exposure_id", "item", "clicked_at"]
    assert (
        dict(
            zip(
                zip(mart["exposure_id"], mart["item"], strict=True), mart["clicked_at"], strict=True
            )
        )
        == expected
    )
    assert ("f" * 32, "sku1") in expected  # the orphan click waits here (and warns)


def test_lineage_runs_from_the_log_to_the_marts_apart_from_the_daily_models(settings) -> None:
    project = build_dbt_project(settings)
    daily = build_dbt_assets(project, daily_partitions(settings))
    marts = build_experiment_dbt_assets(project)
    defs = Definitions(
        assets=[build_serving_log_asset(settings), marts, daily],
        resources=build_resources(settings, project),
    )
    graph = defs.resolve_asset_graph()
    assert graph.get(AssetKey("experiment_sessions")).parent_keys == {
        AssetKey("experiment_exposures")
    }
    staging = {AssetKey(f"stg_serving_{t}") for t in ("exposures", "feedback", "shadows")}
    for key in staging:
        assert graph.get(key).parent_keys == {AssetKey(log_asset.ASSET)}
        assert graph.get(key).group_name == "experiments"
    assert not set(daily.keys) & set(marts.keys)
    assert marts.partitions_def is None
    partitions = serving_log_partitions(settings)
    assert partitions.get_last_partition_key() == dt.datetime.now(dt.UTC).date().isoformat()


def test_the_reconcile_check_fails_when_the_loader_loses_a_line(settings, monkeypatch) -> None:
    write_log(settings.home / "serving")
    parse = serving_log.parse_log

    def losing(data: bytes) -> serving_log.ParsedLog:
        parsed = parse(data)
        return serving_log.ParsedLog(
            parsed.exposures.iloc[1:], parsed.feedback, parsed.shadows, parsed.quarantine
        )

    monkeypatch.setattr(log_asset.serving_log, "parse_log", losing)
    result = _load_day(_definitions(settings), DAY, DagsterInstance.ephemeral())
    (check,) = result.get_asset_check_evaluations()
    assert not check.passed
    assert check.metadata["rows_in_tables"].value == check.metadata["lines_in_files"].value - 1


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"at": "2026-03-02T09:00:00.000Z"}, None),
        ({"at": "2026-03-02T10:00:00.000+01:00"}, None),
        ({"at": "2026-03-02T09:00:00.000"}, "bad_timestamp"),  # no offset: which zone?
        ({"history_adds": 1.0}, "wrong_type:history_adds"),
        ({"history_adds": -1}, "wrong_type:history_adds"),
        ({"error": 0}, "wrong_type:error"),
        ({"weights": {"champion": "1"}}, "wrong_type:weights"),
        ({"items": ["a", 3]}, "wrong_type:items"),
        ({"experiment": None, "session_id": None, "weights": None}, None),
        ({"variant": None}, "wrong_type:variant"),
        ({"role": "retired"}, "unknown_role"),
        ({"latency_ms": float("nan")}, "wrong_type:latency_ms"),
        # the fields of issue #14: optional, typed, aligned with the items shown
        ({"mode": None, "propensities": None, "teams": None, "explored": None}, None),
        ({"mode": "interleaving", "items": ["a", "b"], "teams": ["challenger", "champion"]}, None),
        ({"mode": "ab", "items": ["a", "b"], "propensities": [1, 0.0025], "explored": True}, None),
        ({"mode": "bandit"}, "unknown_mode"),
        ({"mode": 1}, "wrong_type:mode"),
        ({"context": ["a", 3]}, "wrong_type:context"),
        ({"context": "a"}, "wrong_type:context"),
        ({"propensities": [0.5, 0.0]}, "wrong_type:propensities"),  # never shown: not logged
        ({"propensities": [1.0000001]}, "wrong_type:propensities"),
        ({"propensities": [True]}, "wrong_type:propensities"),
        ({"propensities": [float("nan")]}, "wrong_type:propensities"),
        ({"teams": ["challenger", "shadow"]}, "wrong_type:teams"),
        ({"explored": 1}, "wrong_type:explored"),
        ({"logging_policy": 0.05}, "wrong_type:logging_policy"),
        ({"items": ["a", "b"], "propensities": [1.0]}, "length_mismatch:propensities"),
        ({"items": ["a"], "teams": ["champion", "champion"]}, "length_mismatch:teams"),
        ({"items": None, "propensities": [1.0]}, None),  # no answer: nothing to align with
        # a wrong type is the first reason, before the lengths are compared
        ({"items": ["a"], "propensities": [2.0, 1.0]}, "wrong_type:propensities"),
    ],
)
def test_a_record_is_checked_field_by_field(change: dict, reason: str | None) -> None:
    record = {**server_records()[0], **change}
    outcome = serving_log.check_record(record)
    if reason is None:
        assert outcome[0] == "exposure"
        assert outcome[1]["at"] == dt.datetime(2026, 3, 2, 9, 0)
        for name in ("items", "context", "propensities", "teams"):  # lists: JSON text
            value = record.get(name)
            assert outcome[1][name] == (None if value is None else json.dumps(value))
    else:
        assert outcome == reason


def test_the_reasons_are_documented_in_the_order_they_are_checked() -> None:
    assert serving_log.REASONS.index("unknown_role") < serving_log.REASONS.index("unknown_mode")
    assert serving_log.REASONS[-1] == "length_mismatch"
    for reason in ("unknown_mode", "length_mismatch"):
        assert reason in serving_log.__doc__


def test_a_raw_table_of_the_previous_version_gains_the_new_columns_in_place(settings) -> None:
    """A warehouse whose serving_exposures was created before issue #14 (without its columns,
    holding a day already): the next load adds the columns, keeps that day, loads the new one,
    and the marts read the old day's exposure as 'ab', not explored."""
    columns = log_asset.TABLES["serving_exposures"][1]
    old_columns = {n: k for n, k in columns.items() if n not in NEW_FIELDS}
    before = DAY - dt.timedelta(days=1)
    old = server_records()[0]
    values = {
        **{k: v for k, v in old.items() if k in old_columns},
        DAY_COLUMN: before.isoformat(),
        "line_number": 1,
        "logged_at": old["at"][:-6],
        "weights": serving_log.weights_text(old["weights"]),
        "items": json.dumps(old.get("items")),
        "id": "9" * 32,
    }
    spec = ", ".join(f"{n} {k}" for n, k in old_columns.items())
    with duckdb.connect(str(settings.warehouse_path)) as con:
        con.execute("create schema raw")
        con.execute(f"create table raw.serving_exposures ({spec})")
        names = list(old_columns)
        marks = ", ".join("?" for _ in names)
        row = [values.get(n) for n in names]
        con.execute(f"insert into raw.serving_exposures ({', '.join(names)}) values ({marks})", row)
    warehouse = build_resources(settings, build_dbt_project(settings))["warehouse"]
    # a missing table is left alone: the load creates it whole
    assert warehouse.add_missing_columns("no_such_table", columns) == []

    records, _ = write_log(settings.home / "serving")
    defs = _definitions(settings)
    instance = DagsterInstance.ephemeral()
    result = _load_day(defs, DAY, instance)
    assert result.success
    (check,) = result.get_asset_check_evaluations()
    assert check.passed
    raw = _table(settings, "select * from raw.serving_exposures")
    assert list(raw.columns) == [*old_columns, *NEW_FIELDS]  # added at the end, in place
    kept = raw[raw[DAY_COLUMN] == pd.Timestamp(before)]
    assert list(kept["id"]) == ["9" * 32] and kept[list(NEW_FIELDS)].isna().all().all()
    newer = _newer(records)
    assert raw["mode"].eq("interleaving").sum() == sum(
        r["mode"] == "interleaving" for r in newer.values()
    )
    assert warehouse.add_missing_columns("serving_exposures", columns) == []  # all there now

    marts = defs.resolve_job_def("experiment_marts").execute_in_process(
        instance=instance, raise_on_error=False
    )
    assert marts.success
    mart = _mart(settings, "experiment_exposures").set_index("exposure_id")
    assert (mart.loc["9" * 32, "mode"], mart.loc["9" * 32, "explored"]) == ("ab", False)
    assert set(mart["mode"]) == {"ab", "interleaving"}
