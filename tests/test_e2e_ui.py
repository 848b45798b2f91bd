"""End to end through the Dagster UI's API: `dagster dev` on 127.0.0.1, a run launched over
GraphQL (the daemon dequeues it), a backfill of a day range as the UI launches it (one run for
the range), and the lineage read back from the API."""

from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path

import httpx
import pytest
from dagster import DagsterInstance
from dagster_graphql import DagsterGraphQLClient

from ml.synthetic import GeneratorConfig, generate
from orchestration.definitions import DAILY_REFRESH, DATA_GROUPS
from orchestration.runs import run_days
from tests.servers import free_port, running, wait_for_run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

START = dt.date(2026, 1, 5)

LINEAGE = """
{ assetNodes { assetKey { path } dependencyKeys { path } groupName } }
"""
BACKFILL = """
mutation ($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}
"""
BACKFILL_STATUS = """
query ($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    ... on PartitionBackfill { status runs(limit: 10) { runId status tags { key value } } }
  }
}
"""
JOB_RUNS = """
query ($job: String!) {
  pipelineOrError(
    params: {repositoryLocationName: "skiff", repositoryName: "__repository__", pipelineName: $job}
  ) { ... on Pipeline { runs(limit: 20) { runId } } }
}
"""
REEXECUTE = """
mutation ($parent: String!) {
  launchPipelineReexecution(reexecutionParams: {parentRunId: $parent, strategy: ALL_STEPS}) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}
"""
LATEST = """
query ($path: [String!]!) {
  assetOrError(assetKey: {path: $path}) {
    ... on Asset { assetMaterializations(limit: 5) { partition runId } }
  }
}
"""


@pytest.fixture
def dagster_dev(settings, tmp_path: Path):
    generate(settings.landing, GeneratorConfig(days=2, sessions_per_day=60, seed=3, start=START))
    port = free_port()
    dagster = str(Path(sys.executable).parent / "dagster")
    argv = [dagster, "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    with running(argv, tmp_path / "dagster_dev.log", f"http://127.0.0.1:{port}/server_info"):
        yield port


def test_launch_through_graphql_and_read_lineage(dagster_dev, settings):
    port = dagster_dev
    client = DagsterGraphQLClient("127.0.0.1", port_number=port, timeout=30)
    # Two runs at once, each writing the same DuckDB file: the `warehouse` pool serializes
    # their writing steps, so neither meets DuckDB's file lock.
    second = (START + dt.timedelta(days=1)).isoformat()
    run_id, other_id = (
        client.submit_job_execution("daily_refresh", tags={"dagster/partition": day})
        for day in (START.isoformat(), second)
    )
    assert {rid: wait_for_run(client, rid) for rid in (run_id, other_id)} == {
        run_id: "SUCCESS",
        other_id: "SUCCESS",
    }

    def gql(query: str, variables: dict | None = None) -> dict:
        response = httpx.post(
            f"http://127.0.0.1:{port}/graphql",
            json={"query": query, "variables": variables or {}},
            timeout=30,
        )
        response.raise_for_status()
        return response.json()["data"]

    nodes = {"/".join(n["assetKey"]["path"]): n for n in gql(LINEAGE)["assetNodes"]}
    deps = {key: {"/".join(d["path"]) for d in n["dependencyKeys"]} for key, n in nodes.items()}
    assert "raw_browsing_events" in deps["stg_browsing_events"]
    assert "raw_products" in deps["stg_products"]
    assert "stg_browsing_events" in deps["int_events_sessionized"]
    for mart in ("sessions", "conversion_examples", "session_sequences"):
        assert nodes[mart]["groupName"] == "marts"
        materialized = gql(LATEST, {"path": [mart]})["assetOrError"]["assetMaterializations"]
        assert {(m["partition"], m["runId"]) for m in materialized} >= {(START.isoformat(), run_id)}

    # A backfill over both days, launched as the UI's Materialize button does: the single-run
    # backfill policy turns the range into one run.
    days = [START.isoformat(), second]
    data_assets = [key for key, node in nodes.items() if node["groupName"] in DATA_GROUPS]
    launched = gql(
        BACKFILL,
        {
            "params": {
                "partitionNames": days,
                "assetSelection": [{"path": key.split("/")} for key in data_assets],
            }
        },
    )["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        backfill = gql(BACKFILL_STATUS, {"id": launched["backfillId"]})["partitionBackfillOrError"]
        if backfill["status"] not in {"REQUESTED", "CANCELING", "FAILING"}:
            break
        time.sleep(3)
    assert backfill["status"] in {"COMPLETED", "COMPLETED_SUCCESS"}, backfill
    assert len(backfill["runs"]) == 1 and backfill["runs"][0]["status"] == "SUCCESS"
    tags = {t["key"]: t["value"] for t in backfill["runs"][0]["tags"]}
    assert (
        tags["dagster/asset_partition_range_start"],
        tags["dagster/asset_partition_range_end"],
    ) == tuple(days)

    # A run launched from the command line (`skiff run` calls run_days) is the code location's
    # own: the UI lists it under its job and re-executes it through the code location. (Runs
    # executed in process without an origin were listed nowhere but Runs.)
    assert run_days(settings, START, START)
    with DagsterInstance.get() as instance:
        cli_run = instance.get_runs(limit=1)[0].run_id
    listed = gql(JOB_RUNS, {"job": DAILY_REFRESH})["pipelineOrError"]["runs"]
    assert cli_run in {r["runId"] for r in listed}
    again = gql(REEXECUTE, {"parent": cli_run})["launchPipelineReexecution"]
    assert again["__typename"] == "LaunchRunSuccess", again
    assert wait_for_run(client, again["run"]["runId"]) == "SUCCESS"
