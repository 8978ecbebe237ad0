"""The fast clustering path (float32 Gram matrix, worker processes, user batches) gives the
same clusters, medoids and importances as the reference path (scipy's own distances, serial)."""

import itertools
from datetime import date, timedelta

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest

from pinnersage_dagster.assets import all_assets
from pinnersage_dagster.core.synthetic import UNKNOWN_PIN_ID, SyntheticWorld, generate_day_actions, generate_pins
from pinnersage_dagster.engines.local import run_local_pass
from pinnersage_dagster.engines.workers import UserPool
from pinnersage_dagster.resources import ClusteringEngine
from pinnersage_dagster.warehouse import ensure_tables, replace_interests, user_batches, write_pins

from ..reference.two_pass import cluster_users, summarize_clusters, two_pass
from ..support import DAY, content_hash, materializations

MEMBERSHIP = ["user_id", "cluster_id", "pin_id", "kind"]


@pytest.fixture(scope="module")
def population():
    """A heavy-tailed synthetic population: 600 users over 90 days, capped at 1,000 actions."""
    world = SyntheticWorld(n_users=600, n_pins=20_000, seed=21, dirty_share=0, preset="clean")
    day = date(2026, 8, 31)
    actions = pd.concat([generate_day_actions(world, day - timedelta(days=i)) for i in range(90)], ignore_index=True)
    actions = actions[actions.pin_id != UNKNOWN_PIN_ID].drop_duplicates()
    actions = actions.sort_values(["user_id", "ts"], ascending=[True, False]).groupby("user_id").head(1000)
    distinct = actions[["user_id", "pin_id"]].drop_duplicates().sort_values(["user_id", "pin_id"])
    pins = generate_pins(world)
    order = np.argsort(pins.pin_id)
    ids, x = pins.pin_id[order], pins.embedding[order]
    rows = np.searchsorted(ids, distinct.pin_id.to_numpy())
    assert distinct.groupby("user_id").size().max() > 300  # heavy users are in the population
    return (
        distinct.user_id.to_numpy(),
        distinct.pin_id.to_numpy(),
        x[rows],
        actions,
        ids,
        x,
        pd.Timestamp(day + timedelta(days=1)),
    )


def summarize(members, ids, x, actions, now):
    members = members.sort_values(["user_id", "cluster_id", "pin_id"], kind="stable").reset_index(drop=True)
    return summarize_clusters(
        members, x[np.searchsorted(ids, members.pin_id.to_numpy())], actions, now=now, decay_lambda=0.01
    )


def test_fast_path_gives_the_reference_clusters_medoids_and_importances(population):
    users, pins, emb, actions, ids, x, now = population
    reference = cluster_users(users, pins, emb, 1.3, reference=True)
    fast = cluster_users(users, pins, emb, 1.3)
    assert fast[MEMBERSHIP].equals(reference[MEMBERSHIP])
    # merge costs are metadata; float32 distances move them by at most ~1e-5 absolute
    assert np.nanmax(np.abs(fast.merge_cost - reference.merge_cost)) < 1e-4
    a, b = summarize(reference, ids, x, actions, now), summarize(fast, ids, x, actions, now)
    assert a[["user_id", "cluster_id", "medoid_pin_id", "size", "n_actions"]].equals(
        b[["user_id", "cluster_id", "medoid_pin_id", "size", "n_actions"]]
    )
    assert np.allclose(a.importance, b.importance, rtol=1e-12)


def test_worker_processes_give_the_serial_result(population):
    from pinnersage_dagster.core.user_pass import represent_users
    from pinnersage_dagster.engines.workers import SharedMatrix

    users, pins, emb, *_ = population
    ts = np.zeros(len(users), dtype=np.int64)
    rows = np.arange(len(users))
    serial = represent_users(users, pins, ts, rows, emb, alpha=1.3, decay_lambda=0.01, now_us=1).to_pandas()
    with UserPool(2, chunks_per_worker=3) as pool, SharedMatrix(*emb.shape) as matrix:
        matrix.array[:] = emb
        parallel = pool.represent(users, pins, ts, rows, matrix, alpha=1.3, decay_lambda=0.01, now_us=1)().to_pandas()
    assert parallel[MEMBERSHIP].equals(serial[MEMBERSHIP])


def test_the_pool_spawns_its_workers_at_once_with_one_blas_thread_each(monkeypatch):
    """UserPool does not wait for its workers to boot, but spawns every one of them on entry,
    while the one-thread BLAS environment is set (two workers on two cores must not run four
    BLAS threads); the caller's environment is restored."""
    import os

    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    with UserPool(2) as pool:
        assert pool._pool is not None and len(pool._pool._processes) == 2  # both spawned, not on demand later
        assert os.environ.get("OPENBLAS_NUM_THREADS") is None
        seen = {pool._pool.submit(os.getenv, "OPENBLAS_NUM_THREADS").result() for _ in range(8)}
    assert seen == {"1"}


@pytest.mark.parametrize("gather_rows", [1, 97, 4_096])
def test_the_pass_gathers_a_slice_of_users_at_a_time_with_the_same_bits(population, monkeypatch, gather_rows):
    """Users are clustered a bounded slice of distinct pins at a time (a heavier user alone):
    every column is the same, bit for bit, as one slice of every user."""
    from pinnersage_dagster.core import user_pass

    *_, actions, ids, x, now = population
    ordered = actions.sort_values(["user_id", "pin_id", "ts"], kind="stable")
    pins = ordered.pin_id.to_numpy(np.int64)
    args = (
        ordered.user_id.to_numpy(np.int64),
        pins,
        ordered.ts.to_numpy("datetime64[us]").astype(np.int64),
        np.searchsorted(ids, pins),
        x,
    )
    settings = {"alpha": 1.3, "decay_lambda": 0.01, "now_us": int(now.value // 1000)}
    monkeypatch.setattr(user_pass, "GATHER_ROWS", 10**9)
    whole = user_pass.represent_users(*args, **settings)
    monkeypatch.setattr(user_pass, "GATHER_ROWS", gather_rows)
    sliced = user_pass.represent_users(*args, **settings)
    assert ordered.groupby("user_id").pin_id.nunique().max() > gather_rows or gather_rows == 4_096
    assert whole.num_rows > 0 and sliced.equals(whole)


def test_user_batches_bound_rows(graph):
    with graph.connect(read_only=True) as conn:
        batches = user_batches(conn, DAY, max_rows=100)
        total = conn.execute("SELECT count(*) FROM (SELECT DISTINCT user_id, pin_id FROM action_windows)").fetchone()[0]
        heaviest = conn.execute(
            "SELECT max(n) FROM (SELECT count(DISTINCT pin_id) n FROM action_windows GROUP BY user_id)"
        ).fetchone()[0]
    assert sum(b[2] for b in batches) == total and len(batches) > 3
    assert all(b[2] <= max(100, heaviest) for b in batches)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(batches))  # disjoint, ordered user ranges


def test_small_batches_write_the_same_partition(graph_copy):
    def snapshot():
        with graph_copy.connect(read_only=True) as conn:
            return (
                conn.execute("SELECT * FROM user_clusters ORDER BY user_id, cluster_id").df(),
                conn.execute("SELECT * FROM user_medoids ORDER BY user_id, cluster_id").df(),
            )

    before = snapshot()
    resources = {**graph_copy.resources, "engine": ClusteringEngine(batch_rows=100, workers=2)}
    result = dg.materialize(
        all_assets, selection=["user_clusters", "user_medoids"], resources=resources, partition_key=DAY.isoformat()
    )
    meta = materializations(result, "user_clusters")[-1].metadata
    assert meta["batches"].value > 3 and meta["clustering_workers"].value == 2
    after = snapshot()
    for old, new in zip(before, after):
        pd.testing.assert_frame_equal(
            old.drop(columns=["merge_cost"], errors="ignore"), new.drop(columns=["merge_cost"], errors="ignore")
        )


@pytest.fixture(scope="module")
def population_warehouse(population, tmp_path_factory):
    """The heavy-tailed population as a warehouse: its catalog and one day's action_windows."""
    *_, actions, ids, x, now = population
    day = (now - pd.Timedelta(days=1)).date()
    path = tmp_path_factory.mktemp("population") / "warehouse.duckdb"
    with duckdb.connect(str(path)) as conn:
        ensure_tables(conn)
        write_pins(conn, pd.DataFrame({"pin_id": ids, "quality": 1.0, "created_at": pd.NaT}), x)
        conn.register(
            "window_rows", actions.assign(partition_date=day)[["partition_date", "user_id", "pin_id", "action", "ts"]]
        )
        conn.execute("INSERT INTO action_windows SELECT * FROM window_rows")
    return path, day


@pytest.mark.parametrize("workers, batch_rows", [(1, 200_000), (2, 2_000)])
def test_one_pass_writes_the_two_pass_tables(population_warehouse, tmp_path, workers, batch_rows):
    path, day = population_warehouse
    with duckdb.connect(str(path)) as conn:
        two_pass(conn, day, alpha=1.3, decay_lambda=0.01, workers=workers)
        expected = {t: content_hash(conn, t) for t in ("user_clusters", "user_medoids")}
        conn.execute("DELETE FROM user_clusters; DELETE FROM user_medoids")
    now_us = int(pd.Timestamp(day + timedelta(days=1)).value // 1000)
    with UserPool(workers) as pool:
        stats = run_local_pass(
            lambda: duckdb.connect(str(path)),
            day,
            tmp_path / "rows",
            pool,
            batch_rows=batch_rows,
            alpha=1.3,
            decay_lambda=0.01,
            now_us=now_us,
        )
    with duckdb.connect(str(path)) as conn:
        replace_interests(conn, day, str(tmp_path / "rows" / "*.parquet"))
        assert {t: content_hash(conn, t) for t in ("user_clusters", "user_medoids")} == expected
    assert (stats.batches == 1) if batch_rows > 100_000 else (stats.batches > 10)


def test_fastcluster_cuts_like_scipy_on_the_same_distances(population):
    """fastcluster's Ward (the product's) against scipy's (the reference) on identical input."""
    from scipy.cluster.hierarchy import linkage

    from pinnersage_dagster.core.ward import clusters_from_linkage, gram_distances, ward_linkage

    users, _, emb, *_ = population
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    compared = 0
    for s, e in zip(starts, np.r_[starts[1:], len(users)]):
        if e - s < 2:
            continue
        ours = ward_linkage(emb[s:e])
        scipys = linkage(gram_distances(emb[s:e]), method="ward")
        assert np.allclose(ours[:, 2], scipys[:, 2], rtol=1e-12, atol=1e-12)
        for alpha in (0.8, 1.3, 2.0):
            a, b = clusters_from_linkage(ours, alpha), clusters_from_linkage(scipys, alpha)
            assert np.array_equal(a.labels, b.labels)
        compared += 1
    assert compared > 500


def test_actions_on_pins_that_left_the_catalog_are_counted_not_dropped_silently(graph_copy, tmp_path):
    from pinnersage_dagster.engines.spark import export_day_inputs

    with graph_copy.connect() as conn:
        gone = [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT pin_id FROM action_windows WHERE partition_date = ? ORDER BY pin_id LIMIT 5", [DAY]
            ).fetchall()
        ]
        conn.execute(f"DELETE FROM pins WHERE pin_id IN ({', '.join(map(str, gone))})")
        (expected,) = conn.execute(
            f"SELECT count(*) FROM action_windows WHERE partition_date = ? AND pin_id IN ({', '.join(map(str, gone))})",
            [DAY],
        ).fetchone()
        (tmp_path / "inputs").mkdir()
        assert export_day_inputs(conn, DAY, str(tmp_path / "inputs"))["left_catalog"] == expected > 0  # Spark engine
    result = dg.materialize(
        all_assets,
        selection=["user_clusters", "user_medoids"],
        resources=graph_copy.resources,
        partition_key=DAY.isoformat(),
    )
    assert materializations(result, "user_clusters")[-1].metadata["actions_on_pins_left_catalog"].value == expected
    with graph_copy.connect(read_only=True) as conn:
        members = {
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT unnest(pin_ids) FROM user_clusters WHERE partition_date = ?", [DAY]
            ).fetchall()
        }
    assert not members & set(gone)
