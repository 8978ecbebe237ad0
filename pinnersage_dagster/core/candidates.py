"""Candidate pool refinement (paper, section 4.1.1): drop low-quality pins, collapse near-duplicates.

Near-duplicates are found by an approximate self-join: an HNSW index over the pins that
passed the quality filter is queried for each pin's ``neighbours`` nearest pins, pairs at
cosine >= ``duplicate_cosine`` become graph edges, and each connected component keeps one
representative: the earliest created pin (the original upload), then the highest quality,
then the lowest pin id. Cost is O(n log n), never the O(n^2) all-pairs pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import hnswlib
import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

LOW_QUALITY = "low_quality"
NEAR_DUPLICATE = "near_duplicate"


@dataclass(frozen=True)
class RefinedPool:
    """``kept``: one row per pool pin (``pin_id``, ``quality``, ``created_at``, ``n_duplicates``).
    ``excluded``: one row per removed pin (``pin_id``, ``reason``, ``representative_pin_id``,
    ``cosine`` to its representative, NaN for low quality)."""

    kept: pd.DataFrame
    excluded: pd.DataFrame


def refine_candidate_pool(
    pin_ids: np.ndarray,
    embeddings: np.ndarray,
    quality: np.ndarray,
    created_at: np.ndarray,
    *,
    quality_threshold: float,
    duplicate_cosine: float,
    neighbours: int = 16,
    ef: int = 128,
    num_threads: int = -1,
) -> RefinedPool:
    """Quality filter then near-duplicate collapse. ``embeddings`` must be unit rows."""
    n = len(pin_ids)
    if not (embeddings.shape[0] == len(quality) == len(created_at) == n):
        raise ValueError("pin_ids, embeddings, quality and created_at must be aligned")
    good = quality >= quality_threshold
    low = pd.DataFrame(
        {
            "pin_id": pin_ids[~good],
            "reason": LOW_QUALITY,
            "representative_pin_id": pd.array([pd.NA] * int((~good).sum()), dtype="Int64"),
            "cosine": np.nan,
        }
    )
    ids, x, q, created = pin_ids[good], embeddings[good], quality[good], created_at[good]
    component = _near_duplicate_components(x, duplicate_cosine, neighbours, ef, num_threads)

    # representative of each component: earliest created, then best quality, then lowest id
    created_key = pd.to_datetime(created).fillna(pd.Timestamp.min).to_numpy()
    order = np.lexsort((ids, -q, created_key, component))
    first = np.r_[True, component[order][1:] != component[order][:-1]]
    rep_of_component = np.empty(component.max() + 1 if len(component) else 0, dtype=np.int64)
    rep_of_component[component[order][first]] = order[first]
    rep = rep_of_component[component]
    is_rep = rep == np.arange(len(ids))
    dup_cos = np.einsum("ij,ij->i", x, x[rep]) if len(ids) else np.empty(0)

    dups = pd.DataFrame(
        {
            "pin_id": ids[~is_rep],
            "reason": NEAR_DUPLICATE,
            "representative_pin_id": pd.array(ids[rep[~is_rep]], dtype="Int64"),
            "cosine": dup_cos[~is_rep].astype(np.float64),
        }
    )
    group_size = np.bincount(component, minlength=len(rep_of_component)) if len(ids) else np.empty(0, int)
    kept = pd.DataFrame(
        {
            "pin_id": ids[is_rep],
            "quality": q[is_rep].astype(np.float64),
            "created_at": created[is_rep],
            "n_duplicates": (group_size[component[is_rep]] - 1).astype(np.int64),
        }
    )
    return RefinedPool(kept=kept.reset_index(drop=True), excluded=pd.concat([low, dups], ignore_index=True))


def _near_duplicate_components(
    x: np.ndarray, duplicate_cosine: float, neighbours: int, ef: int, num_threads: int
) -> np.ndarray:
    """Connected components of the graph 'cosine >= duplicate_cosine' among approximate kNN pairs."""
    n = x.shape[0]
    if n == 0:
        return np.empty(0, dtype=np.int64)
    k = min(neighbours + 1, n)
    index = hnswlib.Index(space="ip", dim=x.shape[1])
    index.init_index(max_elements=n, ef_construction=max(ef, k), M=16, random_seed=1)
    index.set_num_threads(num_threads)
    index.add_items(x, np.arange(n))
    index.set_ef(max(ef, k))
    labels, distances = index.knn_query(x, k=k)
    cosine = 1.0 - distances  # hnswlib "ip" distance is 1 - <a, b>
    rows = np.repeat(np.arange(n), k)
    cols = labels.ravel().astype(np.int64)
    edge = (cosine.ravel() >= duplicate_cosine) & (rows != cols)
    graph = coo_matrix((np.ones(int(edge.sum())), (rows[edge], cols[edge])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    return component.astype(np.int64)
