"""The decay average (the paper's section 5.2 control): one embedding per user, the sum of the
user's action pins weighted by exp(-lambda * age in days), unit-normalised when used.

The sum is kept unnormalised where it is published (the serving snapshot), because the online
update is exact on sums: at a later time t, ``exp(-lambda * (t - T)) * sum_T`` plus the day's
events' own weighted embeddings is the sum at t.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.sparse import csr_matrix


def decay_weights(age_days: np.ndarray, decay_lambda: float) -> np.ndarray:
    if decay_lambda < 0:
        raise ValueError(f"decay_lambda must be >= 0, got {decay_lambda!r}")
    return np.exp(-decay_lambda * np.asarray(age_days, dtype=np.float64))


def decay_sums(
    user_ids: np.ndarray,
    pin_ids: np.ndarray,
    age_days: np.ndarray,
    decay_lambda: float,
    embeddings: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """(users, sums): each user's decay-weighted sum of action-pin embeddings (float64), for
    actions given sorted by user."""
    user_ids = np.asarray(user_ids)
    if user_ids.size == 0:
        return np.empty(0, np.int64), np.empty((0, 0))
    if np.any(user_ids[1:] < user_ids[:-1]):
        raise ValueError("actions must be sorted by user")
    starts = np.flatnonzero(np.r_[True, user_ids[1:] != user_ids[:-1]])
    weights = decay_weights(age_days, decay_lambda)
    sums = segment_sums(starts, weights, pin_ids, lambda p: np.asarray(embeddings(p), dtype=np.float64))
    return user_ids[starts].astype(np.int64), sums


def segment_sums(
    starts: np.ndarray,
    weights: np.ndarray,
    pin_ids: np.ndarray,
    embeddings: Callable[[np.ndarray], np.ndarray],
    *,
    chunk_rows: int = 100_000,
) -> np.ndarray:
    """For rows grouped in contiguous segments (``starts``: each segment's first row), the sum of
    ``weights[i] * embeddings(pin_ids[i])`` per segment, as one sparse (segments x rows) product per
    chunk of whole segments: memory stays at ``chunk_rows`` embeddings (at least one segment)."""
    ends = np.r_[starts[1:], len(pin_ids)]
    blocks, first = [], 0
    while first < len(starts):
        last = max(first + 1, int(np.searchsorted(ends, starts[first] + chunk_rows, side="right")))
        lo, hi = starts[first], ends[last - 1]
        sizes = ends[first:last] - starts[first:last]
        mix = csr_matrix(
            (weights[lo:hi], np.arange(hi - lo), np.r_[0, np.cumsum(sizes)]), shape=(last - first, hi - lo)
        )
        blocks.append(mix @ embeddings(pin_ids[lo:hi]))
        first = last
    return np.vstack(blocks)


def unit(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)
