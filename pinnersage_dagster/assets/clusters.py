"""Per-user Ward clusters of each day's window (paper, section 3.1.1)."""


import os
import time
from datetime import date

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
from dagster_duckdb import DuckDBResource

from ..config import PinnerSageParams
from ..core.clustering import SINGLETON, ClusteringPool, cluster_users
from ..core.spark_engine import cluster_users_spark, spark_session
from ..partitions import daily_partitions, partition_days
from ..reporting import distribution, frame_markdown, histogram_markdown, representative_user
from ..warehouse import embedding_matrix, ensure_tables, query_arrow, replace_partitions, user_batches
from .actions import action_windows
from .constants import DUCKDB_POOL, GROUP

USER_PINS_SQL = """
    SELECT w.user_id, w.pin_id, p.embedding
    FROM (SELECT DISTINCT user_id, pin_id FROM action_windows
          WHERE partition_date = ? AND user_id BETWEEN ? AND ?) w
    JOIN pins p USING (pin_id)
    ORDER BY w.user_id, w.pin_id
"""
ALL_USERS = (-(2**63), 2**63 - 1)

CLUSTER_ROWS_SQL = """
    SELECT CAST(? AS DATE) AS partition_date, user_id, cluster_id, any_value(kind) AS kind,
           any_value(merge_cost) AS merge_cost, count(*) AS n_pins, list(pin_id ORDER BY pin_id) AS pin_ids
    FROM members GROUP BY user_id, cluster_id ORDER BY user_id, cluster_id
"""


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    deps=[action_windows],
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=7),
    pool=DUCKDB_POOL,
    kinds={"duckdb", "scipy"},
)
def user_clusters(
    context: dg.AssetExecutionContext, duckdb: DuckDBResource, params: PinnerSageParams
) -> dg.MaterializeResult:
    """For day D: the Ward clusters of each user active in [D-89, D], with their member pins.

    ``kind = 'ward'`` clusters follow Algorithm 1 at ``alpha``; a user with no Ward cluster
    gets one ``singleton`` cluster per distinct pin.
    """
    workers = params.clustering_workers or os.cpu_count() or 1
    spark = spark_session(params.spark_master) if params.clustering_engine == "spark" else None
    if spark is not None:
        workers = 1  # Spark parallelises across its own executors
    with ClusteringPool(workers) as pool:
        for day in partition_days(context):
            with duckdb.get_connection() as conn:
                batches = user_batches(conn, day, params.batch_rows)
            started, parts, user_pins = time.perf_counter(), [], 0
            for first, last, _ in batches:  # read and cluster a bounded slice of users at a time
                with duckdb.get_connection() as conn:
                    table = query_arrow(conn, USER_PINS_SQL, [day, first, last])
                user_pins += table.num_rows
                batch = (table.column("user_id").to_numpy(), table.column("pin_id").to_numpy(), embedding_matrix(table))
                if spark is not None:
                    parts.append(cluster_users_spark(spark, *batch, params.alpha))
                else:
                    parts.append(pool.cluster(*batch, params.alpha))
                del table
            seconds = time.perf_counter() - started
            members = pd.concat(parts, ignore_index=True) if parts else cluster_users(*_empty_batch(), params.alpha)
            with duckdb.get_connection() as conn:
                ensure_tables(conn)
                clusters = _cluster_rows(conn, members, day)
                replace_partitions(conn, "user_clusters", clusters, day, day)
            context.log.info(
                f"{day}: {len(clusters)} clusters for {clusters['user_id'].nunique()} users in {seconds:.1f}s "
                f"({len(batches)} batches, {workers} workers)"
            )
    metadata = cluster_metadata(clusters, user_pins, seconds, params.alpha)
    metadata.update({
        "batches": len(batches),
        "largest_batch_rows": max((b[2] for b in batches), default=0),
        "clustering_workers": workers,
        "clustering_engine": params.clustering_engine if spark is None else f"spark ({params.spark_master})",
    })
    return dg.MaterializeResult(metadata=metadata)


def _empty_batch() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.empty(0, np.int64), np.empty(0, np.int64), np.empty((0, 1), np.float32)


def _cluster_rows(conn: duckdb.DuckDBPyConnection, members: pd.DataFrame, day: date) -> pd.DataFrame:
    """One row per cluster with its member pins as a list, built by DuckDB."""
    conn.register("members", members)
    try:
        return conn.execute(CLUSTER_ROWS_SQL, [day]).df()
    finally:
        conn.unregister("members")


def cluster_metadata(clusters: pd.DataFrame, user_pins: int, seconds: float, alpha: float) -> dict[str, object]:
    per_user = clusters.groupby("user_id").size()
    ward = clusters[clusters["kind"] != SINGLETON]
    fallback_users = int(clusters.loc[clusters["kind"] == SINGLETON, "user_id"].nunique())
    user = representative_user(per_user)
    preview = clusters[clusters["user_id"] == user][["cluster_id", "kind", "n_pins", "merge_cost", "pin_ids"]]
    return {
        "alpha": alpha,
        "users": int(per_user.size),
        "distinct_user_pins": user_pins,
        "dagster/row_count": len(clusters),
        "ward_clusters": len(ward),
        "users_with_singleton_fallback": fallback_users,
        "pins_in_ward_clusters": int(ward["n_pins"].sum()),
        "clusters_per_user": distribution(per_user.to_numpy()),
        "clusters_per_user_histogram": dg.MetadataValue.md(
            histogram_markdown(per_user.to_numpy(), [1, 2, 3, 4, 6, 11, 21, 51, 101], "clusters")
        ),
        "cluster_size": distribution(clusters["n_pins"].to_numpy()),
        "clustering_seconds": round(seconds, 2),
        "example_user": dg.MetadataValue.md(f"user **{user}**\n\n" + frame_markdown(preview)) if user is not None else "",
    }

