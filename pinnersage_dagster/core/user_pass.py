"""Algorithm 2 in one pass per user: Ward clusters, then each cluster's medoid and importance.

The daily job's per-user work. It receives a user's actions as ids and row numbers into an
embedding matrix that is shared (shared memory, a memory-mapped file, or a Spark group's own
rows), never per-user copies of embeddings: the matrix is read once per run.

Input rows are *actions* sorted by (user_id, pin_id, ts). Ward runs on each user's distinct
pins (``core.clustering`` explains why); the medoid (Eq. 2) reuses the member embeddings the
clustering just gathered, and the importance (Eq. 3) sums each cluster's actions in
(pin_id, ts) order, so the result does not depend on how users are batched or which engine
ran them (bit for bit).

Output: one row per cluster member (``ROW_SCHEMA``), carrying its cluster's medoid,
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
    if n == 0:
        return ROW_SCHEMA.empty_table()
    # each distinct (user, pin): Ward runs on these rows, one user at a time
    new_pin = np.r_[True, (user_ids[1:] != user_ids[:-1]) | (pin_ids[1:] != pin_ids[:-1])]
    action_pin = np.cumsum(new_pin) - 1
    d_user, d_pin, d_row = user_ids[new_pin], pin_ids[new_pin], pin_rows[new_pin]
    starts = np.flatnonzero(np.r_[True, d_user[1:] != d_user[:-1]])
    ends = np.r_[starts[1:], len(d_user)]
    label = np.full(len(d_user), UNCLUSTERED, dtype=np.int64)  # cluster of each distinct pin, numbered across the batch
    costs, kinds, clusters = [], [], 0
    user_first_cluster = np.empty(len(starts), dtype=np.int64)
    for user, (s, e) in enumerate(zip(starts.tolist(), ends.tolist())):
        user_first_cluster[user] = clusters
        result = ward_clusters(embeddings[d_row[s:e]], alpha)
        if result.n_clusters == 0:  # Algorithm 1 found no cluster: every distinct pin is a singleton
            label[s:e] = clusters + np.arange(e - s)
            costs.append(np.full(e - s, np.nan))
            kinds.append(np.full(e - s, SINGLETON, dtype=object))
        else:
            clustered = result.labels != UNCLUSTERED
            label[s:e][clustered] = clusters + result.labels[clustered]
            costs.append(result.merge_costs)
            kinds.append(np.full(result.n_clusters, WARD, dtype=object))
        clusters += len(costs[-1])
    cost, kind = np.concatenate(costs), np.concatenate(kinds)

    # members in (user, cluster, pin) order: clusters are numbered in user order, pins are sorted
    members = np.flatnonzero(label != UNCLUSTERED)
    members = members[np.argsort(label[members], kind="stable")]
    member_cluster = label[members]
    medoid = d_pin[members[segment_medoids(embeddings[d_row[members]], member_cluster)]]
    # each action counts for the cluster of its pin, summed in (pin, ts) order within the cluster
    action_cluster = label[action_pin]
    counted = action_cluster != UNCLUSTERED
    age_days = ((now_us - np.asarray(ts_us[counted], dtype=np.int64)) / 1e6) / 86400.0  # as pandas' total_seconds / 86400
    importance = segment_importance(action_cluster[counted], age_days, clusters, decay_lambda)
    n_actions = np.bincount(action_cluster[counted], minlength=clusters)
    size = np.bincount(member_cluster, minlength=clusters)
    user_of_member = np.searchsorted(starts, members, side="right") - 1
    columns = [
        d_user[members],
        member_cluster - user_first_cluster[user_of_member],  # cluster ids count from 0 per user
        d_pin[members],
        kind[member_cluster],
        cost[member_cluster],
        medoid[member_cluster],
        importance[member_cluster],
        size[member_cluster],
        n_actions[member_cluster],
    ]
    # from_pandas: a singleton's merge_cost NaN is stored as NULL (no merge), as the warehouse always had it
    arrays = [pa.array(c, type=f.type, from_pandas=True) for c, f in zip(columns, ROW_SCHEMA)]
    return pa.Table.from_arrays(arrays, schema=ROW_SCHEMA)
