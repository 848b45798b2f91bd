"""Settings: one root for state, one switch for the environment, errors that name the problem."""

from __future__ import annotations

import ast
import re

import pytest
import yaml

from skiff.settings import (
    MANIFEST_KEY,
    REPO_ROOT,
    SNOWFLAKE_REQUIRED,
    ConfigError,
    ensure_home,
    load_settings,
)
from skiff.urls import report_url

# Everything production needs but the variable a test leaves out.
PROD = {
    "SKIFF_ENV": "prod",
    **dict.fromkeys(SNOWFLAKE_REQUIRED, "x"),
    "SNOWFLAKE_PASSWORD": "x",
    MANIFEST_KEY: "a-long-random-key",
    "SKIFF_REPORTS_URL": "https://skiff.example.com/reports",
}


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


def _prod(monkeypatch, tmp_path, *without: str) -> None:
    """SKIFF_ENV=prod with everything it needs but `without`, in a fresh SKIFF_HOME."""
    monkeypatch.setenv("SKIFF_HOME", str(tmp_path / "skiff"))
    for name in ("SNOWFLAKE_PRIVATE_KEY_PATH", "SKIFF_SERVE_URL", "SKIFF_EXECUTOR", *without):
        monkeypatch.delenv(name, raising=False)
    for name, value in PROD.items():
        if name not in without:
            monkeypatch.setenv(name, value)


def test_prod_without_credentials_lists_what_is_missing(monkeypatch, tmp_path):
    _prod(monkeypatch, tmp_path, *PROD)
    monkeypatch.setenv("SKIFF_ENV", "prod")
    monkeypatch.setenv("SNOWFLAKE_ACCOUNT", "xy12345")
    with pytest.raises(ConfigError) as err:
        load_settings()
    missing = str(err.value).split(": ", 1)[1].split(". ", 1)[0].split(", ")
    assert missing == [
        *(name for name in SNOWFLAKE_REQUIRED if name != "SNOWFLAKE_ACCOUNT"),
        "SNOWFLAKE_PASSWORD (or SNOWFLAKE_PRIVATE_KEY_PATH)",
        "SKIFF_MANIFEST_KEY",
        "SKIFF_REPORTS_URL (or SKIFF_SERVE_URL)",
    ]


def test_prod_needs_a_reports_base_and_its_links_use_it(monkeypatch, tmp_path):
    """Issue #15: in production the loopback default (a laptop's `skiff ui`) is a dead link, so
    SKIFF_ENV=prod refuses to start without SKIFF_REPORTS_URL or SKIFF_SERVE_URL, saying why
    (a blank value is not set); with one, every report link is under it."""
    _prod(monkeypatch, tmp_path, "SKIFF_REPORTS_URL")
    for blank in (None, "  "):
        if blank is not None:
            monkeypatch.setenv("SKIFF_REPORTS_URL", blank)
        with pytest.raises(ConfigError) as err:
            load_settings()
        said = str(err.value)
        assert "not set: SKIFF_REPORTS_URL (or SKIFF_SERVE_URL). SKIFF_REPORTS_URL: " in said
        assert "http://127.0.0.1:3001/reports" in said and "no user of production" in said
    relpath = "monitoring/conversion_quality/2026-01-05.html"
    monkeypatch.setenv("SKIFF_REPORTS_URL", "https://skiff.example.com/reports/")
    prod = load_settings()
    assert report_url(prod, relpath) == f"https://skiff.example.com/reports/{relpath}"
    # SKIFF_SERVE_URL alone is a base too: `skiff serve` serves /reports/ from the same store
    monkeypatch.delenv("SKIFF_REPORTS_URL")
    monkeypatch.setenv("SKIFF_SERVE_URL", "https://api.skiff.example.com")
    assert report_url(load_settings(), relpath) == (
        f"https://api.skiff.example.com/reports/{relpath}"
    )


def test_skiff_serve_in_prod_needs_the_manifest_key_only(monkeypatch, tmp_path):
    """The server reads published models, never the warehouse, and links no report: under
    SKIFF_ENV=prod it starts without Snowflake credentials or a reports base, not without the
    key that verifies what it loads."""
    _prod(monkeypatch, tmp_path, *(n for n in PROD if n != "SKIFF_ENV"))
    monkeypatch.setenv(MANIFEST_KEY, "a-long-random-key")
    assert load_settings(serve_only=True).env == "prod"
    with pytest.raises(ConfigError, match="SNOWFLAKE_USER"):
        load_settings()  # anything else in production still needs them
    monkeypatch.delenv(MANIFEST_KEY)
    with pytest.raises(ConfigError, match=r"not set: SKIFF_MANIFEST_KEY$"):
        load_settings(serve_only=True)


def test_prod_refuses_unsigned_manifests(monkeypatch, tmp_path):
    """Everything else set: the manifest signing key alone is still required (a blank too)."""
    _prod(monkeypatch, tmp_path)
    monkeypatch.setenv(MANIFEST_KEY, "  ")
    with pytest.raises(ConfigError, match=r"not set: SKIFF_MANIFEST_KEY$"):
        load_settings()
    monkeypatch.setenv(MANIFEST_KEY, "a-long-random-key")
    assert load_settings().env == "prod"


def test_prod_with_credentials_targets_snowflake(monkeypatch, tmp_path):
    _prod(monkeypatch, tmp_path, "SNOWFLAKE_PASSWORD")
    monkeypatch.delenv("SKIFF_DBT_TARGET", raising=False)
    monkeypatch.setenv("SNOWFLAKE_PRIVATE_KEY_PATH", "x")
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


# Set by the code for dbt, never by a user: the dbt step passes each run's days to dbt's
# partition macro (orchestration/dbt/assets.py, dbt_project/macros/partitions.sql) and names
# the DuckDB file for profiles.yml (orchestration/dbt/inprocess.py).
INTERNAL_VARIABLES = {"SKIFF_DBT_START_DAY", "SKIFF_DBT_END_DAY", "SKIFF_DBT_DUCKDB_PATH"}
CODE = ("skiff", "serving", "orchestration", "ml", "skiff_cli")


def _variables_read() -> dict[str, set[str]]:
    """Every SKIFF_* name the code reads, with the files that name it.

    The code reads a variable by its name as a string literal, whatever the reader:
    `os.environ.get`/`[...]`, `env.get`, Dagster's `EnvVar`, serving's `_env`/`_flag`, the
    settings' `_positive_int`, or a module constant (`MANIFEST_KEY = "SKIFF_MANIFEST_KEY"`,
    `LOCK_TIMEOUT_VARIABLE`) passed to one of them; so every string constant that is exactly
    a name counts. A name assembled at run time (`"SKIFF_" + x`, an f-string) would escape
    that: such a prefix fails here. dbt reads its own with `env_var('...')`.
    """
    found: dict[str, set[str]] = {}
    for package in CODE:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            where = str(path.relative_to(REPO_ROOT))
            for node in ast.walk(ast.parse(path.read_text(), where)):
                if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                    continue
                prefix = node.value.startswith("SKIFF_") and node.value.endswith("_")
                assert not prefix, f"{where}:{node.lineno} builds a name from {node.value!r}"
                if re.fullmatch(r"SKIFF_[A-Z0-9_]+", node.value):
                    found.setdefault(node.value, set()).add(where)
    dbt = REPO_ROOT / "dbt_project"
    for path in [*dbt.rglob("*.sql"), *dbt.rglob("*.yml")]:
        if {"target", "dbt_packages", "logs"} & set(path.relative_to(dbt).parts):
            continue
        for name in re.findall(r"env_var\(\s*['\"](SKIFF_[A-Z0-9_]+)['\"]", path.read_text()):
            found.setdefault(name, set()).add(str(path.relative_to(REPO_ROOT)))
    return found


def test_env_example_and_the_configuration_page_list_every_variable_the_code_reads():
    read = _variables_read()
    # the scan sees each way of reading (not vacuous): settings, serving's helpers, a constant
    seen_through = {
        "SKIFF_HOME",  # os.environ.get
        "SKIFF_SERVE_EXPLORE_POOL",  # serving/config.py's _env
        "SKIFF_SERVE_EXCLUDE_VIEWED",  # serving/config.py's _flag
        "SKIFF_RETRAIN_TRAIN_DAYS",  # skiff/settings.py's _positive_int
        "SKIFF_DUCKDB_LOCK_TIMEOUT_S",  # a module constant
        "SKIFF_DBT_TARGET",  # also dbt's profiles.yml
    }
    assert seen_through <= set(read), sorted(seen_through - set(read))
    assert set(read) >= INTERNAL_VARIABLES, "an internal variable is gone: drop it above"
    example = (REPO_ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#? ?(SKIFF_[A-Z0-9_]+)=", example, re.MULTILINE))
    page = (REPO_ROOT / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"`(SKIFF_[A-Z0-9_]+)`", page))
    for where, names in ((".env.example", listed), ("docs/configuration.md", documented)):
        missing = {n: sorted(read[n]) for n in sorted(set(read) - names - INTERNAL_VARIABLES)}
        assert not missing, f"{where} lacks variables the code reads: {missing}"
    assert not listed - set(read), f".env.example lists unread {sorted(listed - set(read))}"
