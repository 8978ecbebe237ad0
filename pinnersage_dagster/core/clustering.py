"""PinnerSage per user (Algorithm 2): Ward clusters, then medoid and importance per cluster.

Ward runs on a user's *distinct* action pins: acting twice on one pin adds no new point
to cluster, only weight to the cluster's importance, which sums over *actions* (Eq. 3).

A user for whom Algorithm 1 yields no cluster (every pin too far from every other under
``alpha``, or a single distinct pin) is not dropped: each distinct pin becomes a
``singleton`` cluster, so every active user keeps a representation to recommend from.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .representatives import segment_importance, segment_medoids
from .ward import UNCLUSTERED, ward_clusters

WARD = "ward"
SINGLETON = "singleton"

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
    member_key = pd.DataFrame({"user_id": members["user_id"].to_numpy(), "pin_id": members["pin_id"].to_numpy(), "segment": segment})
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
