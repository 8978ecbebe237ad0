"""Ward clustering of one user's action pins: Algorithm 1 of the paper, run by scipy.

scipy's ``linkage(method="ward")`` is the nearest-neighbour-chain algorithm with the
Lance-Williams update of Eq. 1. Its merge heights are ``sqrt(d_ij)`` on the paper's
squared-distance scale, so Algorithm 1's rule "keep the maximal merges with
``d_ij <= alpha``" is a flat cut of the dendrogram at ``sqrt(alpha)``. Pins that never
merge under ``alpha`` belong to no cluster, exactly as in Algorithm 1.

Speed: most of ``linkage(X, "ward")``'s time at d=256 is its own pairwise-distance pass.
``ward_linkage`` computes the same distances from one float32 BLAS Gram matrix and hands the
condensed matrix to fastcluster's ``linkage``, the same nearest-neighbour-chain Ward in C++
(2-5x faster than scipy's on the same matrix at 50-2,000 pins, measured; identical cuts on
every test population, ``tests/test_fast_path.py``). ``reference_linkage`` is scipy's plain
call, kept as the reference for tests and benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass

import fastcluster
import numpy as np
from scipy.cluster.hierarchy import linkage
from scipy.spatial.distance import squareform

UNCLUSTERED = -1


@dataclass(frozen=True)
class WardClusters:
    """Clusters of one user's pins.

    ``labels[i]`` is the cluster index (0..k-1) of row i, or ``UNCLUSTERED``;
    ``merge_costs[c]`` is cluster c's final merge distance on the paper's scale.
    """

    labels: np.ndarray
    merge_costs: np.ndarray

    @property
    def n_clusters(self) -> int:
        return int(self.merge_costs.shape[0])


def reference_linkage(embeddings: np.ndarray) -> np.ndarray:
    """scipy's Ward on the observation matrix: its own float64 pairwise-distance pass."""
    return linkage(np.asarray(embeddings, dtype=np.float64), method="ward")


def ward_linkage(embeddings: np.ndarray) -> np.ndarray:
    """Ward (fastcluster) on Euclidean distances from a float32 Gram matrix (one BLAS call)."""
    # fastcluster copies its input anyway; without preserve_input that copy is the float64 one
    return fastcluster.linkage(_condensed_distances(embeddings), method="ward", preserve_input=False)


def gram_distances(embeddings: np.ndarray) -> np.ndarray:
    """Condensed float64 Euclidean distances of the rows, from one float32 Gram matrix."""
    return _condensed_distances(embeddings).astype(np.float64)


def _condensed_distances(embeddings: np.ndarray) -> np.ndarray:
    """Condensed float32 Euclidean distances of the rows: the Gram matrix's upper triangle, taken
    before the clamp and the square root so those run on half the matrix, and widened by the
    caller (the same values as widening the whole matrix first, at a fraction of the traffic)."""
    x = np.asarray(embeddings, dtype=np.float32)
    gram = x @ x.T
    norms = np.diag(gram).copy()
    gram *= -2.0
    gram += norms[:, None]
    gram += norms[None, :]
    condensed = squareform(gram, checks=False)
    np.maximum(condensed, 0.0, out=condensed)  # rounding can make a squared distance slightly negative
    np.sqrt(condensed, out=condensed)
    return condensed


def ward_clusters(embeddings: np.ndarray, alpha: float, *, reference: bool = False) -> WardClusters:
    """Cluster the rows of ``embeddings`` (one row per distinct pin) with Ward at ``alpha``.

    Clusters are numbered in order of their first row, so the result is deterministic.
    ``reference=True`` uses scipy's own distance pass instead of the Gram-matrix one.
    """
    _check_alpha(alpha)
    n = embeddings.shape[0]
    if n < 2:
        return WardClusters(np.full(n, UNCLUSTERED, dtype=np.int64), np.empty(0))
    tree = reference_linkage(embeddings) if reference else ward_linkage(embeddings)
    return clusters_from_linkage(tree, alpha)


def clusters_from_linkage(tree: np.ndarray, alpha: float) -> WardClusters:
    """Algorithm 1's cluster rule applied to one scipy Ward linkage matrix (``cut_linkages``)."""
    found = cut_linkages([tree], np.array([tree.shape[0] + 1]), alpha)
    return WardClusters(found.labels, found.merge_costs)


@dataclass(frozen=True)
class BatchClusters:
    """Clusters of many point sets given set after set (a batch of users' distinct pins).

    ``labels[i]`` is row i's cluster index within its set (0..k-1, numbered by first row) or
    ``UNCLUSTERED``; ``counts[s]`` is set s's number of clusters k; ``merge_costs`` holds every
    cluster's final merge distance on the paper's scale, set after set, in index order.
    """

    labels: np.ndarray
    counts: np.ndarray
    merge_costs: np.ndarray


def cut_linkages(trees: list[np.ndarray], sizes: np.ndarray, alpha: float) -> BatchClusters:
    """Algorithm 1's cluster rule applied to the Ward trees of many point sets at once.

    ``sizes[s]`` is set s's number of points (the rows, set after set); ``trees`` holds the
    linkage of every set of at least 2 points, in order. A merge joins a cluster when its height
    is <= sqrt(alpha); each point belongs to its topmost such merge reached through such merges
    only (Ward heights never decrease upwards, so that merge is the maximal one), and points
    under no such merge are in no cluster. The trees' nodes are renumbered into one forest and
    every point finds its top by pointer jumping (log2 of the tallest tree's depth steps over the
    batch), so the cost per user is a few array operations shared by the whole batch, not a
    Python loop over each user's merges.
    """
    _check_alpha(alpha)
    sizes = np.asarray(sizes, dtype=np.int64)
    n = int(sizes.sum())
    set_of_row = np.repeat(np.arange(len(sizes)), sizes)
    linked = sizes[sizes >= 2]
    merges = linked - 1
    if len(trees) != len(linked) or sum(len(t) for t in trees) != int(merges.sum()):
        raise ValueError("one linkage of m - 1 merges is needed for every set of m >= 2 points, in order")
    labels = np.full(n, UNCLUSTERED, dtype=np.int64)
    none = BatchClusters(labels, np.zeros(len(sizes), dtype=np.int64), np.empty(0))
    if not trees:
        return none
    tree = np.concatenate(trees) if len(trees) > 1 else trees[0]
    # batch-wide node ids: point j of a set is its row; merge r of a set (node m + r) is n + its row in `tree`
    size = np.repeat(linked, merges)[:, None]
    first_row = np.repeat((np.cumsum(sizes) - sizes)[sizes >= 2], merges)[:, None]
    first_merge = np.repeat(np.cumsum(merges) - merges, merges)[:, None]
    child = tree[:, :2].astype(np.int64)
    node = np.where(child < size, first_row + child, n + first_merge + child - size)
    merged = np.flatnonzero(tree[:, 2] <= np.sqrt(alpha))
    top = np.arange(n + len(tree))
    top[node[merged, 0]] = top[node[merged, 1]] = n + merged
    while True:  # pointer jumping: every node ends at the top of its chain of merges under the cut
        jumped = top[top]
        if np.array_equal(jumped, top):
            break
        top = jumped
    root = top[:n]
    clustered = root >= n
    if not clustered.any():
        return none
    roots, first, inverse = np.unique(root[clustered], return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # by first row: set after set, then within the set
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    counts = np.bincount(set_of_row[clustered][first[order]], minlength=len(sizes))
    first_cluster = np.cumsum(counts) - counts
    labels[clustered] = rank[inverse] - first_cluster[set_of_row[clustered]]
    return BatchClusters(labels, counts, tree[roots[order] - n, 2].astype(np.float64) ** 2)


def _check_alpha(alpha: float) -> None:
    if alpha <= 0 or not np.isfinite(alpha):
        raise ValueError(f"alpha must be a positive finite number, got {alpha!r}")
