"""The code location as data, compared with tests/__snapshots__/test_graph_snapshot.ambr.

Every asset (group, kinds, dependencies and their partition mappings, partitioning, pool,
retries, freshness, automation, code version, checks), every job, schedule and sensor. A change
to any of them shows up here as a readable diff; when it is intended, `make snapshot` rewrites
the reference and the diff goes into the commit.
"""

from __future__ import annotations

from typing import Any

from dagster import (
    AssetKey,
    Definitions,
    PartitionsDefinition,
    RetryPolicy,
    TimeWindowPartitionsDefinition,
)

from orchestration.definitions import build_definitions


def test_graph_snapshot(settings, snapshot):
    assert graph_snapshot(build_definitions(settings)) == snapshot


def graph_snapshot(defs: Definitions) -> dict[str, Any]:
    graph = defs.resolve_asset_graph()
    checks: dict[AssetKey, dict[str, str]] = {}
    for key in graph.asset_check_keys:
        spec = graph.get_check_spec(key)
        checks.setdefault(key.asset_key, {})[key.name] = (
            "blocking" if spec.blocking else "non-blocking"
        )
    assets = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        partitions = node.partitions_def
        deps = {}
        for parent in node.parent_keys:
            partitioned = partitions is not None or graph.get(parent).partitions_def is not None
            deps[parent.to_user_string()] = (
                repr(graph.get_partition_mapping(key, parent)) if partitioned else "-"
            )
        condition = node.automation_condition
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "kinds": ", ".join(sorted(node.kinds)),
            "deps": dict(sorted(deps.items())),
            "partitions": _partitions(partitions),
            "backfill_policy": str(node.backfill_policy) if node.backfill_policy else None,
            "pool": ", ".join(sorted(node.pools)) or None,
            "retry_policy": _retry(node.assets_def.op.retry_policy),
            "freshness_policy": _freshness(node.freshness_policy),
            "automation_condition": condition.get_label() or condition.name if condition else None,
            "code_version": node.code_version,
            "materializable": node.is_materializable,
            "checks": dict(sorted(checks.get(key, {}).items())),
        }
    jobs = {}
    for job in defs.jobs:
        resolved = defs.resolve_job_def(job.name)
        jobs[job.name] = {
            "assets": sorted(k.to_user_string() for k in job.selection.resolve(graph)),
            "partitions": _partitions(resolved.partitions_def),
            "op_retry_policy": _retry(job.op_retry_policy),
            "executor": resolved.executor_def.name,
        }
    schedules = {
        s.name: {
            "cron": s.cron_schedule,
            "timezone": s.execution_timezone,
            "job": s.job_name,
            "default_status": s.default_status.value,
        }
        for s in defs.schedules
    }
    sensors = {
        s.name: {
            "type": s.sensor_type.value,
            "jobs": sorted(t.job_name for t in s.targets if t.job_name),
            "default_status": s.default_status.value,
            "minimum_interval_seconds": s.minimum_interval_seconds,
        }
        for s in defs.sensors
    }
    return {
        "assets": dict(sorted(assets.items())),
        "jobs": dict(sorted(jobs.items())),
        "schedules": dict(sorted(schedules.items())),
        "sensors": dict(sorted(sensors.items())),
        "resources": sorted(defs.resources),
    }


def _partitions(partitions: PartitionsDefinition | None) -> str | None:
    if partitions is None:
        return None
    if isinstance(partitions, TimeWindowPartitionsDefinition):
        start, zone = partitions.start.isoformat(), partitions.timezone
        return (
            f"cron {partitions.cron_schedule!r} from {start} ({zone}), "
            f"format {partitions.fmt!r}, end offset {partitions.end_offset}"
        )
    return repr(partitions)


def _retry(policy: RetryPolicy | None) -> str | None:
    if policy is None:
        return None
    backoff = policy.backoff.value if policy.backoff else None
    return (
        f"max_retries={policy.max_retries} delay={policy.delay} backoff={backoff} "
        f"jitter={policy.jitter.value if policy.jitter else None}"
    )


def _freshness(policy: Any) -> str | None:
    if policy is None:
        return None
    fail, warn = getattr(policy, "fail_window", None), getattr(policy, "warn_window", None)
    if fail is None:
        return repr(policy)
    warn_text = f", warn after {warn.to_timedelta()}" if warn else ""
    return f"fail after {fail.to_timedelta()}{warn_text}"
