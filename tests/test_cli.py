"""The `skiff` command as a user runs it: a real process, a temporary SKIFF_HOME."""

from __future__ import annotations

import datetime as dt
import filecmp
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestration.demo import choose_test_day, training_windows
from skiff.settings import REPO_ROOT, ConfigError

SKIFF = str(Path(sys.executable).parent / "skiff")
DIGINETICA = REPO_ROOT.parent / "shared" / "data" / "diginetica" / "sample_train-item-views.csv"


def skiff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SKIFF, *args], env=os.environ.copy(), capture_output=True, text=True, timeout=600
    )


def test_generate_is_deterministic_and_checks_its_flags(settings, tmp_path, monkeypatch):
    flags = ["generate", "--days", "2", "--sessions-per-day", "50", "--start", "2026-02-01"]
    for out in ("a", "b"):
        done = skiff(*flags, "--seed", "5", "--out", str(tmp_path / out))
        assert done.returncode == 0, done.stderr
        assert "generated" in done.stdout
    comparison = filecmp.dircmp(tmp_path / "a" / "2026-02-02", tmp_path / "b" / "2026-02-02")
    assert sorted(comparison.same_files) == ["browsing_events.csv", "products.csv"]

    # with SKIFF_PARTITIONS_START set, a day before it is refused; without, the partitions
    # start at the earliest landing day, wherever that is
    monkeypatch.setenv("SKIFF_PARTITIONS_START", "2026-01-01")
    early = skiff("generate", "--days", "1", "--start", "2025-06-01", "--out", str(tmp_path / "c"))
    assert early.returncode == 2
    assert "before the first partition 2026-01-01" in early.stderr
    monkeypatch.delenv("SKIFF_PARTITIONS_START")
    moved = skiff("generate", "--days", "1", "--start", "2025-06-01", "--out", str(tmp_path / "c"))
    assert moved.returncode == 0, moved.stderr
    bad = skiff("generate", "--days", "0")
    assert bad.returncode == 2 and "--days" in bad.stderr


@pytest.mark.slow
def test_demo_runs_the_graph_and_says_how_to_open_the_ui(settings):
    done = skiff("demo", "--days", "2", "--sessions-per-day", "80", "--start", "2026-03-01")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "160 sessions over 2 days" in done.stdout
    assert "models skipped: training needs at least 4 days" in done.stdout
    assert "main.conversion_examples" in done.stdout
    assert "skiff ui" in done.stdout and "127.0.0.1:3000" in done.stdout
    # the run is in the persistent instance, so the UI shows it after the demo
    runs = list((settings.dagster_home / "history" / "runs").glob("*.db"))
    assert runs, "no run stored under DAGSTER_HOME"


def test_demo_trains_up_to_the_day_before_the_drift_or_three_days_before_the_end():
    days = [dt.date(2026, 11, 1) + dt.timedelta(days=i) for i in range(10)]
    assert choose_test_day(days, None) == dt.date(2026, 11, 7)
    assert choose_test_day(days[:6], None) == dt.date(2026, 11, 4)  # keeps 4 days to train on
    assert choose_test_day(days, dt.date(2026, 11, 9)) == dt.date(2026, 11, 8)
    assert choose_test_day(days, dt.date(2026, 12, 1)) == dt.date(2026, 11, 7)  # drift after
    with pytest.raises(ConfigError, match="fewer than 4 days"):
        choose_test_day(days, dt.date(2026, 11, 4))
    window = training_windows(days[0], dt.date(2026, 11, 7))
    assert window["conversion_training_set"]["config"] == {
        "train_days": 5,
        "test_day": "2026-11-07",
    }
    assert window["recommender_training_set"]["config"] == {
        "train_days": 5,
        "end_day": "2026-11-07",
    }


def test_demo_with_too_early_a_drift_fails_before_the_marts(settings):
    flags = ["--days", "6", "--sessions-per-day", "10", "--start", "2026-11-01"]
    done = skiff("demo", *flags, "--drift-from", "2026-11-03")
    assert done.returncode == 2
    assert "--drift-from 2026-11-03 leaves fewer than 4 days" in done.stderr
    assert "materializing" not in done.stdout
    assert not list((settings.dagster_home / "history" / "runs").glob("*.db"))


def test_evaluate_recs_on_a_users_session_files(settings, tmp_path):
    """60 items, so a top 20 holds a third of the catalogue, and answers known by design.

    Train: 30 pairs [a_i, b_i], pair i seen 30 - i times, pair 0 first: POP's top 20 is
    a_0, b_0, ..., a_9, b_9 (ties between a_i and b_i go to a_i, seen first). Test: the 30
    pairs, then 10 "switches" [a_i, b_(i+1)] for i = 10..19. Each session asks for its second
    item after its first: 40 predictions.
    - sknn: after a_i its only neighbours are the [a_i, b_i] sessions, so it ranks a_i then
      b_i, padded with a_0..b_8: every pair hits at rank 2, no switch hits (b_11..b_20 are
      neither a_i's partner nor popular). HR@20 = 30/40, MRR@20 = 30 * 1/2 / 40.
    - pop: b_i is at rank 2i + 2 for i < 10, outside the top 20 otherwise: the first 10 pairs
      hit, nothing else. HR@20 = 10/40, MRR@20 = sum(1 / (2i + 2), i < 10) / 40.
    """
    rows, t = ["SessionId\tItemId\tTime"], 1_767_571_200
    train = [[f"a{i}", f"b{i}"] for i in range(30) for _ in range(30 - i)]
    test = [[f"a{i}", f"b{i}"] for i in range(30)] + [[f"a{i}", f"b{i + 1}"] for i in range(10, 20)]
    files = {}
    for name, sessions in (("train", train), ("test", test)):
        lines = list(rows)
        for session in sessions:
            t += 100
            lines += [f"{name}-{t}\t{item}\t{t + i}" for i, item in enumerate(session)]
        files[name] = tmp_path / f"{name}.tsv"
        files[name].write_text("\n".join(lines) + "\n")
    flags = ["--train", str(files["train"]), "--test", str(files["test"])]
    done = skiff("evaluate-recs", *flags, "--models", "pop,sknn", "--json")
    assert done.returncode == 0, done.stderr
    result = {row["model"]: row for row in json.loads(done.stdout)}
    assert set(result) == {"pop", "sknn"}
    assert {m: r["predictions"] for m, r in result.items()} == {"pop": 40, "sknn": 40}
    assert result["sknn"]["hr_at_20"] == pytest.approx(30 / 40)
    assert result["sknn"]["mrr_at_20"] == pytest.approx(30 * 0.5 / 40)
    assert result["pop"]["hr_at_20"] == pytest.approx(10 / 40)
    assert result["pop"]["mrr_at_20"] == pytest.approx(sum(1 / (2 * i + 2) for i in range(10)) / 40)
    unknown = skiff("evaluate-recs", *flags, "--models", "x")
    assert unknown.returncode == 2 and "unknown model" in unknown.stderr

    # --params over the defaults (sknn with 1 neighbour still ranks a_i's partner second), and
    # the torch model's epochs on stderr with --progress
    tuned = skiff(
        "evaluate-recs", *flags, "--models", "sknn,gru", "--json", "--progress",
        "--params", '{"sknn": {"k_neighbors": 1}, "gru": {"epochs": 2, "holdout": 0}}',
    )  # fmt: skip
    assert tuned.returncode == 0, tuned.stderr
    by_model = {row["model"]: row for row in json.loads(tuned.stdout)}
    assert by_model["sknn"]["params"]["k_neighbors"] == 1
    assert by_model["gru"]["params"]["epochs"] == 2
    assert "epoch 2" in tuned.stderr
    for bad, said in (("{not json", "not JSON"), ('{"gru": 3}', "must map a model")):
        refused = skiff("evaluate-recs", *flags, "--params", bad)
        assert refused.returncode == 2 and said in refused.stderr
    typo = skiff("evaluate-recs", *flags, "--models", "gru", "--params", '{"gru": {"epoch": 2}}')
    assert typo.returncode == 2 and "epoch" in typo.stderr


def test_evaluate_recs_help_lists_every_model_and_the_true_default():
    from ml.recommend.compare import DEFAULT_MODELS
    from ml.recommend.models import ALGORITHMS

    shown = " ".join(skiff("evaluate-recs", "--help").stdout.split())
    assert all(f"{name} (" in shown for name in ALGORITHMS), shown
    assert f"default {','.join(DEFAULT_MODELS)}" in shown


@pytest.mark.skipif(not DIGINETICA.exists(), reason="../shared/data/diginetica is absent")
def test_import_diginetica_sample_into_landing_days(settings):
    done = skiff("import", "--format", "diginetica", str(DIGINETICA))
    assert done.returncode == 0, done.stderr
    assert "skiff run --start" in done.stdout
    days = sorted(p.name for p in settings.landing.iterdir() if p.is_dir())
    assert days and all((settings.landing / d / "browsing_events.csv").exists() for d in days)


def test_operator_promote_rollback_and_history(settings, tmp_path):
    """`skiff promote`, `skiff rollback` and `skiff history` on a real registry folder."""
    from ml import release
    from ml.registry import Registry

    registry = Registry(settings.registry)
    versions = []
    for name in ("pop", "sknn", "gru"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model.txt").write_text(name)
        manifest = registry.register(
            "recommender", folder, algorithm=name, params={}, metrics={}, training_window={}
        )
        versions.append(manifest.version)
    pop, sknn, gru = versions
    published = str(settings.published)
    release.bootstrap(registry, published, "recommender", pop, "first model")
    release.admit(registry, published, "recommender", sknn, "passed the gates")

    refused = skiff("promote", "recommender", "no-such-version", "--reason", "typo")
    assert refused.returncode == 2 and "no-such-version" in refused.stderr
    done = skiff("promote", "recommender", gru, "--reason", "hotfix for a broken model")
    assert done.returncode == 0, done.stderr
    assert registry.roles("recommender") == {"champion": gru}
    nothing = skiff("rollback", "recommender", "--reason", "again")
    assert nothing.returncode == 2 and "no challenger" in nothing.stderr

    history = json.loads(skiff("history", "recommender", "--json").stdout)
    fields = {"at", "version", "role", "stage", "traffic", "decided_by", "reason"}
    assert all(fields <= set(entry) for entry in history)
    assert [(e["role"], e["version"], e["decided_by"]) for e in history] == [
        ("champion", pop, "bootstrap"),
        ("challenger", sknn, "offline gates"),
        ("champion", gru, "operator"),
        ("retired", pop, "operator"),
        ("rolled_back", sknn, "operator"),
    ]
    assert history[2]["reason"] == "hotfix for a broken model"
    table = skiff("history", "recommender", "--limit", "2")
    assert table.returncode == 0 and "retired" in table.stdout and "rolled_back" in table.stdout
    assert "challenger" not in [e["role"] for e in history if e["version"] == pop]


def test_resign_adopts_signing_on_an_unsigned_registry_and_republishes(
    settings, tmp_path, monkeypatch
):
    """`skiff resign`: an unsigned registry is refused once a key is set; resigning without
    --accept-unsigned refuses too; with it, every version and the served pointer verify."""
    from ml import release
    from ml.registry import ArtifactError, Registry, load_published

    registry = Registry(settings.registry)
    folder = tmp_path / "pop"
    folder.mkdir()
    (folder / "model.txt").write_text("pop")
    manifest = registry.register(
        "recommender", folder, algorithm="pop", params={}, metrics={}, training_window={}
    )
    release.bootstrap(registry, str(settings.published), "recommender", manifest.version, "first")

    monkeypatch.setenv("SKIFF_MANIFEST_KEY", "a-key-for-the-cli-test")
    with pytest.raises(ArtifactError, match="unsigned"):
        load_published(settings.published, "recommender")
    refused = skiff("resign", "recommender")
    assert refused.returncode == 2 and manifest.version in refused.stderr
    done = skiff("resign", "recommender", "--accept-unsigned")
    assert done.returncode == 0, done.stderr
    assert "1 version(s) re-signed" in done.stdout and manifest.version in done.stdout
    served, _ = load_published(settings.published, "recommender")
    assert served.version == manifest.version
    # versions() refuses unsigned versions while a key is set: all of them verify now
    assert [m.version for m in Registry(settings.registry).versions("recommender")] == [
        manifest.version
    ]


def test_release_step_parses_its_days_and_refuses_an_end_before_its_start(settings, capsys):
    """`skiff release-step` (experiment results, then each rollout's look): its flags parse
    to days, a bad one is a usage error (2), and --end before --start is refused (2) before
    any run starts."""
    from skiff_cli import jobs
    from skiff_cli.main import main
    from skiff_cli.parser import build_parser

    args = build_parser().parse_args(
        ["release-step", "--start", "2026-03-01", "--end", "2026-03-02"]
    )
    assert args.func is jobs.cmd_release_step
    assert (args.start, args.end) == (dt.date(2026, 3, 1), dt.date(2026, 3, 2))
    defaults = build_parser().parse_args(["release-step"])
    assert (defaults.start, defaults.end) == (None, None)  # yesterday .. today, UTC
    with pytest.raises(SystemExit) as usage:
        build_parser().parse_args(["release-step", "--end", "03/02/2026"])
    assert usage.value.code == 2 and "is not a YYYY-MM-DD date" in capsys.readouterr().err

    assert main(["release-step", "--start", "2026-03-05", "--end", "2026-03-01"]) == 2
    said = capsys.readouterr()
    assert "skiff: --end 2026-03-01 is before --start 2026-03-05" in said.err
    assert "one look" not in said.out  # refused before the run was announced
    assert not list((settings.dagster_home / "history" / "runs").glob("*.db")), "a run ran"


def test_monitor_without_champions_is_refused_before_any_run(settings, capsys):
    from skiff_cli.main import main

    assert main(["monitor", "--start", "2026-03-01", "--end", "2026-03-02"]) == 2
    said = capsys.readouterr()
    assert "monitoring needs a published champion for both problems: `skiff train`" in said.err
    assert not list((settings.dagster_home / "history" / "runs").glob("*.db")), "a run ran"


def test_the_jobs_help_says_which_failures_exit_1():
    """`skiff train`: a refusing gate is printed but exits 0, a failed step exits 1;
    score, monitor and release-step also exit 1 on a failed ERROR check."""
    train = " ".join(skiff("train", "--help").stdout.split())
    assert "A gate that refuses a candidate is printed as a FAILED check but exits 0" in train
    assert "a failed step exits 1" in train
    assert "1 a step failed" in train and "ERROR check" not in train
    for command in ("score", "monitor", "release-step"):
        shown = " ".join(skiff(command, "--help").stdout.split())
        assert "1 a step failed, or an ERROR check failed" in shown, command
        assert "printed as warned" in shown, command
    assert "--config" in skiff("monitor", "--help").stdout


def test_the_ui_hint_and_help_say_skiff_ui_serves_the_reports(settings, monkeypatch):
    """`skiff ui` is `dagster dev` plus the reports its links point at (port 3001 by default),
    which plain `dagster dev` does not serve; with links elsewhere it says where they point."""
    from skiff_cli.commands import ui_hint

    hint = ui_hint()
    assert "skiff ui" in hint and "http://127.0.0.1:3000" in hint
    assert "serves the reports its links point at, http://127.0.0.1:3001/reports/" in hint
    monkeypatch.setenv("SKIFF_REPORTS_URL", "https://skiff.example.com/reports")
    assert "report links point at https://skiff.example.com/reports/ (served there)" in ui_hint()
    shown = " ".join(skiff("ui", "--help").stdout.split())
    assert "http://127.0.0.1:3001/reports/" in shown and "plain `dagster dev` does not" in shown


def test_serve_flags_set_the_business_rules(monkeypatch):
    """`skiff serve --no-exclude-viewed --catalogue F --max-per-category N` reach the server's
    configuration over the environment's values; unset flags leave the environment's."""
    from serving.config import ServeConfig
    from skiff_cli.parser import build_parser

    monkeypatch.setenv("SKIFF_SERVE_MAX_PER_CATEGORY", "5")
    monkeypatch.delenv("SKIFF_SERVE_EXCLUDE_VIEWED", raising=False)
    monkeypatch.delenv("SKIFF_SERVE_CATALOGUE", raising=False)

    def config(*flags: str) -> ServeConfig:
        args = build_parser().parse_args(["serve", *flags])
        return ServeConfig.from_env(
            exclude_viewed=args.exclude_viewed,
            catalogue=args.catalogue,
            max_per_category=args.max_per_category,
        )

    default = config("--catalogue", "products.csv")
    assert (default.exclude_viewed, default.max_per_category) == (True, 5)
    with pytest.raises(ConfigError, match=r"must be 0 \(no cap\) or more, got -1"):
        config("--catalogue", "p.csv", "--max-per-category", "-1")
    flagged = config("--no-exclude-viewed", "--catalogue", "p.csv", "--max-per-category", "2")
    assert (flagged.exclude_viewed, flagged.catalogue, flagged.max_per_category) == (
        False,
        "p.csv",
        2,
    )


def test_resign_re_signs_the_good_versions_and_names_the_refused(settings, tmp_path, monkeypatch):
    from ml import release
    from ml.registry import Registry

    monkeypatch.setenv("SKIFF_MANIFEST_KEY", "an-old-key-for-the-cli-test")
    registry = Registry(settings.registry)
    versions = []
    for name in ("pop", "broken"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model.txt").write_text(name)
        versions.append(
            registry.register(
                "recommender", folder, algorithm=name, params={}, metrics={}, training_window={}
            ).version
        )
    good, broken = versions
    release.bootstrap(registry, str(settings.published), "recommender", good, "first")
    manifest = registry._path("recommender", "versions", broken, "manifest.json")
    registry.fs.pipe_file(manifest, b'{"problem": "recomm')  # unreadable
    monkeypatch.setenv("SKIFF_MANIFEST_KEYS_PREVIOUS", "an-old-key-for-the-cli-test")
    monkeypatch.setenv("SKIFF_MANIFEST_KEY", "the-new-key-for-the-cli-test")
    done = skiff("resign", "recommender")
    assert done.returncode == 2
    assert broken in done.stderr and "not valid JSON" in done.stderr
    assert "1 version(s) re-signed, 1 refused" in done.stdout and good in done.stdout
