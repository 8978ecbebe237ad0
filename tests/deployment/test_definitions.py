"""Definitions load and validate; the schedule targets yesterday; backfills over a range work."""

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from pinnersage_dagster.assets import all_assets
from pinnersage_dagster.checks import all_checks, experiment_sample_ratio
from pinnersage_dagster.definitions import defs
from pinnersage_dagster.partitions import daily_partitions

from ..support import DAY, check_results, make_resources, materializations, materialize_history, range_tags

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_definitions_hold_the_whole_graph():
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {
        "pins",
        "candidate_pool",
        "pin_index",
        "raw_actions",
        "action_windows",
        "user_clusters",
        "user_medoids",
        "serving_snapshot",
        "offline_evaluation",
        "pin_embeddings",
        "experiment_report",
    }
    job = defs.resolve_job_def("pinnersage_daily_job")
    assert job.partitions_def == daily_partitions
    assert defs.resolve_schedule_def("pinnersage_daily_schedule").cron_schedule == "0 2 * * *"
    policies = {k.to_user_string(): a.backfill_policy for a in all_assets if a.partitions_def for k in a.keys}
    assert policies["raw_actions"] == dg.BackfillPolicy.single_run()
    assert policies["user_clusters"] == dg.BackfillPolicy.multi_run(7)
    assert policies["pin_index"] == dg.BackfillPolicy.multi_run(1)
    check_names = {key.name for check in all_checks for key in check.check_keys}
    assert check_names == {
        "every_active_user_has_a_cluster",
        "clusters_per_user_within_bounds",
        "medoid_is_cluster_member",
        "importance_is_finite_and_positive",
        "pin_index_matches_candidate_pool",
        "experiment_sample_ratio",
    }
    # one warehouse user at a time (the sample-ratio check reads the report's file, not the warehouse)
    assert all(a.op.pool == "duckdb" for a in [*all_assets, *all_checks] if a is not experiment_sample_ratio)
    # the experiment's report is materialized when its traffic is over, not by the daily job
    daily = {k.to_user_string() for k in job.asset_layer.asset_graph.get_all_asset_keys() if job.asset_layer.has(k)}
    assert "experiment_report" not in daily and "serving_snapshot" in daily


def test_dagster_definitions_validate(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").write_text((ROOT / "deploy" / "dagster.yaml").read_text())
    run = subprocess.run(
        [str(BIN / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "All code locations passed validation" in run.stdout + run.stderr


def test_schedule_requests_the_latest_complete_day():
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 11, 22, 2, 0, tzinfo=UTC))
    result = defs.resolve_schedule_def("pinnersage_daily_schedule").evaluate_tick(context)
    assert [r.partition_key for r in result.run_requests] == ["2026-11-21"]
    assert result.run_requests[0].job_name == "pinnersage_daily_job"


def test_instance_config_serializes_warehouse_steps(tmp_path):
    (tmp_path / "dagster.yaml").write_text((ROOT / "deploy" / "dagster.yaml").read_text())
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    try:
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 1
    finally:
        instance.dispose()


@pytest.mark.slow
def test_backfill_as_one_range_run_equals_daily_runs(tmp_path):
    """A 3-day range run (what a backfill launches) writes the same rows as three daily runs."""
    days = [DAY - timedelta(days=2), DAY - timedelta(days=1), DAY]
    selection = dg.AssetSelection.assets("action_windows", "user_clusters", "user_medoids")
    ranged, daily = make_resources(tmp_path / "ranged"), make_resources(tmp_path / "daily")
    for resources in (ranged, daily):
        (Path(resources["duckdb"].database)).parent.mkdir(parents=True)
        assert materialize_history(resources, DAY, days=12).success
    result = dg.materialize(
        [*all_assets, *all_checks], selection=selection, resources=ranged, tags=range_tags(days[0], DAY)
    )
    assert result.success and all(check_results(result).values())
    assert len(materializations(result, "user_medoids")) == 3  # one per partition
    for day in days:
        assert dg.materialize(all_assets, selection=selection, resources=daily, partition_key=day.isoformat()).success

    import duckdb

    def rows(resources):
        with duckdb.connect(resources["duckdb"].database, read_only=True) as conn:
            return conn.execute(
                "SELECT partition_date, user_id, cluster_id, medoid_pin_id, importance FROM user_medoids ORDER BY ALL"
            ).fetchall()

    assert rows(ranged) == rows(daily)
    assert {r[0] for r in rows(ranged)} == set(days)


def test_overlapping_backfills_leave_identical_tables(tmp_path):
    """Ranges [D-3, D-1] then [D-2, D] (raw_actions included) equal one clean pass over [D-3, D]."""
    from ..support import content_hash

    selection = dg.AssetSelection.assets("raw_actions", "action_windows", "user_clusters", "user_medoids")
    overlapping, clean = make_resources(tmp_path / "overlapping"), make_resources(tmp_path / "clean")
    for resources in (overlapping, clean):
        Path(resources["duckdb"].database).parent.mkdir(parents=True)
        assert materialize_history(resources, DAY, days=12).success
    for first, last in ((DAY - timedelta(days=3), DAY - timedelta(days=1)), (DAY - timedelta(days=2), DAY)):
        assert dg.materialize(
            all_assets, selection=selection, resources=overlapping, tags=range_tags(first, last)
        ).success
    assert dg.materialize(
        all_assets, selection=selection, resources=clean, tags=range_tags(DAY - timedelta(days=3), DAY)
    ).success

    import duckdb

    tables = ["raw_actions", "raw_actions_quarantine", "action_windows", "user_clusters"]

    def state(resources):
        with duckdb.connect(resources["duckdb"].database, read_only=True) as conn:
            hashes = {t: content_hash(conn, t) for t in tables}
            dupes = conn.execute(
                "SELECT count(*) FROM (SELECT partition_date, user_id, cluster_id FROM user_medoids GROUP BY ALL HAVING count(*) > 1)"
            ).fetchone()[0]
            medoids = conn.execute(
                "SELECT * EXCLUDE (importance), importance FROM user_medoids ORDER BY ALL"
            ).fetchall()
        return hashes, dupes, medoids

    (hashes, dupes, medoids), (clean_hashes, _, clean_medoids) = state(overlapping), state(clean)
    assert hashes == clean_hashes and dupes == 0
    # a day keeps the day before's interests for unchanged users (importance decayed by a day) when
    # that day is still the one it checked; the two histories reuse different days, so importance
    # agrees to rounding, everything else exactly (docs/performance.md, the per-user pass)
    assert [m[:-1] for m in medoids] == [m[:-1] for m in clean_medoids]
    assert [m[-1] for m in medoids] == pytest.approx([m[-1] for m in clean_medoids], rel=1e-12)


@pytest.mark.slow
def test_backfill_from_the_cli(tmp_path):
    """`dagster asset materialize --partition-range` over raw_actions, the single-run asset."""
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path),
        "PINNERSAGE_DUCKDB_PATH": str(tmp_path / "w.duckdb"),
        "PINNERSAGE_INDEX_ROOT": str(tmp_path / "idx"),
        "PINNERSAGE_SYNTHETIC_USERS": "50",
        "PINNERSAGE_SYNTHETIC_PINS": "2000",
    }
    (tmp_path / "dagster.yaml").write_text((ROOT / "deploy" / "dagster.yaml").read_text())
    base = [str(BIN / "dagster"), "asset", "materialize", "-m", "pinnersage_dagster.definitions"]
    for args in (["--select", "pins"], ["--select", "raw_actions", "--partition-range", "2026-06-01...2026-06-05"]):
        run = subprocess.run(base + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    import duckdb

    with duckdb.connect(env["PINNERSAGE_DUCKDB_PATH"], read_only=True) as conn:
        days = conn.execute("SELECT DISTINCT partition_date FROM raw_actions ORDER BY 1").fetchall()
    assert [d[0] for d in days] == [date(2026, 6, 1) + timedelta(days=i) for i in range(5)]


@pytest.mark.slow
def test_make_dev_starts_without_warnings_and_loads_the_code(tmp_path):
    """`make dev`'s command (dg dev, the venv active): the UI loads the one code location, and
    nothing of the project's own making warns on the way."""
    import socket
    import urllib.request

    (tmp_path / "dagster.yaml").write_text((ROOT / "deploy" / "dagster.yaml").read_text())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path),
        "VIRTUAL_ENV": str(BIN.parent),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    server = subprocess.Popen(
        [str(BIN / "dg"), "dev", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    query = b'{"query": "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"}'
    status = None
    try:
        for _ in range(240):
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/graphql", data=query, headers={"content-type": "application/json"}
                )
                with urllib.request.urlopen(request, timeout=5) as response:
                    entries = json.loads(response.read())["data"]["workspaceOrError"]["locationEntries"]
                status = [(e["name"], e["loadStatus"]) for e in entries]
                if status == [("pinnersage_dagster", "LOADED")]:
                    break
            except OSError:
                pass
            time.sleep(0.5)
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            output = server.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:  # seen once on a loaded machine: its daemon stopped, the rest lingered
            os.killpg(server.pid, signal.SIGKILL)
            output = server.communicate(timeout=30)[0]
    assert status == [("pinnersage_dagster", "LOADED")], output[-3000:]
    assert "warn" not in output.lower(), output[-3000:]
