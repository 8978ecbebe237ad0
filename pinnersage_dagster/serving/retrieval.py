"""Retrieval (paper, section 4): sample medoids by importance, fetch floor(budget / e) neighbours each."""

from __future__ import annotations

import numpy as np


def sample_medoids(importance: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of up to ``n`` clusters drawn without replacement, proportionally to importance.

    Successive sampling: each draw picks among the clusters not yet drawn with probability
    proportional to their importance (numpy's ``choice(replace=False, p=...)``).
    """
    importance = np.asarray(importance, dtype=np.float64)
    if importance.size == 0 or n <= 0:
        return np.empty(0, dtype=np.int64)
    if np.any(~np.isfinite(importance)) or np.any(importance <= 0):
        raise ValueError("importances must be finite and positive")
    n = min(n, importance.size)
    return rng.choice(importance.size, size=n, replace=False, p=importance / importance.sum())


def per_medoid_budget(budget: int, sampled: int) -> int:
    """The paper's floor(400 / e) neighbours per sampled embedding."""
    return budget // sampled if sampled else 0


def merge_candidates(
    neighbours: list[tuple[int, int, np.ndarray, np.ndarray]], k: int, budget: int, exclude: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Merge per-medoid neighbour lists into one set of at most ``budget`` pins.

    ``neighbours``: (cluster_id, medoid_pin_id, pin_ids, scores) per sampled medoid, each sorted
    by score. Each medoid contributes its best ``k`` pins not in ``exclude``; a pin reached from
    several medoids keeps its best score and the medoid that gave it. Returns parallel arrays
    (pin_id, score, cluster_id, medoid_pin_id) sorted by score, then pin id.
    """
    parts = []
    for cluster_id, medoid_pin_id, pin_ids, scores in neighbours:
        if exclude.size:
            keep = ~np.isin(pin_ids, exclude)
            pin_ids, scores = pin_ids[keep], scores[keep]
        pin_ids, scores = pin_ids[:k], scores[:k]
        parts.append((pin_ids, scores, np.full(len(pin_ids), cluster_id), np.full(len(pin_ids), medoid_pin_id)))
    if not parts:
        empty = np.empty(0, dtype=np.int64)
        return empty, np.empty(0), empty, empty
    pins, scores, clusters, medoids = (np.concatenate(column) for column in zip(*parts))
    order = np.lexsort((pins, -scores))  # best score first, then lowest pin id
    pins, scores, clusters, medoids = pins[order], scores[order], clusters[order], medoids[order]
    _, first = np.unique(pins, return_index=True)  # first occurrence = the best score of that pin
    first = np.sort(first)[:budget]
    return pins[first], scores[first], clusters[first], medoids[first]
