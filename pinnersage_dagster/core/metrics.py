"""Cluster-recovery metrics against planted labels: adjusted Rand index and purity."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.special import comb


def _contingency(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    _, t = np.unique(truth, return_inverse=True)
    _, p = np.unique(predicted, return_inverse=True)
    return coo_matrix((np.ones(len(t)), (t, p)), shape=(t.max() + 1, p.max() + 1)).toarray()


def adjusted_rand_index(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Hubert-Arabie adjusted Rand index; 1.0 for identical partitions, ~0 for random ones."""
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    if truth.shape != predicted.shape:
        raise ValueError("truth and predicted must have the same shape")
    n = truth.size
    if n < 2:
        return 1.0
    table = _contingency(truth, predicted)
    pairs = comb(table, 2).sum()
    rows = comb(table.sum(axis=1), 2).sum()
    cols = comb(table.sum(axis=0), 2).sum()
    expected = rows * cols / comb(n, 2)
    maximum = (rows + cols) / 2
    if maximum == expected:  # both partitions trivial (all one cluster or all singletons)
        return 1.0
    return float((pairs - expected) / (maximum - expected))


def purity(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Share of items whose predicted cluster's majority label is their own label."""
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    if truth.size == 0:
        return 1.0
    return float(_contingency(truth, predicted).max(axis=0).sum() / truth.size)


def per_user_recovery(
    user_ids: np.ndarray, pin_ids: np.ndarray, truth: np.ndarray, members: pd.DataFrame
) -> dict[str, float]:
    """Mean per-user adjusted Rand index and purity of ``members`` (user_id, pin_id, cluster_id)
    against ``truth`` labels of the rows (distinct user-pins, sorted by user). Each pin in no
    cluster counts as a cluster of its own; users with fewer than 2 pins are skipped."""
    assigned = members.set_index(["user_id", "pin_id"])["cluster_id"]
    predicted = assigned.reindex(pd.MultiIndex.from_arrays([user_ids, pin_ids])).to_numpy(dtype=float, copy=True)
    outside = np.isnan(predicted)
    predicted[outside] = -1 - np.arange(outside.sum())
    aris, purities = [], []
    starts = np.flatnonzero(np.r_[True, user_ids[1:] != user_ids[:-1]]) if len(user_ids) else np.empty(0, int)
    for start, end in zip(starts, np.r_[starts[1:], len(user_ids)]):
        if end - start >= 2:
            aris.append(adjusted_rand_index(truth[start:end], predicted[start:end]))
            purities.append(purity(truth[start:end], predicted[start:end]))
    return {"adjusted_rand_index": float(np.mean(aris)), "purity": float(np.mean(purities))}


def pool_refinement_scores(truth: pd.DataFrame, excluded: pd.DataFrame) -> dict[str, float | int]:
    """Precision and recall of the candidate-pool refinement against planted faults.

    ``truth``: ``pin_id, duplicate_of`` (-1 for none), ``low_quality``. A near-duplicate
    removal is correct when the removed pin and the pin kept in its place belong to one
    planted group (an original and its copies); each planted group should lose all but one
    of its good-quality members.
    """
    group = np.where(
        truth["duplicate_of"].to_numpy() >= 0, truth["duplicate_of"].to_numpy(), truth["pin_id"].to_numpy()
    )
    group_of = pd.Series(group, index=truth["pin_id"].to_numpy())
    low = truth.loc[truth["low_quality"].astype(bool), "pin_id"]
    group_size = group_of.value_counts()
    good = truth.loc[~truth["low_quality"].astype(bool), "pin_id"]
    good_groups = group_of[good.to_numpy()].value_counts()
    expected_dup = int((good_groups[good_groups.index.isin(group_size[group_size > 1].index)] - 1).clip(lower=0).sum())

    removed_low = excluded.loc[excluded["reason"] == "low_quality", "pin_id"]
    dups = excluded[excluded["reason"] == "near_duplicate"]
    same_group = (
        group_of.reindex(dups["pin_id"].to_numpy()).to_numpy()
        == group_of.reindex(dups["representative_pin_id"].astype("int64").to_numpy()).to_numpy()
    )
    planted = set(low) | set(group_of[group_of.map(group_size) > 1].index)
    return {
        "low_quality_precision": _ratio(removed_low.isin(low).sum(), len(removed_low)),
        "low_quality_recall": _ratio(low.isin(removed_low).sum(), len(low)),
        "duplicate_precision": _ratio(int(same_group.sum()), len(dups)),
        "duplicate_recall": _ratio(int(same_group.sum()), expected_dup),
        "expected_duplicate_removals": expected_dup,
        "removed_unplanted_pins": int((~excluded["pin_id"].isin(planted)).sum()),
    }


def _ratio(numerator: float, denominator: float) -> float:
    return round(float(numerator) / denominator, 4) if denominator else 1.0
