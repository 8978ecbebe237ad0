"""Candidate pool refinement (paper, section 4.1.1): drop low-quality pins, collapse near-duplicates.

Near-duplicates are found by an approximate self-join on the pool's HNSW graph
(``core.pool_graph``): each pin is queried for its ``neighbours`` nearest pins when it enters
the graph, pairs at cosine >= ``duplicate_cosine`` become edges, and each connected component
keeps one representative: the earliest created pin (the original upload), then the highest
quality, then the lowest pin id. Cost is O(n log n) for a rebuild and O(new pins · log n) for a
day of uploads, never the O(n^2) all-pairs pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .pool_graph import GraphParams, GraphUpdate, PoolGraph, duplicate_components, update_pool_graph

LOW_QUALITY = "low_quality"
NEAR_DUPLICATE = "near_duplicate"


@dataclass(frozen=True)
class RefinedPool:
    """``kept``: one row per pool pin (``pin_id``, ``quality``, ``created_at``, ``n_duplicates``).
    ``excluded``: one row per removed pin (``pin_id``, ``reason``, ``representative_pin_id``,
    ``cosine`` to its representative, NaN for low quality). ``graph``: the pool's HNSW graph
    over the quality-passing pins, to publish for ``pin_index`` and the next run."""

    kept: pd.DataFrame
    excluded: pd.DataFrame
    graph: PoolGraph
    update: GraphUpdate


def refine_candidate_pool(
    pin_ids: np.ndarray,
    embeddings: np.ndarray,
    quality: np.ndarray,
    created_at: np.ndarray,
    *,
    quality_threshold: float,
    duplicate_cosine: float,
    hash_tables: int = 16,
    hash_bits: int = 15,
    M: int = 32,
    ef_construction: int = 200,
    previous: PoolGraph | None = None,
    workdir: Path | None = None,
    num_threads: int = -1,
) -> RefinedPool:
    """Quality filter then near-duplicate collapse. ``embeddings`` must be unit rows: one per pin,
    or only those of the pins with ``quality >= quality_threshold``, in the same order (what
    the asset reads, so the low-quality pins' embeddings never take memory).

    ``previous`` is the graph of the last run (consumed); without it the graph is built anew.
    ``workdir`` (on the publishing filesystem) keeps the graph's saved file for its publish, and
    the returned graph holds no index in memory: it is for ``publish_pool_graph``, not queries.
    """
    n = len(pin_ids)
    good = quality >= quality_threshold
    if not (len(quality) == len(created_at) == n and embeddings.shape[0] in (n, int(good.sum()))):
        raise ValueError("pin_ids, embeddings, quality and created_at must be aligned")
    low = pd.DataFrame(
        {
            "pin_id": pin_ids[~good],
            "reason": LOW_QUALITY,
            "representative_pin_id": pd.array([pd.NA] * int((~good).sum()), dtype="Int64"),
            "cosine": np.nan,
        }
    )
    x = embeddings[good] if embeddings.shape[0] == n else embeddings
    ids, q, created = pin_ids[good], quality[good], created_at[good]
    params = GraphParams(int(embeddings.shape[1]), M, ef_construction, float(duplicate_cosine), hash_tables, hash_bits)
    graph, update = update_pool_graph(
        previous, ids, x, params, workdir=workdir, release_index=True, num_threads=num_threads
    )
    component = duplicate_components(graph, graph.labels_of(ids))

    # representative of each component: earliest created, then best quality, then lowest id
    created_key = pd.to_datetime(created).fillna(pd.Timestamp.min).to_numpy()
    order = np.lexsort((ids, -q, created_key, component))
    first = np.r_[True, component[order][1:] != component[order][:-1]]
    rep_of_component = np.empty(component.max() + 1 if len(component) else 0, dtype=np.int64)
    rep_of_component[component[order][first]] = order[first]
    rep = rep_of_component[component]
    is_rep = rep == np.arange(len(ids))
    dup = np.flatnonzero(~is_rep)  # only duplicates need their cosine: no second copy of the pool's matrix
    dup_cos = np.einsum("ij,ij->i", x[dup], x[rep[dup]]) if len(dup) else np.empty(0)

    dups = pd.DataFrame(
        {
            "pin_id": ids[~is_rep],
            "reason": NEAR_DUPLICATE,
            "representative_pin_id": pd.array(ids[rep[~is_rep]], dtype="Int64"),
            "cosine": dup_cos.astype(np.float64),
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
    excluded = pd.concat([low, dups], ignore_index=True)
    return RefinedPool(kept=kept.reset_index(drop=True), excluded=excluded, graph=graph, update=update)
