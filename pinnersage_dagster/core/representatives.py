"""Cluster representatives: the medoid (Eq. 2) and the importance score (Eq. 3).

Both work on many clusters at once. Members are given as contiguous segments of rows
(``segment_ids`` sorted ascending), so one call serves a whole batch of users.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import csr_matrix

# float32's unit roundoff: the screen's error bound is in units of it
_U32 = float(np.finfo(np.float32).eps) / 2


def segment_medoids(
    embeddings: np.ndarray, segment_ids: np.ndarray, rows: np.ndarray | None = None, block_rows: int = 4096
) -> np.ndarray:
    """Index of each segment's medoid (Eq. 2) among its members, one entry per segment in order.

    Member ``i`` is ``embeddings[rows[i]]`` (``rows`` omitted: ``embeddings[i]``), gathered a
    block at a time. ``sum_j ||p_m - p_j||^2 = n * ||p_m - mean||^2 + const``, so the medoid is
    the member nearest the segment mean and no m x m matrix is needed. The answer is that of
    float64 arithmetic on the given values, ties (within 1e-9 relative) going to the lowest
    member. Segments are processed in blocks of about ``block_rows`` members, so the working set
    stays small whatever the number of segments.
    """
    members = embeddings.shape[0] if rows is None else len(rows)
    if members != len(segment_ids):
        raise ValueError("embeddings (or rows) and segment_ids must have the same number of rows")
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
        block = embeddings[lo:hi] if rows is None else embeddings[rows[lo:hi]]
        medoids[first:last] = lo + _block_medoids(np.asarray(block), starts[first:last] - lo)
        first = last
    return medoids


def _block_medoids(x: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Medoids of float32 members screened in float32: a member is kept as a candidate unless its
    float32 spread exceeds the lowest by more than the two spreads' proven rounding error; the
    segments left with several candidates (pairs always are: their spreads tie) are decided by
    the float64 pass, so the answer is exactly the float64 one at a fraction of its memory
    traffic."""
    if x.dtype != np.float32:
        return _exact_medoids(x, starts)
    sizes = np.diff(np.r_[starts, len(x)])
    segment_index = np.repeat(np.arange(len(starts)), sizes)
    weights = csr_matrix(
        (np.repeat((1.0 / sizes).astype(np.float32), sizes), np.arange(len(x)), np.r_[0, np.cumsum(sizes)]),
        shape=(len(starts), len(x)),
    )
    centred = x - np.repeat(weights @ x, sizes, axis=0)
    spread = np.einsum("ij,ij->i", centred, centred).astype(np.float64)
    lowest = np.minimum.reduceat(spread, starts)
    radius = float(np.sqrt(np.einsum("ij,ij->i", x, x).max(initial=0.0)))
    margin = _screen_margin(lowest, sizes, radius, x.shape[1])
    candidate = spread <= (lowest + margin)[segment_index]
    count = np.add.reduceat(candidate.astype(np.int64), starts)
    medoids = np.empty(len(starts), dtype=np.int64)
    sure = count == 1
    chosen = np.flatnonzero(candidate)
    medoids[sure] = chosen[sure[segment_index[chosen]]]
    if not sure.all():
        undecided = np.flatnonzero(~sure)
        members = np.flatnonzero(~sure[segment_index])
        sub_starts = np.r_[0, np.cumsum(sizes[undecided])[:-1]]
        medoids[undecided] = members[_exact_medoids(x[members], sub_starts)]
    return medoids


def _screen_margin(lowest: np.ndarray, sizes: np.ndarray, radius: float, dimension: int) -> np.ndarray:
    """How far above a segment's lowest float32 spread a member may be and still be the float64
    medoid. With unit roundoff u, members of norm <= R and a segment of n members, the float32
    mean is off by at most e = u R (n + 4) (with the centring's own rounding), and a spread s by
    at most E(s) = 2 sqrt(s) e + e^2 + (d + 44) u (sqrt(s) + e)^2 (its d squares summed in any
    order). Members in question have s <= 2.7 lowest + 32 e^2; two of them, plus the float64
    tie tolerance and float64's own error (well under 1% of E), give the margin."""
    e = _U32 * radius * 1.001 * (sizes + 4)
    high = 2.7 * lowest + 32 * e**2 + 1e-20
    error = 2 * np.sqrt(high) * e + e**2 + (dimension + 44) * _U32 * (np.sqrt(high) + e) ** 2
    return 1.01 * (2 * error + 3e-9 * high) + 1e-20


def _exact_medoids(block: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The float64 pass: each member's squared distance to its segment's mean, the lowest wins."""
    x = np.asarray(block, dtype=np.float64)
    sizes = np.diff(np.r_[starts, len(x)])
    segment_index = np.repeat(np.arange(len(starts)), sizes)
    # segment means as a sparse (segments x rows) product: much faster than np.add.reduceat
    weights = csr_matrix(
        (np.repeat(1.0 / sizes, sizes), np.arange(len(x)), np.r_[0, np.cumsum(sizes)]), shape=(len(starts), len(x))
    )
    centred = x - np.repeat(weights @ x, sizes, axis=0)
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
