"""Algorithm 2 in one pass per user: Ward clusters, then each cluster's medoid and importance.

The daily job's per-user work. It receives a user's actions as ids and row numbers into an
embedding matrix that is shared (shared memory, a memory-mapped file, or a Spark group's own
rows), never per-user copies of embeddings: the matrix is read once per run.

Input rows are *actions* sorted by (user_id, pin_id, ts). Ward runs on each user's distinct
pins (``core.clustering`` explains why); the medoid (Eq. 2) reuses the member embeddings the
clustering just gathered, and the importance (Eq. 3) sums each cluster's actions in
(pin_id, ts) order, so the result does not depend on how users are batched or which engine
ran them (bit for bit).

Output: one row per cluster member (``ROW_COLUMNS``), carrying its cluster's medoid,
importance, size and action count; ``user_clusters`` and ``user_medoids`` are both
aggregations of these rows.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from .clustering import SINGLETON, WARD
from .representatives import segment_importance, segment_medoids
from .ward import UNCLUSTERED, ward_clusters

US_PER_DAY = 86_400 * 1_000_000

ROW_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("cluster_id", pa.int64()),
        ("pin_id", pa.int64()),
        ("kind", pa.string()),
        ("merge_cost", pa.float64()),
        ("medoid_pin_id", pa.int64()),
        ("importance", pa.float64()),
        ("size", pa.int64()),
        ("n_actions", pa.int64()),
    ]
)
ROW_COLUMNS = ROW_SCHEMA.names


def represent_users(
    user_ids: np.ndarray,
    pin_ids: np.ndarray,
    ts_us: np.ndarray,
    pin_rows: np.ndarray,
    embeddings: np.ndarray,
    *,
    alpha: float,
    decay_lambda: float,
    now_us: int,
) -> pa.Table:
    """Clusters, medoids and importances of every user in a batch of actions.

    ``user_ids, pin_ids, ts_us`` (timestamps in microseconds since the epoch, UTC) are one
    entry per action, sorted by (user_id, pin_id, ts); ``pin_rows[i]`` is the row of action
    i's pin in ``embeddings``. ``now_us`` is T_now of Eq. 3.
    """
    n = len(user_ids)
    if not (n == len(pin_ids) == len(ts_us) == len(pin_rows)):
        raise ValueError("user_ids, pin_ids, ts_us and pin_rows must have the same length")
    if n and np.any(ts_us > now_us):
        raise ValueError("an action is newer than T_now: ages must be >= 0")
    if n > 1:
        step_user, step_pin = np.diff(user_ids), np.diff(pin_ids)
        if np.any((step_user < 0) | ((step_user == 0) & (step_pin < 0))):
            raise ValueError("actions must be sorted by (user_id, pin_id, ts)")
    user_start = np.flatnonzero(np.r_[True, user_ids[1:] != user_ids[:-1]]) if n else np.empty(0, np.int64)
    user_end = np.r_[user_start[1:], n].astype(np.int64)
    # an action's age in days, computed as pandas does for (T_now - ts).total_seconds() / 86400
    age_days = ((now_us - np.asarray(ts_us, dtype=np.int64)) / 1e6) / 86400.0
    parts = [
        _one_user(int(user_ids[s]), pin_ids[s:e], age_days[s:e], pin_rows[s:e], embeddings, alpha, decay_lambda)
        for s, e in zip(user_start.tolist(), user_end.tolist())
    ]
    if not parts:
        return ROW_SCHEMA.empty_table()
    columns = [np.concatenate([p[i] for p in parts]) for i in range(len(ROW_COLUMNS))]
    # from_pandas: a singleton's merge_cost NaN is stored as NULL (no merge), as the warehouse always had it
    arrays = [pa.array(c, type=f.type, from_pandas=True) for c, f in zip(columns, ROW_SCHEMA)]
    return pa.Table.from_arrays(arrays, schema=ROW_SCHEMA)


def _one_user(
    user_id: int,
    pin_ids: np.ndarray,
    age_days: np.ndarray,
    pin_rows: np.ndarray,
    embeddings: np.ndarray,
    alpha: float,
    decay_lambda: float,
) -> tuple[np.ndarray, ...]:
    first = np.flatnonzero(np.r_[True, pin_ids[1:] != pin_ids[:-1]])  # each distinct pin's first action
    distinct = pin_ids[first]
    action_pin = np.cumsum(np.r_[True, pin_ids[1:] != pin_ids[:-1]]) - 1  # distinct-pin index of each action
    x = np.asarray(embeddings[pin_rows[first]], dtype=np.float32)
    result = ward_clusters(x, alpha)
    if result.n_clusters == 0:  # Algorithm 1 found no cluster: every distinct pin is a singleton
        labels = np.arange(len(distinct), dtype=np.int64)
        kind, costs = SINGLETON, np.full(len(distinct), np.nan)
    else:
        labels, kind, costs = result.labels, WARD, result.merge_costs
    members = np.flatnonzero(labels != UNCLUSTERED)
    members = members[np.argsort(labels[members], kind="stable")]  # by (cluster, pin_id)
    member_cluster = labels[members]
    n_clusters = len(costs)
    medoid = members[segment_medoids(x[members], member_cluster)]

    action_cluster = labels[action_pin]
    counted = action_cluster != UNCLUSTERED  # actions on pins in no cluster count for none
    importance = segment_importance(action_cluster[counted], age_days[counted], n_clusters, decay_lambda)
    n_actions = np.bincount(action_cluster[counted], minlength=n_clusters)
    size = np.bincount(member_cluster, minlength=n_clusters)
    k = len(members)
    return (
        np.full(k, user_id, dtype=np.int64),
        member_cluster,
        distinct[members],
        np.full(k, kind, dtype=object),
        costs[member_cluster],
        distinct[medoid][member_cluster],
        importance[member_cluster],
        size[member_cluster],
        n_actions[member_cluster],
    )
