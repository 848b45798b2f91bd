"""One place for configuration: every path Skiff writes lives under SKIFF_HOME, except the
artifacts (registry, published models, hand-offs between steps, reports, caches), which go to
SKIFF_ARTIFACTS_URL when it is set (object storage shared by every step's process or pod).

Read by the command line, the Dagster definitions and (later) the server, so they agree on
where things are. Only environment variables configure Skiff; `.env.example` lists them all.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass
from pathlib import Path

from skiff.urls import DEFAULT_REPORTS_URL

REPO_ROOT = Path(__file__).resolve().parents[1]
DBT_PROJECT_DIR = REPO_ROOT / "dbt_project"

ENVIRONMENTS = ("local", "prod")
# The Dagster executor of every job: one process per run (local default: DuckDB has one
# writer, and no step pays for re-importing the definitions), or one process per step
# (production default: what a step launcher per pod does, so nothing may pass through memory).
EXECUTORS = ("in_process", "multiprocess")
# Daily partitions start at SKIFF_PARTITIONS_START, else at the earliest landing day, else here.
DEFAULT_PARTITIONS_START = "2026-01-01"
# Where the first partition came from (Settings.partitions_start_source).
PARTITIONS_START_SOURCES = ("SKIFF_PARTITIONS_START", "landing", "default")

# Everything `SKIFF_ENV=prod` needs, checked at start so a run never fails half-way for it.
SNOWFLAKE_REQUIRED = (
    "SNOWFLAKE_ACCOUNT",
    "SNOWFLAKE_USER",
    "SNOWFLAKE_ROLE",
    "SNOWFLAKE_WAREHOUSE",
    "SNOWFLAKE_DATABASE",
    "SNOWFLAKE_SCHEMA",
)
# Production signs every model manifest (ml.registry): a bucket writer cannot swap a model.
MANIFEST_KEY = "SKIFF_MANIFEST_KEY"
# Production's report links need a base its users reach (skiff/urls.py): either of these.
REPORTS_BASE = ("SKIFF_REPORTS_URL", "SKIFF_SERVE_URL")
REPORTS_WHY = (
    f"without it or SKIFF_SERVE_URL, Dagster's report links point at {DEFAULT_REPORTS_URL} "
    "(a local `skiff ui`), which no user of production reaches"
)

_DAGSTER_YAML = """\
# Written by Skiff (skiff/settings.py) when this DAGSTER_HOME was first used; edit freely.
telemetry:
  enabled: false
# the UI's first-visit "join the community" dialog: off for a tool kept open all day
nux:
  enabled: false
concurrency:
  pools:
    # DuckDB allows one process at a time on the warehouse file: steps in the `warehouse`
    # pool run one at a time across all runs, so no run ever meets a lock error.
    default_limit: 1
# Freshness policies (marts, predictions) are evaluated and shown in the UI only when enabled.
freshness:
  enabled: true
"""


class ConfigError(RuntimeError):
    """Configuration that cannot work, explained."""


@dataclass(frozen=True)
class Automation:
    """When the nightly run fires and how drift turns into retraining (docs/monitoring.md)."""

    timezone: str = "UTC"
    nightly_cron: str = "0 3 * * *"
    release_cron: str = "0 * * * *"  # the rollout controller's looks: hourly
    drift_persistence_days: int = 3
    retrain_train_days: int = 14
    retrain_cooldown_hours: int = 24  # after a failed or refused drift retraining
    alert_webhook: str | None = None


@dataclass(frozen=True)
class Settings:
    home: Path
    env: str
    partitions_start: dt.date
    raw_schema: str
    automation: Automation = Automation()
    executor: str = "in_process"
    # one of PARTITIONS_START_SOURCES: only a start set by SKIFF_PARTITIONS_START is a choice
    # that landing (or generating) an earlier day must not move
    partitions_start_source: str = "default"

    @property
    def landing(self) -> Path:
        return self.home / "landing"

    @property
    def warehouse_path(self) -> Path:
        return self.home / "warehouse.duckdb"

    @property
    def artifacts(self) -> Path:
        return self.home / "artifacts"

    @property
    def reports(self) -> Path:
        return self.home / "reports"

    @property
    def dagster_home(self) -> Path:
        """$SKIFF_HOME/dagster (SQLite), unless SKIFF_DAGSTER_HOME names another instance
        folder, e.g. one holding deploy/dagster.yaml (PostgreSQL) in production."""
        return Path(os.environ.get("SKIFF_DAGSTER_HOME") or self.home / "dagster")

    @property
    def models_schema(self) -> str:
        """Where dbt builds its models: DuckDB's `main`, or the Snowflake target's schema."""
        return os.environ.get("SNOWFLAKE_SCHEMA", "") if self.env == "prod" else "main"

    @property
    def artifacts_url(self) -> str | None:
        """SKIFF_ARTIFACTS_URL (object storage, any fsspec URL) without a trailing "/", or None
        (everything stays under SKIFF_HOME)."""
        return os.environ.get("SKIFF_ARTIFACTS_URL", "").strip().rstrip("/") or None

    def _artifact_root(self, name: str, local: Path | None = None) -> str | Path:
        """`<SKIFF_ARTIFACTS_URL>/<name>` when set, else `local` (default artifacts/<name>)."""
        base = self.artifacts_url
        return f"{base}/{name}" if base else (local or self.artifacts / name)

    @property
    def handoff_root(self) -> str | Path:
        """What one step gives another (orchestration/handoff.py), keyed by run."""
        return self._artifact_root("handoff")

    @property
    def reports_root(self) -> str | Path:
        """Where reports are written: the bucket's `reports/` when SKIFF_ARTIFACTS_URL is
        set, else `settings.reports` (home/reports)."""
        return self._artifact_root("reports", self.reports)

    @property
    def cache_root(self) -> str | Path:
        """Caches that any step may rebuild (monitoring's reference data)."""
        return self._artifact_root("cache")

    @property
    def registry(self) -> str | Path:
        """Every trained model version, with its manifest (ml.registry)."""
        return self._artifact_root("registry")

    @property
    def published(self) -> str | Path:
        """What the server loads: the champion and challenger, published atomically."""
        return self._artifact_root("published")

    @property
    def dbt_target(self) -> str:
        return os.environ.get("SKIFF_DBT_TARGET") or (
            "snowflake" if self.env == "prod" else "duckdb"
        )


def load_settings(*, serve_only: bool = False) -> Settings:
    """Read the environment. Raises ConfigError naming what is wrong.

    `serve_only`: for a process that only serves the published models (`skiff serve`): with
    SKIFF_ENV=prod it needs the manifest key, but neither the warehouse's credentials nor a
    base for report links, which it never uses.
    """
    env = os.environ.get("SKIFF_ENV", "local").strip().lower() or "local"
    if env not in ENVIRONMENTS:
        raise ConfigError(f"SKIFF_ENV={env!r} is not one of {list(ENVIRONMENTS)}")
    if env == "prod":
        _check_prod(serve_only)
    home = Path(os.environ.get("SKIFF_HOME") or REPO_ROOT / ".skiff").expanduser().resolve()
    start, source = _partitions_start(home / "landing")
    return Settings(
        home=home,
        env=env,
        partitions_start=start,
        partitions_start_source=source,
        raw_schema=os.environ.get("SKIFF_RAW_SCHEMA", "raw"),
        automation=_automation(),
        executor=_executor(env),
    )


def _check_prod(serve_only: bool) -> None:
    """What SKIFF_ENV=prod needs, every missing variable named at once."""
    missing = []
    if not serve_only:
        missing = [name for name in SNOWFLAKE_REQUIRED if not os.environ.get(name)]
        if not (
            os.environ.get("SNOWFLAKE_PASSWORD") or os.environ.get("SNOWFLAKE_PRIVATE_KEY_PATH")
        ):
            missing.append("SNOWFLAKE_PASSWORD (or SNOWFLAKE_PRIVATE_KEY_PATH)")
    if not os.environ.get(MANIFEST_KEY, "").strip():
        missing.append(MANIFEST_KEY)
    no_base = not serve_only and not any(os.environ.get(n, "").strip() for n in REPORTS_BASE)
    if no_base:
        missing.append(f"{REPORTS_BASE[0]} (or {REPORTS_BASE[1]})")
    if missing:
        raise ConfigError(
            "SKIFF_ENV=prod needs these environment variables, which are not set: "
            + ", ".join(missing)
            + (f". {REPORTS_BASE[0]}: {REPORTS_WHY}" if no_base else "")
        )


def _partitions_start(landing: Path) -> tuple[dt.date, str]:
    """The first daily partition and where it came from: SKIFF_PARTITIONS_START when set; else
    the earliest `YYYY-MM-DD` folder in the landing folder, so a state shows the days its data
    has and no months of missing partitions before them; else DEFAULT_PARTITIONS_START (nothing
    has landed yet).

    Read from the landing folder each time the settings load (one directory listing): a day
    landed before the first partition moves the start back, once the code location reloads.
    Set SKIFF_PARTITIONS_START where the start must not move (production: the first day of the
    history kept), or where landing days live elsewhere than `$SKIFF_HOME/landing`.
    """
    text = os.environ.get("SKIFF_PARTITIONS_START", "").strip()
    if text:
        try:
            return dt.date.fromisoformat(text), "SKIFF_PARTITIONS_START"
        except ValueError as exc:
            raise ConfigError(f"SKIFF_PARTITIONS_START={text!r} is not a YYYY-MM-DD date") from exc
    days = []
    if landing.is_dir():
        for entry in os.scandir(landing):
            if entry.is_dir() and re.fullmatch(r"\d{4}-\d{2}-\d{2}", entry.name):
                try:
                    days.append(dt.date.fromisoformat(entry.name))
                except ValueError:  # 2026-02-30: not a day
                    continue
    if days:
        return min(days), "landing"
    return dt.date.fromisoformat(DEFAULT_PARTITIONS_START), "default"


def _executor(env: str) -> str:
    """SKIFF_EXECUTOR, default in_process locally and multiprocess in production."""
    text = os.environ.get("SKIFF_EXECUTOR", "").strip()
    if not text:
        return "in_process" if env == "local" else "multiprocess"
    if text.lower() not in EXECUTORS:
        raise ConfigError(f"SKIFF_EXECUTOR={text!r} is not one of {list(EXECUTORS)}")
    return text.lower()


def _positive_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{name}={text!r} is not a whole number of at least 1")
    return int(text)


def _automation() -> Automation:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    timezone = os.environ.get("SKIFF_TIMEZONE", "").strip() or "UTC"
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"SKIFF_TIMEZONE={timezone!r} is not an IANA time zone") from exc
    cron = os.environ.get("SKIFF_NIGHTLY_CRON", "").strip() or Automation.nightly_cron
    if cron != Automation.nightly_cron:
        _check_cron("SKIFF_NIGHTLY_CRON", cron)
    release = os.environ.get("SKIFF_RELEASE_CRON", "").strip() or Automation.release_cron
    if release != Automation.release_cron:
        _check_cron("SKIFF_RELEASE_CRON", release)
    return Automation(
        timezone=timezone,
        nightly_cron=cron,
        release_cron=release,
        drift_persistence_days=_positive_int("SKIFF_DRIFT_PERSISTENCE_DAYS", 3),
        retrain_train_days=_positive_int("SKIFF_RETRAIN_TRAIN_DAYS", 14),
        retrain_cooldown_hours=_positive_int("SKIFF_RETRAIN_COOLDOWN_HOURS", 24),
        alert_webhook=os.environ.get("SKIFF_ALERT_WEBHOOK_URL", "").strip() or None,
    )


def _check_cron(name: str, cron: str) -> None:
    """Dagster's own schedule validation, so a value is refused here, named, rather than when
    the definitions load. Imported only for a value other than the default: Dagster takes about
    a second to import, which processes that never schedule (`skiff serve`) need not pay."""
    from dagster import DagsterInvalidDefinitionError, ScheduleDefinition

    try:
        ScheduleDefinition(name="nightly", cron_schedule=cron, job_name="nightly")
    except DagsterInvalidDefinitionError as exc:
        raise ConfigError(f"{name}={cron!r} is not a five-field cron expression") from exc


def ensure_home(settings: Settings) -> Settings:
    """Create the folders under SKIFF_HOME and export the paths dbt and Dagster read.

    Idempotent. dbt's profile reads SKIFF_HOME and SKIFF_RAW_SCHEMA from the environment, and
    `dagster dev` persists runs only when DAGSTER_HOME is set, so both are exported here.
    """
    local = [settings.landing, settings.reports, settings.dagster_home]
    if settings.artifacts_url is None:  # else nothing of the artifacts lives on this machine
        local.append(settings.artifacts)
    for path in local:
        path.mkdir(parents=True, exist_ok=True)
    dagster_yaml = settings.dagster_home / "dagster.yaml"
    if not dagster_yaml.exists():
        dagster_yaml.write_text(_DAGSTER_YAML)
    os.environ["SKIFF_HOME"] = str(settings.home)
    os.environ["SKIFF_RAW_SCHEMA"] = settings.raw_schema
    os.environ["DAGSTER_HOME"] = str(settings.dagster_home)
    return settings
