"""A real Dagster instance (persistent storage, the shipped dagster.yaml, dagster-daemon): the
schedule's run for the latest day, an overlapping multi-day backfill and a run started outside
the queue (`dagster asset materialize`) race each other. The queue starts one run at a time, the
pool makes the outside run wait for the warehouse; every run must succeed, none may hit the
DuckDB lock, and the warehouse must end exactly as a sequential run leaves it."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from pinnersage_dagster.assets import all_assets
from pinnersage_dagster.definitions import defs
from pinnersage_dagster.jobs import pinnersage_daily_job
from pinnersage_dagster.resources import build_resources

from ..support import content_hash, deployment_env

REPO = Path(__file__).resolve().parents[2]
DAGSTER = str(Path(sys.executable).parent / "dagster")
TABLES = ["raw_actions", "action_windows", "user_clusters", "user_medoids"]


def materialize_in_process(env: dict[str, str], selection: list[str], days: list[str | None]) -> None:
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        resources = build_resources()
        for day in days:
            assert dg.materialize(all_assets, selection=selection, resources=resources, partition_key=day).success
    finally:
        os.environ.clear()
        os.environ.update(saved)


def table_hashes(database: str, days: list[str]) -> dict:
    with duckdb.connect(database, read_only=True) as conn:
        return {
            (table, day): content_hash(conn, f"(SELECT * FROM {table} WHERE partition_date = DATE '{day}')")
            for table in TABLES
            for day in days
        }


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [DAGSTER, *args, "-w", "workspace.yaml"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_schedule_run_and_overlapping_backfill_race_without_lock_failures(tmp_path):
    live, reference = tmp_path / "live", tmp_path / "reference"
    env, reference_env = deployment_env(live), deployment_env(reference)
    (live / "dagster_home").mkdir(parents=True)
    shutil.copy(REPO / "deploy" / "dagster.yaml", live / "dagster_home" / "dagster.yaml")

    tick = datetime.now(UTC).replace(hour=2, minute=0, second=0, microsecond=0)
    (request,) = (
        defs.resolve_schedule_def("pinnersage_daily_schedule")
        .evaluate_tick(dg.build_schedule_context(scheduled_execution_time=tick))
        .run_requests
    )
    latest = request.partition_key
    first = (datetime.fromisoformat(latest) - timedelta(days=1)).date().isoformat()
    days = [first, latest]
    # yesterday's history is in place, as on any day of a deployment; the runs re-make it
    for target, target_env in ((live, env), (reference, reference_env)):
        target.mkdir(exist_ok=True)
        materialize_in_process(target_env, ["pins"], [None])
        materialize_in_process(target_env, ["raw_actions"], days)

    # create the instance's storage once, before two processes race to create it
    subprocess.run([DAGSTER, "instance", "migrate"], cwd=REPO, env=env, check=True, capture_output=True, timeout=300)
    daemon = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        tags = {**request.tags, "dagster/partition": latest}
        cli(env, "job", "launch", "-j", pinnersage_daily_job.name, "--tags", json.dumps(tags))
        cli(env, "job", "backfill", "-j", pinnersage_daily_job.name, "--from", first, "--to", latest, "--noprompt")
        # an operator's run from the command line, outside the queue, at the same time
        outside = subprocess.run(
            [DAGSTER, "asset", "materialize", "-m", "pinnersage_dagster.definitions", "--partition", first]
            + ["--select", "action_windows,user_clusters,user_medoids"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert outside.returncode == 0, outside.stderr[-3000:]
        runs = wait_for_runs(env, expected=2 + len(days), timeout=1200)
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(timeout=60)

    statuses = {r["run_id"]: r["status"] for r in runs}
    assert list(statuses.values()).count("SUCCESS") == len(runs) == 2 + len(days), runs
    assert sorted(r["partition"] for r in runs) == sorted([latest, first, *days])
    assert sum(r["lock_errors"] for r in runs) == 0
    queued = sorted((r["start"], r["end"]) for r in runs if r["queued"])
    assert len(queued) == 1 + len(days)
    assert all(end <= start for (_, end), (start, _) in pairwise(queued)), queued  # one at a time
    outside_run = next(r for r in runs if not r["queued"])
    overlapped = [
        r for r in runs if r["queued"] and r["start"] < outside_run["end"] and outside_run["start"] < r["end"]
    ]
    assert overlapped and outside_run["pool_waits"] > 0  # it really did wait for the warehouse

    for day in days:  # the reference: the same days run one after another, in process
        materialize_in_process(reference_env, ["action_windows", "user_clusters", "user_medoids"], [day])
    assert table_hashes(env["PINNERSAGE_DUCKDB_PATH"], days) == table_hashes(
        reference_env["PINNERSAGE_DUCKDB_PATH"], days
    )
    with duckdb.connect(env["PINNERSAGE_DUCKDB_PATH"], read_only=True) as conn:
        dupes = conn.execute(
            "SELECT count(*) FROM (SELECT partition_date, user_id, cluster_id FROM user_medoids GROUP BY ALL HAVING count(*) > 1)"
        ).fetchone()[0]
    assert dupes == 0


def wait_for_runs(env: dict[str, str], expected: int, timeout: float) -> list[dict]:
    """Poll the instance until ``expected`` runs have finished; each with its status, partition,
    whether it went through the queue, its start and end, and the lock errors and pool waits read
    from its event log."""
    probe = """
import json, re, dagster as dg
LOCK = re.compile("could not set lock|conflicting lock|database is locked|lock on file", re.I)
instance = dg.DagsterInstance.get()
out = []
for record in instance.get_run_records():
    run = record.dagster_run
    logs = instance.all_logs(run.run_id)
    text = [(e.message or "") + str(e.dagster_event.event_specific_data if e.dagster_event else "") for e in logs]
    out.append({"run_id": run.run_id, "status": run.status.value, "partition": run.tags.get("dagster/partition"),
                "queued": any(
                    e.dagster_event and e.dagster_event.event_type_value == "PIPELINE_ENQUEUED" for e in logs),
                "start": record.start_time or 0.0, "end": record.end_time or 0.0,
                "lock_errors": sum(bool(LOCK.search(t)) for t in text),
                "pool_waits": sum("blocked by limit for pool" in t.lower() for t in text)})
print(json.dumps(out))
"""
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        runs = json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else []
        finished = [r for r in runs if r["status"] in ("SUCCESS", "FAILURE", "CANCELED")]
        if len(finished) >= expected or any(r["status"] == "FAILURE" for r in runs):
            return runs
        if time.monotonic() > deadline:
            pytest.fail(f"runs did not finish in {timeout}s: {runs}")
        time.sleep(5)
