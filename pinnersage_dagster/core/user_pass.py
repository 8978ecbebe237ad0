"""Algorithm 2 in one pass per user: Ward clusters, then each cluster's medoid and importance.

The daily job's per-user work. It receives a user's actions as ids and row numbers into an
embedding matrix that is shared (shared memory, a memory-mapped file, or a Spark group's own
rows), never per-user copies of embeddings: the matrix is read once per run.

Input rows are *actions* sorted by (user_id, pin_id, ts). Ward runs on each user's distinct
pins: acting twice on one pin adds no new point to cluster, only weight to the cluster's
importance, which sums over actions (Eq. 3). A user for whom Algorithm 1 yields no cluster
(every pin too far from every other under ``alpha``, or a single distinct pin) is not dropped:
each distinct pin becomes a ``singleton`` cluster. A batch is taken a slice of whole users at
a time (about ``GATHER_ROWS`` distinct pins), whose embeddings are gathered once, for both
Ward and the medoids. Ward's trees are built user by user and cut for the slice at once; the
medoids (Eq. 2) of every cluster of the slice are found in blocks of clusters, and the
importance (Eq. 3) sums each cluster's actions in (pin_id, ts) order, so the result does not
depend on how users are batched or which engine ran them (bit for bit).

Output: one row per cluster member (``ROW_SCHEMA``), carrying its cluster's medoid,
importance, size and action count; ``user_clusters`` and ``user_medoids`` are both
aggregations of these rows.

The offline evaluation and the alpha calibration run this same pass (``represent_history``),
with Ward at alpha as the daily job does, or with a baseline's clustering in its place
(``cluster``), so what they measure is the code that serves.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pandas as pd
import pyarrow as pa

from .representatives import segment_importance, segment_medoids
from .ward import UNCLUSTERED, BatchClusters, WardClusters, cut_linkages, ward_linkage

WARD = "ward"
SINGLETON = "singleton"
# how one user's distinct pins are clustered: (user_id, pin_ids, unit embeddings) -> clusters
Clusterer = Callable[[int, np.ndarray, np.ndarray], WardClusters]

US_PER_DAY = 86_400 * 1_000_000
GATHER_ROWS = 1 << 15  # distinct (user, pin) rows gathered at once (32 MiB at d = 256)

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
    cluster: Clusterer | None = None,
    kind: str = WARD,
) -> pa.Table:
    """Clusters, medoids and importances of every user in a batch of actions.

    ``user_ids, pin_ids, ts_us`` (timestamps in microseconds since the epoch, UTC) are one
    entry per action, sorted by (user_id, pin_id, ts); ``pin_rows[i]`` is the row of action
    i's pin in ``embeddings``. ``now_us`` is T_now of Eq. 3. ``cluster`` replaces Ward at
    ``alpha`` (Algorithm 1) by another clustering of each user's distinct pins, whose clusters
    are then of ``kind``; a user it leaves without a cluster falls back to singletons.
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
    # whole users of about GATHER_ROWS distinct pins at a time (a heavier user alone), so the
    # gathered rows stay bounded; the result does not depend on the batching
    first_action = np.flatnonzero(np.r_[True, user_ids[1:] != user_ids[:-1]])
    rows_before = (np.cumsum(new_pin) - 1)[first_action]  # distinct rows before each user
    cut = np.searchsorted(rows_before, np.arange(GATHER_ROWS, int(new_pin.sum()), GATHER_ROWS))
    bounds = np.unique(np.r_[0, first_action[cut[cut < len(first_action)]], n]).tolist()
    parts = [
        _represent_part(
            user_ids[a:b],
            pin_ids[a:b],
            ts_us[a:b],
            pin_rows[a:b],
            new_pin[a:b],
            embeddings,
            alpha=alpha,
            decay_lambda=decay_lambda,
            now_us=now_us,
            cluster=cluster,
            kind=kind,
        )
        for a, b in itertools.pairwise(bounds)
    ]
    return parts[0] if len(parts) == 1 else pa.concat_tables(parts)


def _represent_part(
    user_ids: np.ndarray,
    pin_ids: np.ndarray,
    ts_us: np.ndarray,
    pin_rows: np.ndarray,
    new_pin: np.ndarray,
    embeddings: np.ndarray,
    *,
    alpha: float,
    decay_lambda: float,
    now_us: int,
    cluster: Clusterer | None,
    kind: str,
) -> pa.Table:
    """``represent_users`` on validated actions of whole users; ``new_pin`` marks each user's
    first action on each distinct pin."""
    action_pin = np.cumsum(new_pin) - 1
    d_user, d_pin = user_ids[new_pin], pin_ids[new_pin]
    # every distinct row gathered once, in user order: Ward reads each user's rows as one slice
    # and the medoids read theirs from here, near each other, not from the whole matrix again
    x = embeddings[pin_rows[new_pin]]
    starts = np.flatnonzero(np.r_[True, d_user[1:] != d_user[:-1]])
    ends = np.r_[starts[1:], len(d_user)]
    sizes = ends - starts
    user_of_row = np.repeat(np.arange(len(starts)), sizes)
    found = _clusters(d_user, d_pin, x, starts, ends, alpha, cluster)
    # a user left without a cluster (Algorithm 1 found none): every distinct pin is a singleton
    fallback = found.counts == 0
    local = found.labels.copy()
    singles = fallback[user_of_row]
    local[singles] = (np.arange(len(d_user)) - starts[user_of_row])[singles]
    per_user = np.where(fallback, sizes, found.counts)
    user_first_cluster = np.cumsum(per_user) - per_user
    clusters = int(per_user.sum())
    # clusters numbered across the batch in user order; within a user, the clustering's own order
    label = np.where(local != UNCLUSTERED, user_first_cluster[user_of_row] + local, UNCLUSTERED)
    single_cluster = np.repeat(fallback, per_user)
    cost = np.full(clusters, np.nan)
    cost[~single_cluster] = found.merge_costs
    cluster_kind = np.where(single_cluster, SINGLETON, kind).astype(object)

    # members in (user, cluster, pin) order: clusters are numbered in user order, pins are sorted
    members = np.flatnonzero(label != UNCLUSTERED)
    members = members[np.argsort(label[members], kind="stable")]
    member_cluster = label[members]
    medoid = d_pin[members[segment_medoids(x, member_cluster, rows=members)]]
    # each action counts for the cluster of its pin, summed in (pin, ts) order within the cluster
    action_cluster = label[action_pin]
    counted = action_cluster != UNCLUSTERED
    age_days = (
        (now_us - np.asarray(ts_us[counted], dtype=np.int64)) / 1e6
    ) / 86400.0  # as pandas' total_seconds / 86400
    importance = segment_importance(action_cluster[counted], age_days, clusters, decay_lambda)
    n_actions = np.bincount(action_cluster[counted], minlength=clusters)
    size = np.bincount(member_cluster, minlength=clusters)
    user_of_member = user_of_row[members]
    columns = [
        d_user[members],
        member_cluster - user_first_cluster[user_of_member],  # cluster ids count from 0 per user
        d_pin[members],
        cluster_kind[member_cluster],
        cost[member_cluster],
        medoid[member_cluster],
        importance[member_cluster],
        size[member_cluster],
        n_actions[member_cluster],
    ]
    # from_pandas: a singleton's merge_cost NaN is stored as NULL (no merge), as the warehouse always had it
    arrays = [pa.array(c, type=f.type, from_pandas=True) for c, f in zip(columns, ROW_SCHEMA)]
    return pa.Table.from_arrays(arrays, schema=ROW_SCHEMA)


def _clusters(
    d_user: np.ndarray,
    d_pin: np.ndarray,
    x: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    alpha: float,
    cluster: Clusterer | None,
) -> BatchClusters:
    """Each user's clusters of their distinct pins: Ward at ``alpha`` (every user's tree, then one
    cut of the whole batch), or ``cluster`` user by user."""
    sizes = ends - starts
    if cluster is None:
        trees = [ward_linkage(x[s:e]) for s, e in zip(starts.tolist(), ends.tolist()) if e - s >= 2]
        return cut_linkages(trees, sizes, alpha)
    labels, counts, costs = np.full(len(d_user), UNCLUSTERED, dtype=np.int64), np.zeros(len(starts), np.int64), []
    for user, (s, e) in enumerate(zip(starts.tolist(), ends.tolist())):
        result = cluster(int(d_user[s]), d_pin[s:e], x[s:e])
        labels[s:e], counts[user] = result.labels, result.n_clusters
        costs.append(result.merge_costs)
    return BatchClusters(labels, counts, np.concatenate(costs) if costs else np.empty(0))


def represent_history(
    history: pd.DataFrame,
    catalog_ids: np.ndarray,
    catalog_x: np.ndarray,
    *,
    alpha: float,
    decay_lambda: float,
    now: pd.Timestamp,
    cluster: Clusterer | None = None,
    kind: str = WARD,
) -> pd.DataFrame:
    """``represent_users`` on a window held as a frame (``user_id, pin_id, ts``, any order),
    embeddings looked up in a sorted catalog: the rows as a DataFrame."""
    ordered = history.sort_values(["user_id", "pin_id", "ts"], kind="stable")
    pins = ordered["pin_id"].to_numpy(np.int64)
    table = represent_users(
        ordered["user_id"].to_numpy(np.int64),
        pins,
        ordered["ts"].to_numpy("datetime64[us]").astype(np.int64),
        np.searchsorted(catalog_ids, pins),
        catalog_x,
        alpha=alpha,
        decay_lambda=decay_lambda,
        now_us=int(now.value // 1000),
        cluster=cluster,
        kind=kind,
    )
    return table.to_pandas()


def fixed_clusters(members: pd.DataFrame) -> Clusterer:
    """A ``Clusterer`` that returns given clusters (``user_id, pin_id, cluster_id[, kind]``;
    singletons are the pass's own fallback): the pass then computes their medoids and
    importances (e.g. with another ``decay_lambda``)."""
    clustered = members[members["kind"] != SINGLETON] if "kind" in members else members
    label = {
        (int(u), int(p)): int(c) for u, p, c in clustered[["user_id", "pin_id", "cluster_id"]].itertuples(index=False)
    }

    def cluster(user: int, pins: np.ndarray, _x: np.ndarray) -> WardClusters:
        labels = np.array([label.get((user, int(p)), UNCLUSTERED) for p in pins], dtype=np.int64)
        if not (labels >= 0).any():
            return WardClusters(np.full(len(pins), UNCLUSTERED, dtype=np.int64), np.empty(0))
        _, dense = np.unique(labels[labels >= 0], return_inverse=True)
        labels[labels >= 0] = dense
        return WardClusters(labels, np.full(int(dense.max()) + 1, np.nan))

    return cluster
