"""Each asset on a tiny graph: what it writes, its metadata, and that re-runs replace partitions."""

import json
import shutil
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest

from pinnersage_dagster.assets import all_assets
from pinnersage_dagster.config import PinnerSageParams
from pinnersage_dagster.core.hnsw import read_index_manifest
from pinnersage_dagster.resources import FileSource

from ..support import (
    DAY,
    PARTITIONED,
    WINDOW,
    content_hash,
    make_resources,
    materialize_day,
    materialize_history,
    metadata_of,
)

TABLES = [
    "raw_actions",
    "raw_actions_quarantine",
    *PARTITIONED[:3],
    "pins",
    "candidate_pool",
    "candidate_pool_exclusions",
]
EXAMPLES = Path(__file__).resolve().parents[2] / "data" / "examples"


def test_every_table_is_written_for_the_day(graph):
    with graph.connect(read_only=True) as conn:
        for table in ("action_windows", "user_clusters", "user_medoids"):
            days = conn.execute(f"SELECT DISTINCT partition_date FROM {table}").fetchall()
            assert days == [(DAY,)], table
        raw_days = conn.execute("SELECT count(DISTINCT partition_date) FROM raw_actions").fetchone()[0]
        assert raw_days == WINDOW
        first = conn.execute("SELECT min(ts) FROM action_windows").fetchone()[0]
        assert first.date() >= DAY - timedelta(days=WINDOW - 1)
        users = conn.execute("SELECT count(DISTINCT user_id) FROM action_windows").fetchone()[0]
        clustered = conn.execute("SELECT count(DISTINCT user_id) FROM user_medoids").fetchone()[0]
        assert users == clustered > 40
        reasons = dict(conn.execute("SELECT reason, count(*) FROM raw_actions_quarantine GROUP BY ALL").fetchall())
        assert set(reasons) <= {"duplicate_event", "unknown_pin_id"} and sum(reasons.values()) > 0  # planted faults
    manifest = read_index_manifest(Path(graph.resources["index_store"].root) / DAY.isoformat())
    assert manifest.source_partition == DAY.isoformat() and manifest.dimension == 256 and manifest.count > 2000


def test_importance_is_recomputed_from_the_window(graph):
    with graph.connect(read_only=True) as conn:
        diff = conn.execute(
            """
            WITH members AS (SELECT user_id, cluster_id, unnest(pin_ids) AS pin_id FROM user_clusters),
            expected AS (
              SELECT m.user_id, m.cluster_id,
                     sum(exp(-0.01 * epoch(TIMESTAMP '2026-06-11' - w.ts) / 86400)) AS importance, count(*) AS n
              FROM members m JOIN action_windows w USING (user_id, pin_id) GROUP BY ALL)
            SELECT max(abs(e.importance - u.importance)), sum(CASE WHEN e.n <> u.n_actions THEN 1 ELSE 0 END)
            FROM expected e JOIN user_medoids u USING (user_id, cluster_id)
            """
        ).fetchone()
    assert diff[0] < 1e-9 and diff[1] == 0


def test_rematerializing_a_partition_replaces_it_exactly(graph_copy):
    with graph_copy.connect() as conn:
        before = {t: content_hash(conn, t) for t in TABLES}
    before_manifest = read_index_manifest(Path(graph_copy.resources["index_store"].root) / DAY.isoformat())
    assert materialize_history(graph_copy.resources, DAY).success
    result = materialize_day(graph_copy.resources, DAY)
    with graph_copy.connect() as conn:
        after = {t: content_hash(conn, t) for t in TABLES}
        dupes = conn.execute(
            "SELECT count(*) FROM (SELECT user_id, cluster_id FROM user_medoids GROUP BY ALL HAVING count(*) > 1)"
        ).fetchone()[0]
    assert after == before and dupes == 0
    after_manifest = read_index_manifest(Path(graph_copy.resources["index_store"].root) / DAY.isoformat())
    assert after_manifest.pin_ids_sha256 == before_manifest.pin_ids_sha256
    assert after_manifest.build_id != before_manifest.build_id  # rebuilt and republished

    pool = metadata_of(result, "candidate_pool")  # the same catalog and settings: the published pool stands
    assert pool["graph_update"] == "unchanged" and pool["graph_bytes_written_mib"] == 0
    index = metadata_of(result, "pin_index")
    assert index["index_mode"] == "linked pool graph" and index["tombstones"] > 0
    # one graph on disk: the day's index writes only its label files, not a second graph
    assert index["deleted_at_load"] > 0 and index["bytes_written_mib"] < index["size_on_disk_mb"] / 10

    clusters = metadata_of(result, "user_clusters")
    assert {"users", "clusters_per_user", "clusters_per_user_histogram", "example_user"} <= set(clusters)
    medoids = metadata_of(result, "user_medoids")
    assert "example_user_interests" in medoids and medoids["users"] == clusters["users"]
    snapshot = metadata_of(result, "serving_snapshot")  # the catalog did not change: nothing of it is copied
    assert snapshot["catalog_base_reused"] and snapshot["catalog_delta_pins"] == 0
    assert snapshot["bytes_linked_mib"] > snapshot["bytes_written_mib"]


def test_a_day_whose_pool_is_a_small_part_of_the_graph_gets_a_compact_index(graph_copy, monkeypatch):
    import pinnersage_dagster.assets.index as index_module

    monkeypatch.setattr(index_module, "MIN_LIVE_SHARE", 1.0)  # any tombstone is too many
    result = dg.materialize(
        all_assets, selection=["pin_index"], resources=graph_copy.resources, partition_key=DAY.isoformat()
    )
    index = metadata_of(result, "pin_index")
    assert index["index_mode"] == "compact build" and index["tombstones"] == 0
    with graph_copy.connect(read_only=True) as conn:
        expected = conn.execute(
            "SELECT count(*) FROM candidate_pool WHERE created_at < ?", [DAY + timedelta(days=1)]
        ).fetchone()[0]
    assert index["dagster/row_count"] == expected


def test_a_pool_stands_only_while_its_catalog_settings_graph_and_tables_are_the_recorded_ones(graph_copy):
    """An unchanged catalog costs the pool a check, not a rebuild; anything that differs from
    what the published pool was built from, or a table changed behind its record, computes it."""
    resources = graph_copy.resources
    with graph_copy.connect(read_only=True) as conn:
        before = {t: content_hash(conn, t) for t in ("candidate_pool", "candidate_pool_exclusions")}
        recorded = conn.execute("SELECT version FROM lineage WHERE asset = 'candidate_pool'").fetchone()[0]

    def pool_run(**changes) -> dict:
        run_resources = {**resources, "params": PinnerSageParams(window_days=WINDOW, **changes)}
        return metadata_of(
            dg.materialize(all_assets, selection=["candidate_pool"], resources=run_resources), "candidate_pool"
        )

    standing = pool_run()
    assert standing["graph_update"] == "unchanged" and standing["version"] == recorded
    first = metadata_of(dg.materialize(all_assets, selection=["candidate_pool"], resources=resources), "candidate_pool")
    assert standing["excluded_near_duplicate"] == first["excluded_near_duplicate"] > 0
    assert standing["planted_duplicate_recall"] == first["planted_duplicate_recall"]

    for change in (  # a table changed behind the pool's record
        "DELETE FROM candidate_pool WHERE pin_id = (SELECT min(pin_id) FROM candidate_pool)",
        "UPDATE candidate_pool_exclusions SET cosine = 0.5 WHERE reason = 'near_duplicate'",
    ):
        with graph_copy.connect() as conn:
            conn.execute(change)
        repaired = pool_run()
        assert repaired["graph_update"] == "incremental" and repaired["version"] == recorded, change
        with graph_copy.connect(read_only=True) as conn:
            assert {t: content_hash(conn, t) for t in before} == before

    with graph_copy.connect() as conn:  # a catalog pin written behind the catalog's record: it enters the pool
        conn.execute(
            "INSERT INTO pins SELECT pin_id + 10000000, embedding, 0.99, created_at FROM pins "
            "WHERE pin_id = (SELECT max(pin_id) FROM candidate_pool)"
        )
    inserted = pool_run()
    assert inserted["graph_update"] == "incremental" and inserted["graph_pins_inserted"] == 1
    with graph_copy.connect() as conn:  # and gone again: it leaves the pool, which then stands
        conn.execute("DELETE FROM pins WHERE pin_id >= 10000000")
    removed = pool_run()
    assert removed["graph_update"] == "incremental" and removed["graph_pins_retired"] == 1
    assert pool_run()["graph_update"] == "unchanged"
    with graph_copy.connect(read_only=True) as conn:
        assert {t: content_hash(conn, t) for t in before} == before

    with graph_copy.connect(read_only=True) as conn:
        stricter = conn.execute("SELECT quantile_cont(quality, 0.1) FROM candidate_pool").fetchone()[0]
    other = pool_run(quality_threshold=stricter)
    assert other["graph_update"] == "incremental" and other["graph_pins_retired"] > 0  # fewer pins pass
    assert pool_run(quality_threshold=stricter)["graph_update"] == "unchanged"
    wider = {"quality_threshold": stricter, "hnsw_m": resources["params"].hnsw_m + 2}
    assert pool_run(**wider)["graph_update"] == "rebuild"
    shutil.rmtree(Path(resources["index_store"].root) / "pool_graph")  # the graph gone, the tables recorded
    rebuilt = pool_run(**wider)
    assert rebuilt["graph_update"] == "rebuild" and rebuilt["graph_update_reason"] == "no previous graph"


def test_a_damaged_pool_graph_is_rebuilt_and_a_missing_one_fails_pin_index(graph_copy):
    directory = Path(graph_copy.resources["index_store"].root) / "pool_graph"
    build = next((directory / "builds").iterdir())
    (build / "edges.npy").write_bytes(b"damaged")
    result = dg.materialize(all_assets, selection=["candidate_pool"], resources=graph_copy.resources)
    pool = metadata_of(result, "candidate_pool")
    assert pool["graph_update"] == "rebuild" and pool["graph_update_reason"] == "no previous graph"
    shutil.rmtree(directory)
    result = dg.materialize(
        all_assets,
        selection=["pin_index"],
        resources=graph_copy.resources,
        partition_key=DAY.isoformat(),
        raise_on_error=False,
    )
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "materialize candidate_pool first" in str(failure.event_specific_data.error)


def test_heavy_users_are_capped_to_their_most_recent_actions(graph_copy):
    resources = {**graph_copy.resources, "params": PinnerSageParams(window_days=WINDOW, max_actions_per_user=5)}
    result = dg.materialize(
        all_assets, selection=["action_windows"], resources=resources, partition_key=DAY.isoformat()
    )
    meta = metadata_of(result, "action_windows")
    assert meta["users_capped"] > 0 and meta["actions_dropped_by_cap"] > 0
    with graph_copy.connect() as conn:
        assert (
            conn.execute("SELECT max(n) FROM (SELECT count(*) n FROM action_windows GROUP BY user_id)").fetchone()[0]
            == 5
        )
        # what was kept is the most recent: no dropped raw action is newer than a kept one of the same user
        newer_dropped = conn.execute(
            """
            SELECT count(*) FROM raw_actions r
            JOIN (SELECT user_id, min(ts) AS oldest_kept FROM action_windows GROUP BY user_id) k USING (user_id)
            WHERE r.ts > k.oldest_kept AND r.partition_date BETWEEN ? AND ?
              AND NOT EXISTS (SELECT 1 FROM action_windows w WHERE w.user_id = r.user_id AND w.pin_id = r.pin_id AND w.ts = r.ts)
            """,
            [DAY - timedelta(days=WINDOW - 1), DAY],
        ).fetchone()[0]
    assert newer_dropped == 0


def test_raw_actions_metadata_balances_rows_read(graph_copy):
    result = materialize_history(graph_copy.resources, DAY, days=2)
    meta = metadata_of(result, "raw_actions")
    assert meta["rows_read"] == meta["dagster/row_count"] + meta["rows_quarantined"]
    assert sum(meta["quarantine_reasons"].values()) == meta["rows_quarantined"]


@pytest.mark.slow
def test_own_data_from_files(tmp_path):
    resources = make_resources(tmp_path, alpha=1.0)
    resources["source"] = FileSource(
        pins_path=str(EXAMPLES / "pins.csv"), actions_path=str(EXAMPLES / "actions" / "{date}.csv")
    )
    day = date(2026, 3, 1)
    assert materialize_history(resources, day, days=1).success
    result = materialize_day(resources, day)
    assert result.success
    assert metadata_of(result, "candidate_pool")["dagster/row_count"] == 4
    with duckdb.connect(resources["duckdb"].database, read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM pins_quarantine").fetchone()[0] == 2
        assert conn.execute("SELECT count(*) FROM raw_actions_quarantine").fetchone()[0] == 6
        clusters = conn.execute(
            "SELECT list_sort(pin_ids) FROM user_clusters WHERE user_id = 1 ORDER BY cluster_id"
        ).fetchall()
        assert sorted(c[0] for c in clusters) == [[1, 2], [3, 4]]
        medoids = conn.execute("SELECT medoid_pin_id, importance FROM user_medoids WHERE user_id = 1").fetchall()
        assert len(medoids) == 2 and all(np.isfinite(i) and i > 0 for _, i in medoids)


def test_a_file_that_cannot_be_read_fails_the_run_naming_it(tmp_path):
    resources = make_resources(tmp_path)
    resources["source"] = FileSource(pins_path=str(tmp_path / "missing.parquet"), actions_path="x/{date}.csv")
    result = dg.materialize(all_assets, selection=["pins"], resources=resources, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "missing.parquet: no such file" in failure.event_specific_data.error.to_string()


def test_serving_snapshot_pairs_the_days_medoids_with_the_days_index(graph):
    from pinnersage_dagster.serving.service import RecommenderService
    from pinnersage_dagster.serving.snapshot import load_snapshot
    from pinnersage_dagster.serving.store import SnapshotManager

    serving = Path(graph.resources["serving_store"].root)
    snapshot = load_snapshot(serving / DAY.isoformat())
    index_manifest = read_index_manifest(Path(graph.resources["index_store"].root) / DAY.isoformat())
    assert snapshot.index_manifest.build_id == index_manifest.build_id
    assert snapshot.partition == DAY.isoformat() and snapshot.batch_time == pd.Timestamp(DAY + timedelta(days=1))
    with graph.connect(read_only=True) as conn:
        users, clusters = conn.execute("SELECT count(DISTINCT user_id), count(*) FROM user_medoids").fetchone()
        one_user = conn.execute("SELECT min(user_id) FROM user_medoids").fetchone()[0]
    assert snapshot.medoids.user_id.nunique() == users and len(snapshot.medoids) == clusters
    service = RecommenderService(SnapshotManager(serving))
    service.manager.refresh()
    result = service.recommend(one_user, seed=0, now=pd.Timestamp(DAY + timedelta(days=1, hours=3)))
    assert result["source"] == "pinnersage" and result["items"]
    assert not set(snapshot.seen(one_user).tolist()) & {i["pin_id"] for i in result["items"]}


@pytest.mark.slow
def test_offline_evaluation_asset_writes_its_report(graph_copy, tmp_path):
    split = DAY + timedelta(days=1)
    resources = graph_copy.resources
    assert dg.materialize(
        all_assets,
        selection=["raw_actions"],
        resources=resources,
        tags={
            "dagster/asset_partition_range_start": split.isoformat(),
            "dagster/asset_partition_range_end": (split + timedelta(days=6)).isoformat(),
        },
    ).success
    config = {"seeds": 1, "max_users": 40, "min_train_actions": 3, "report_root": str(tmp_path / "reports")}
    result = dg.materialize(
        all_assets,
        selection=["offline_evaluation"],
        resources=resources,
        partition_key=split.isoformat(),
        run_config={"ops": {"offline_evaluation": {"config": config}}},
    )
    meta = metadata_of(result, "offline_evaluation")
    assert meta["users"] > 10 and "Table 4" in meta["report"] and "data:image/png;base64," in meta["report"]
    report = tmp_path / "reports" / split.isoformat()
    assert (report / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "| PinnerSage (Ward, medoid) |" in (report / "report.md").read_text()
    summary = json.loads((report / "report.json").read_text())
    assert summary["settings"]["search"] == "index" and summary["settings"]["users"] == meta["users"]
    assert {"split_day", "horizon_days", "alpha", "decay_lambda", "users"} <= set(summary["settings"])
    metrics = summary["models"]["PinnerSage (Ward, medoid)"]
    expected = [
        "relevance",
        "relevance_calibrated",
        "recall",
        "r_precision",
        "reciprocal_rank",
        "reciprocal_rank_all",
        "diversity",
    ]
    assert all(
        {"mean", "std", "lift", "lift_ci95"} <= set(metrics[m]) for m in expected + [f"{m}_micro" for m in expected]
    )
    assert summary["models"]["Last pin"]["recall"]["lift"] == 0
    # exact retrieval over the whole catalog, named in the report
    config["search"] = "exact"
    dg.materialize(
        all_assets,
        selection=["offline_evaluation"],
        resources=resources,
        partition_key=split.isoformat(),
        run_config={"ops": {"offline_evaluation": {"config": config}}},
    )
    assert json.loads((report / "report.json").read_text())["settings"]["search"] == "exact"
    assert "exact search over the whole catalog" in (report / "report.md").read_text()


def test_the_catalog_load_leaves_no_cached_catalog_behind(graph_copy):
    """In an in-process run (the daily job's default) every later step would carry the synthetic
    world's catalog if the pins step left it cached: 1 GiB at 1M pins."""
    from pinnersage_dagster.core.synthetic import generate_pins

    source = graph_copy.resources["source"]
    source.read_pins()
    assert generate_pins.cache_info().currsize >= 1
    assert dg.materialize(all_assets, selection=["pins"], resources=graph_copy.resources).success
    assert generate_pins.cache_info().currsize == 0


def test_graph_files_a_killed_pool_run_left_behind_are_cleared_by_the_next_run(graph_copy):
    """A candidate_pool killed between saving its graph and publishing it leaves a saved graph and
    a scratch folder beside the published builds; the next run removes them and publishes normally."""
    directory = Path(graph_copy.resources["index_store"].root) / "pool_graph"
    stray_file, stray_dir = directory / "index-123-456.bin", directory / ".graph-abc"
    stray_file.write_bytes(b"\0" * 64)
    stray_dir.mkdir()
    (stray_dir / "index.bin").write_bytes(b"\0" * 64)
    assert dg.materialize(all_assets, selection=["candidate_pool"], resources=graph_copy.resources).success
    assert not stray_file.exists() and not stray_dir.exists()
    assert sorted(p.name for p in directory.iterdir()) == ["builds", "manifest.json"]
