"""Retrieval (paper, section 4): spend the budget across medoids (``core.retrieval``: the paper's
sampling, or proportional shares), then merge their neighbour lists into one."""

from __future__ import annotations

import numpy as np


def merge_candidates(
    neighbours: list[tuple[int, int, np.ndarray, np.ndarray]], k: int | list[int], budget: int, exclude: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Merge per-medoid neighbour lists into one set of at most ``budget`` pins.

    ``neighbours``: (cluster_id, medoid_pin_id, pin_ids, scores) per sampled medoid, each sorted
    by score. Each medoid contributes its best ``k`` pins (or its own entry of a list of ``k``) not in ``exclude``; a pin reached from
    several medoids keeps its best score and the medoid that gave it. Returns parallel arrays
    (pin_id, score, cluster_id, medoid_pin_id) sorted by score, then pin id.
    """
    parts = []
    ks = k if isinstance(k, list) else [k] * len(neighbours)
    for (cluster_id, medoid_pin_id, pin_ids, scores), take in zip(neighbours, ks):
        if exclude.size:
            keep = ~np.isin(pin_ids, exclude)
            pin_ids, scores = pin_ids[keep], scores[keep]
        pin_ids, scores = pin_ids[:take], scores[:take]
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
