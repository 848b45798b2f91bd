"""Settings: one root for state, one switch for the environment, errors that name the problem."""

from __future__ import annotations

import pytest
import yaml

from skiff.settings import (
    MANIFEST_KEY,
    SNOWFLAKE_REQUIRED,
    ConfigError,
    ensure_home,
    load_settings,
)


def test_everything_lives_under_skiff_home(settings):
    for path in (settings.landing, settings.artifacts, settings.reports, settings.dagster_home):
        assert path.is_dir() and path.is_relative_to(settings.home)
    assert settings.warehouse_path.parent == settings.home
    config = yaml.safe_load((settings.dagster_home / "dagster.yaml").read_text())
    assert config["concurrency"]["pools"]["default_limit"] == 1
    assert config["freshness"]["enabled"] is True  # freshness policies shown in the UI
    ensure_home(settings)  # idempotent


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SKIFF_TIMEZONE", "Mars/Olympus", "is not an IANA time zone"),
        ("SKIFF_NIGHTLY_CRON", "at three", "is not a five-field cron"),
        ("SKIFF_NIGHTLY_CRON", "61 3 * * *", "is not a five-field cron"),  # Dagster refuses
        ("SKIFF_RELEASE_CRON", "every hour", "is not a five-field cron"),
        ("SKIFF_DRIFT_PERSISTENCE_DAYS", "0", "at least 1"),
        ("SKIFF_RETRAIN_TRAIN_DAYS", "two weeks", "at least 1"),
    ],
)
def test_automation_settings_are_checked_at_start(settings, monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message) as err:
        load_settings()
    assert name in str(err.value)


def test_automation_settings_from_the_environment(settings, monkeypatch):
    monkeypatch.setenv("SKIFF_TIMEZONE", "Europe/Berlin")
    monkeypatch.setenv("SKIFF_NIGHTLY_CRON", "30 4 * * *")
    monkeypatch.setenv("SKIFF_DRIFT_PERSISTENCE_DAYS", "2")
    automation = load_settings().automation
    assert (automation.timezone, automation.nightly_cron) == ("Europe/Berlin", "30 4 * * *")
    assert automation.drift_persistence_days == 2 and automation.retrain_train_days == 14


def test_prod_without_credentials_lists_what_is_missing(monkeypatch):
    monkeypatch.setenv("SKIFF_ENV", "prod")
    for name in (*SNOWFLAKE_REQUIRED, "SNOWFLAKE_PASSWORD", "SNOWFLAKE_PRIVATE_KEY_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(MANIFEST_KEY, raising=False)
    monkeypatch.setenv("SNOWFLAKE_ACCOUNT", "xy12345")
    with pytest.raises(ConfigError) as err:
        load_settings()
    missing = str(err.value).split(": ", 1)[1].split(", ")
    assert missing == [
        *(name for name in SNOWFLAKE_REQUIRED if name != "SNOWFLAKE_ACCOUNT"),
        "SNOWFLAKE_PASSWORD (or SNOWFLAKE_PRIVATE_KEY_PATH)",
        "SKIFF_MANIFEST_KEY",
    ]


def test_prod_refuses_unsigned_manifests(monkeypatch):
    """Everything else set: the manifest signing key alone is still required (a blank too)."""
    monkeypatch.setenv("SKIFF_ENV", "prod")
    for name in (*SNOWFLAKE_REQUIRED, "SNOWFLAKE_PASSWORD"):
        monkeypatch.setenv(name, "x")
    monkeypatch.setenv(MANIFEST_KEY, "  ")
    with pytest.raises(ConfigError, match=r"not set: SKIFF_MANIFEST_KEY$"):
        load_settings()
    monkeypatch.setenv(MANIFEST_KEY, "a-long-random-key")
    assert load_settings().env == "prod"


def test_prod_with_credentials_targets_snowflake(monkeypatch):
    monkeypatch.setenv("SKIFF_ENV", "prod")
    monkeypatch.delenv("SKIFF_DBT_TARGET", raising=False)
    for name in (*SNOWFLAKE_REQUIRED, "SNOWFLAKE_PRIVATE_KEY_PATH", MANIFEST_KEY):
        monkeypatch.setenv(name, "x")
    monkeypatch.delenv("SKIFF_EXECUTOR", raising=False)
    prod = load_settings()
    assert prod.dbt_target == "snowflake"
    assert prod.executor == "multiprocess"  # one process per step, as pods run them


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SKIFF_ENV", "staging"),
        ("SKIFF_PARTITIONS_START", "05/01/2026"),
        ("SKIFF_EXECUTOR", "k8s"),
    ],
)
def test_bad_values_are_named(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        load_settings()


def test_artifacts_go_to_object_storage_when_a_url_is_set(settings, monkeypatch, tmp_path):
    from ml.registry import Registry, load_published

    assert settings.registry == settings.artifacts / "registry"
    monkeypatch.setenv("SKIFF_ARTIFACTS_URL", "memory://skiff-artifacts/prod/")
    assert settings.registry == "memory://skiff-artifacts/prod/registry"
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"w")
    registry = Registry(settings.registry)
    manifest = registry.register(
        "conversion", model, algorithm="a", params={}, metrics={}, training_window={}
    )
    registry.assign("conversion", "champion", manifest.version, "test")
    registry.publish("conversion", settings.published)
    loaded, folder = load_published(settings.published, "conversion")
    assert loaded.version == manifest.version and (folder / "weights.bin").read_bytes() == b"w"


def test_the_executor_follows_skiff_executor(settings, monkeypatch):
    from dagster import in_process_executor, multiprocess_executor

    from orchestration.definitions import build_definitions

    monkeypatch.delenv("SKIFF_EXECUTOR", raising=False)
    assert load_settings().executor == "in_process"  # local default
    with pytest.raises(ConfigError, match=r"SKIFF_EXECUTOR='threads' is not one of"):
        monkeypatch.setenv("SKIFF_EXECUTOR", "threads")
        load_settings()
    monkeypatch.setenv("SKIFF_EXECUTOR", "Multiprocess")
    chosen = load_settings()
    assert chosen.executor == "multiprocess"
    defs = build_definitions(chosen)
    assert defs.resolve_job_def("train_models").executor_def is multiprocess_executor
    monkeypatch.setenv("SKIFF_EXECUTOR", "in_process")
    defs = build_definitions(load_settings())
    assert defs.resolve_job_def("score_days").executor_def is in_process_executor


def test_every_artifact_root_moves_to_object_storage_with_the_url(settings, monkeypatch):
    assert settings.artifacts_url is None
    assert settings.handoff_root == settings.home / "artifacts" / "handoff"
    assert settings.cache_root == settings.home / "artifacts" / "cache"
    assert settings.reports_root == settings.reports == settings.home / "reports"
    monkeypatch.setenv("SKIFF_ARTIFACTS_URL", "s3://bucket/skiff/")
    assert settings.artifacts_url == "s3://bucket/skiff"
    assert (settings.handoff_root, settings.reports_root, settings.cache_root) == (
        "s3://bucket/skiff/handoff",
        "s3://bucket/skiff/reports",
        "s3://bucket/skiff/cache",
    )
    # the hand-off IO manager of every job is rooted there
    from orchestration.definitions import build_definitions

    io_manager = build_definitions(load_settings()).resources["io_manager"]
    assert io_manager.root == "s3://bucket/skiff/handoff"


def test_no_local_artifacts_folder_with_a_url(tmp_path, monkeypatch):
    monkeypatch.setenv("SKIFF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SKIFF_ENV", "local")
    monkeypatch.setenv("SKIFF_ARTIFACTS_URL", "memory://skiff-artifacts")
    for name in ("DAGSTER_HOME", "SKIFF_DAGSTER_HOME"):
        monkeypatch.delenv(name, raising=False)
    settings = ensure_home(load_settings())
    assert settings.landing.is_dir() and settings.dagster_home.is_dir()
    assert not settings.artifacts.exists()
