"""The previous daily path, kept as the reference the fused per-user pass must equal.

Pass 1 (the old ``user_clusters``): one row per distinct (user, pin) with its embedding joined
in SQL, Ward through ``cluster_users``. Pass 2 (the old ``user_medoids``): the members joined
with their embeddings again, medoid and importance through ``summarize_clusters``. The only
change: actions are read in (user, pin, ts) order, which pins the summation order of Eq. 3
(the old read had no ORDER BY, so its last bits followed the table's storage order).
"""

from datetime import date

import duckdb
import pandas as pd

from pinnersage_dagster.core.clustering import summarize_clusters
from pinnersage_dagster.core.workers import UserPool
from pinnersage_dagster.readers import day_bounds
from pinnersage_dagster.warehouse import embedding_matrix, query_arrow, replace_partitions

USER_PINS_SQL = """
    SELECT w.user_id, w.pin_id, p.embedding
    FROM (SELECT DISTINCT user_id, pin_id FROM action_windows WHERE partition_date = ?) w
    JOIN pins p USING (pin_id)
    ORDER BY w.user_id, w.pin_id
"""
CLUSTER_ROWS_SQL = """
    SELECT CAST(? AS DATE) AS partition_date, user_id, cluster_id, any_value(kind) AS kind,
           any_value(merge_cost) AS merge_cost, count(*) AS n_pins, list(pin_id ORDER BY pin_id) AS pin_ids
    FROM members GROUP BY user_id, cluster_id ORDER BY user_id, cluster_id
"""
MEMBERS_SQL = """
    SELECT c.user_id, c.cluster_id, c.kind, m.pin_id, p.embedding
    FROM user_clusters c, unnest(c.pin_ids) AS m(pin_id)
    JOIN pins p ON p.pin_id = m.pin_id
    WHERE c.partition_date = ?
    ORDER BY c.user_id, c.cluster_id, m.pin_id
"""
ACTIONS_SQL = "SELECT user_id, pin_id, ts FROM action_windows WHERE partition_date = ? ORDER BY user_id, pin_id, ts"


def two_pass(conn: duckdb.DuckDBPyConnection, day: date, alpha: float, decay_lambda: float, workers: int) -> None:
    """Replace ``day`` of user_clusters and user_medoids the way the two old assets did, with
    Ward in ``workers`` processes as the old asset ran it (one BLAS thread per worker)."""
    table = query_arrow(conn, USER_PINS_SQL, [day])
    with UserPool(workers) as pool:
        members = pool.cluster(table.column("user_id").to_numpy(), table.column("pin_id").to_numpy(),
                               embedding_matrix(table), alpha)
    conn.register("members", members)
    try:
        clusters = conn.execute(CLUSTER_ROWS_SQL, [day]).df()
    finally:
        conn.unregister("members")
    replace_partitions(conn, "user_clusters", clusters, day, day)
    members_table = query_arrow(conn, MEMBERS_SQL, [day])
    actions = conn.execute(ACTIONS_SQL, [day]).df()
    _, now = day_bounds(day)
    medoids = summarize_clusters(members_table.drop(["embedding"]).to_pandas(), embedding_matrix(members_table),
                                 actions, now=now, decay_lambda=decay_lambda)
    replace_partitions(conn, "user_medoids", medoids.assign(partition_date=day), day, day)


def tables(conn: duckdb.DuckDBPyConnection) -> dict[str, pd.DataFrame]:
    return {t: conn.execute(f"SELECT * FROM {t} ORDER BY partition_date, user_id, cluster_id").df()
            for t in ("user_clusters", "user_medoids")}
