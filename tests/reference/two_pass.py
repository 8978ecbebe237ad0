"""The previous daily path, kept as the reference the fused per-user pass must equal.

Pass 1 (the old ``user_clusters``): one row per distinct (user, pin) with its embedding joined
in SQL, Ward through ``cluster_users``. Pass 2 (the old ``user_medoids``): the members joined
with their embeddings again, medoid and importance through ``summarize_clusters``. The only
change: actions are read in (user, pin, ts) order, which pins the summation order of Eq. 3
(the old read had no ORDER BY, so its last bits followed the table's storage order).
"""

from datetime import date

import duckdb
import numpy as np
import pandas as pd

from pinnersage_dagster.core.representatives import segment_importance, segment_medoids
from pinnersage_dagster.core.user_pass import SINGLETON, WARD
from pinnersage_dagster.core.ward import UNCLUSTERED, ward_clusters
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
    """Replace ``day`` of user_clusters and user_medoids the way the two old assets did (Ward
    serially here; the old asset's worker processes gave the serial result, ``workers`` is kept
    for the callers)."""
    table = query_arrow(conn, USER_PINS_SQL, [day])
    members = cluster_users(
        table.column("user_id").to_numpy(), table.column("pin_id").to_numpy(), embedding_matrix(table), alpha
    )
    conn.register("members", members)
    try:
        clusters = conn.execute(CLUSTER_ROWS_SQL, [day]).df()
    finally:
        conn.unregister("members")
    replace_partitions(conn, "user_clusters", clusters, day, day)
    members_table = query_arrow(conn, MEMBERS_SQL, [day])
    actions = conn.execute(ACTIONS_SQL, [day]).df()
    _, now = day_bounds(day)
    medoids = summarize_clusters(
        members_table.drop(["embedding"]).to_pandas(),
        embedding_matrix(members_table),
        actions,
        now=now,
        decay_lambda=decay_lambda,
    )
    replace_partitions(conn, "user_medoids", medoids.assign(partition_date=day), day, day)


def tables(conn: duckdb.DuckDBPyConnection) -> dict[str, pd.DataFrame]:
    return {
        t: conn.execute(f"SELECT * FROM {t} ORDER BY partition_date, user_id, cluster_id").df()
        for t in ("user_clusters", "user_medoids")
    }


# --- the previous product code: Ward per user, then medoid and importance in a second pass ---


MEMBER_COLUMNS = ["user_id", "cluster_id", "pin_id", "kind", "merge_cost"]
MEDOID_COLUMNS = ["user_id", "cluster_id", "medoid_pin_id", "importance", "size", "n_actions", "kind"]


def user_segments(user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end offsets of each user's contiguous block of rows."""
    if user_ids.size and np.any(np.diff(user_ids) < 0):
        raise ValueError("rows must be sorted by user_id")
    starts = np.flatnonzero(np.r_[True, user_ids[1:] != user_ids[:-1]]) if user_ids.size else np.empty(0, int)
    ends = np.r_[starts[1:], user_ids.size].astype(np.int64)
    return starts.astype(np.int64), ends


def cluster_users(
    user_ids: np.ndarray, pin_ids: np.ndarray, embeddings: np.ndarray, alpha: float, *, reference: bool = False
) -> pd.DataFrame:
    """Ward clusters for a batch of users.

    Input: one row per distinct (user, pin), sorted by user, with the pin's unit embedding.
    Output: one row per cluster member (``MEMBER_COLUMNS``); ``merge_cost`` is NaN for
    singleton clusters.
    """
    if not (len(user_ids) == len(pin_ids) == embeddings.shape[0]):
        raise ValueError("user_ids, pin_ids and embeddings must have the same length")
    starts, ends = user_segments(user_ids)
    cluster_id = np.empty(len(user_ids), dtype=np.int64)
    is_ward = np.zeros(len(user_ids), dtype=bool)
    merge_cost = np.full(len(user_ids), np.nan)
    for start, end in zip(starts.tolist(), ends.tolist()):
        if np.unique(pin_ids[start:end]).size != end - start:
            raise ValueError(f"user {user_ids[start]} has a pin twice: deduplicate pins per user first")
        result = ward_clusters(embeddings[start:end], alpha, reference=reference)
        if result.n_clusters == 0:
            cluster_id[start:end] = np.arange(end - start)
            continue
        labels = result.labels
        cluster_id[start:end] = labels
        in_cluster = labels != UNCLUSTERED
        is_ward[start:end] = in_cluster
        merge_cost[start:end][in_cluster] = result.merge_costs[labels[in_cluster]]
    # pins that merged with nothing, of users who have Ward clusters, are in no cluster (Algorithm 1)
    keep = cluster_id != UNCLUSTERED
    return pd.DataFrame(
        {
            "user_id": user_ids[keep],
            "cluster_id": cluster_id[keep],
            "pin_id": pin_ids[keep],
            "kind": np.where(is_ward[keep], WARD, SINGLETON),
            "merge_cost": merge_cost[keep],
        }
    )


def summarize_clusters(
    members: pd.DataFrame,
    member_embeddings: np.ndarray,
    actions: pd.DataFrame,
    now: pd.Timestamp,
    decay_lambda: float,
) -> pd.DataFrame:
    """Medoid (Eq. 2) and importance (Eq. 3) of every cluster in ``members``.

    ``members`` has ``user_id, cluster_id, pin_id, kind`` sorted by (user_id, cluster_id),
    aligned row by row with ``member_embeddings``; ``actions`` has ``user_id, pin_id, ts``
    (UTC, tz-naive) for every action counted in the window; ``now`` is T_now.
    """
    if len(members) != member_embeddings.shape[0]:
        raise ValueError("members and member_embeddings must be aligned")
    if members.empty:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in _MEDOID_DTYPES.items()})
    keys = members[["user_id", "cluster_id"]].to_numpy()
    new_segment = np.r_[True, np.any(keys[1:] != keys[:-1], axis=1)]
    segment = np.cumsum(new_segment) - 1
    if np.any(np.diff(segment) < 0) or _segments_repeat(keys, new_segment):
        raise ValueError("members must be sorted by (user_id, cluster_id)")
    n_segments = int(segment[-1]) + 1
    medoid_rows = segment_medoids(member_embeddings, segment)

    # each action counts toward the cluster holding its pin for that user
    member_key = pd.DataFrame(
        {"user_id": members["user_id"].to_numpy(), "pin_id": members["pin_id"].to_numpy(), "segment": segment}
    )
    joined = actions[["user_id", "pin_id", "ts"]].merge(member_key, on=["user_id", "pin_id"], how="inner")
    age_days = (now - joined["ts"]).dt.total_seconds().to_numpy() / 86400.0
    seg_of_action = joined["segment"].to_numpy()
    importance = segment_importance(seg_of_action, age_days, n_segments, decay_lambda)
    n_actions = np.bincount(seg_of_action, minlength=n_segments)

    first = np.flatnonzero(new_segment)
    return pd.DataFrame(
        {
            "user_id": members["user_id"].to_numpy()[first],
            "cluster_id": members["cluster_id"].to_numpy()[first],
            "medoid_pin_id": members["pin_id"].to_numpy()[medoid_rows],
            "importance": importance,
            "size": np.bincount(segment, minlength=n_segments),
            "n_actions": n_actions,
            "kind": members["kind"].to_numpy()[first],
        }
    )


_MEDOID_DTYPES = {
    "user_id": "int64",
    "cluster_id": "int64",
    "medoid_pin_id": "int64",
    "importance": "float64",
    "size": "int64",
    "n_actions": "int64",
    "kind": "object",
}


def _segments_repeat(keys: np.ndarray, new_segment: np.ndarray) -> bool:
    firsts = keys[new_segment]
    return len({tuple(k) for k in firsts.tolist()}) != len(firsts)
