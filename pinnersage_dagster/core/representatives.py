"""Cluster representatives: the medoid (Eq. 2) and the importance score (Eq. 3).

Both work on many clusters at once. Members are given as contiguous segments of rows
(``segment_ids`` sorted ascending), so one call serves a whole batch of users.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import csr_matrix


def segment_medoids(embeddings: np.ndarray, segment_ids: np.ndarray, block_rows: int = 8192) -> np.ndarray:
    """Row index of each segment's medoid (Eq. 2), one entry per segment in order.

    ``sum_j ||p_m - p_j||^2 = n * ||p_m - mean||^2 + const``, so the medoid is the member
    nearest the segment mean and no m x m matrix is needed. Ties (within 1e-9 relative)
    go to the lowest row. Segments are processed in blocks of about ``block_rows`` rows,
    so the float64 working set stays small whatever the number of segments.
    """
    if embeddings.shape[0] != segment_ids.shape[0]:
        raise ValueError("embeddings and segment_ids must have the same number of rows")
    if segment_ids.size == 0:
        return np.empty(0, dtype=np.int64)
    if np.any(np.diff(segment_ids) < 0):
        raise ValueError("segment_ids must be sorted so that each segment is contiguous")
    starts = np.flatnonzero(np.r_[True, segment_ids[1:] != segment_ids[:-1]])
    ends = np.r_[starts[1:], len(segment_ids)]
    medoids = np.empty(len(starts), dtype=np.int64)
    first = 0
    while first < len(starts):  # whole segments, at least one, about block_rows rows
        last = max(first + 1, int(np.searchsorted(ends, starts[first] + block_rows, side="right")))
        lo, hi = starts[first], ends[last - 1]
        medoids[first:last] = lo + _block_medoids(embeddings[lo:hi], starts[first:last] - lo)
        first = last
    return medoids


def _block_medoids(block: np.ndarray, starts: np.ndarray) -> np.ndarray:
    x = np.asarray(block, dtype=np.float64)
    sizes = np.diff(np.r_[starts, len(x)])
    segment_index = np.repeat(np.arange(len(starts)), sizes)
    # segment means as a sparse (segments x rows) product: much faster than np.add.reduceat
    weights = csr_matrix(
        (np.repeat(1.0 / sizes, sizes), np.arange(len(x)), np.r_[0, np.cumsum(sizes)]), shape=(len(starts), len(x))
    )
    centred = x - (weights @ x)[segment_index]
    spread = np.einsum("ij,ij->i", centred, centred)
    # equal Eq. 2 costs can differ in the last bits; treat them as ties and take the lowest row
    lowest = np.minimum.reduceat(spread, starts)[segment_index]
    candidate = np.flatnonzero(spread <= lowest + 1e-9 * np.maximum(lowest, 1e-12))
    _, first = np.unique(segment_index[candidate], return_index=True)
    return candidate[first]


def segment_importance(
    segment_of_action: np.ndarray, age_days: np.ndarray, n_segments: int, decay_lambda: float
) -> np.ndarray:
    """Importance of each segment (Eq. 3): the sum over its actions of exp(-lambda * age).

    ``age_days`` is ``T_now - T[i]`` in days (fractional); ``decay_lambda`` is per day.
    """
    if decay_lambda < 0:
        raise ValueError(f"decay_lambda must be >= 0, got {decay_lambda!r}")
    if np.any(age_days < 0):
        raise ValueError("an action is newer than T_now: ages must be >= 0")
    weights = np.exp(-decay_lambda * np.asarray(age_days, dtype=np.float64))
    return np.bincount(segment_of_action, weights=weights, minlength=n_segments)
