"""One HNSW graph for the candidate pool: the near-duplicate self-join and every day's pin_index.

The graph holds every quality-passing catalog pin under a stable label. A run that finds the
catalog grown by a day of uploads only inserts and queries the new pins, O(new · log n),
instead of rebuilding a graph of millions. Pins that leave the catalog, fall below the
quality threshold or get a new embedding are marked deleted (tombstones; a changed pin
comes back under a new label). Duplicate pairs found so far are kept as label edges, so the
near-duplicate groups are recomputed from all edges every run, exactly as a rebuild would
group them. A rebuild happens when there is no usable graph, the parameters changed, or
tombstones would exceed ``MAX_TOMBSTONE_SHARE`` of the graph.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import hnswlib
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .artifacts import ArtifactIntegrityError, publish, verified_build
from .hnsw import threads

MAX_TOMBSTONE_SHARE = 0.10
SPACE = "ip"  # inner product on unit vectors; hnswlib distance is 1 - cosine
FILES = ("index.bin", "pin_ids.npy", "fingerprints.npy", "live.npy", "edges.npy")


@dataclass(frozen=True)
class GraphParams:
    """Everything that, when changed, makes an existing graph unusable."""

    dimension: int
    M: int
    ef_construction: int
    duplicate_cosine: float
    neighbours: int
    ef: int


@dataclass
class PoolGraph:
    """``pin_ids``, ``fingerprints`` and ``live`` are per label; ``edges`` are label pairs (a < b)
    of live pins at cosine >= ``duplicate_cosine``."""

    index: hnswlib.Index
    pin_ids: np.ndarray
    fingerprints: np.ndarray
    live: np.ndarray
    edges: np.ndarray
    params: GraphParams

    @property
    def elements(self) -> int:
        return len(self.pin_ids)

    def labels_of(self, pin_ids: np.ndarray) -> np.ndarray:
        """The live label of each pin id; -1 for pins that are not live in the graph."""
        result = np.full(len(pin_ids), -1, dtype=np.int64)
        live = np.flatnonzero(self.live)
        if len(live) == 0:
            return result
        order = np.argsort(self.pin_ids[live], kind="stable")
        sorted_ids = self.pin_ids[live][order]
        pos = np.minimum(np.searchsorted(sorted_ids, pin_ids), len(sorted_ids) - 1)
        found = sorted_ids[pos] == pin_ids
        result[found] = live[order[pos[found]]]
        return result


@dataclass(frozen=True)
class GraphUpdate:
    """How a run changed the graph: ``mode`` is 'rebuild' or 'incremental'."""

    mode: str
    reason: str
    inserted: int
    retired: int
    elements: int
    live: int
    edges: int
    insert_seconds: float = 0.0  # hnswlib add_items
    self_join_seconds: float = 0.0  # the duplicate self-join: one kNN query per inserted pin


def fingerprints(x: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each float32 row: an embedding that changes gets a new label."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    digest = (hashlib.blake2b(row, digest_size=8).digest() for row in x)
    return np.fromiter((int.from_bytes(d, "little") for d in digest), dtype=np.uint64, count=len(x))


def update_pool_graph(
    previous: PoolGraph | None,
    pin_ids: np.ndarray,
    x: np.ndarray,
    params: GraphParams,
    *,
    num_threads: int = -1,
    seed: int = 100,
) -> tuple[PoolGraph, GraphUpdate]:
    """The graph over exactly ``pin_ids`` (unit rows ``x``), reusing ``previous`` when it can.

    ``previous`` is consumed: its index is updated in place.
    """
    pin_ids = np.asarray(pin_ids, dtype=np.int64)
    if len(np.unique(pin_ids)) != len(pin_ids):
        raise ValueError("pin ids must be unique")
    fp = fingerprints(x)
    reason = _rebuild_reason(previous, params)
    if reason is None:
        assert previous is not None
        label = previous.labels_of(pin_ids)
        same = label >= 0
        same[same] = previous.fingerprints[label[same]] == fp[same]
        retire = np.setdiff1d(np.flatnonzero(previous.live), label[same], assume_unique=True)
        tombstones = int((~previous.live).sum()) + len(retire)
        if tombstones > MAX_TOMBSTONE_SHARE * (previous.elements + int((~same).sum())):
            reason = f"{tombstones} tombstones would exceed {MAX_TOMBSTONE_SHARE:.0%} of the graph"
    if reason is not None:
        graph, seconds = _build(pin_ids, np.ascontiguousarray(x, dtype=np.float32), fp, params, num_threads, seed)
        update = GraphUpdate(
            "rebuild", reason, len(pin_ids), 0, graph.elements, len(pin_ids), len(graph.edges), *seconds
        )
        return graph, update

    assert previous is not None  # reason is None only when there is a previous graph to update
    graph = previous
    for label_ in retire.tolist():
        graph.index.mark_deleted(label_)
    graph.live[retire] = False
    keep = graph.live[graph.edges[:, 0]] & graph.live[graph.edges[:, 1]] if len(graph.edges) else np.empty(0, bool)
    new = np.flatnonzero(~same)
    first = graph.elements
    new_labels = np.arange(first, first + len(new), dtype=np.int64)
    started = time.perf_counter()
    if len(new):
        graph.index.resize_index(first + len(new))
        graph.index.set_num_threads(threads(num_threads))
        graph.index.add_items(np.ascontiguousarray(x[new], dtype=np.float32), new_labels)
    inserted = time.perf_counter()
    graph = PoolGraph(
        index=graph.index,
        pin_ids=np.r_[graph.pin_ids, pin_ids[new]],
        fingerprints=np.r_[graph.fingerprints, fp[new]],
        live=np.r_[graph.live, np.ones(len(new), bool)],
        edges=graph.edges[keep],
        params=params,
    )
    graph.edges = _unique_edges(np.vstack([graph.edges, _duplicate_edges(graph, x[new], new_labels)]))
    update = GraphUpdate(
        "incremental",
        "catalog changed by inserts/retirements only",
        len(new),
        len(retire),
        graph.elements,
        int(graph.live.sum()),
        len(graph.edges),
        inserted - started,
        time.perf_counter() - inserted,
    )
    return graph, update


def duplicate_components(graph: PoolGraph, labels: np.ndarray) -> np.ndarray:
    """Connected component (0..k-1) of each given live label under the duplicate edges."""
    if len(labels) == 0:
        return np.empty(0, dtype=np.int64)
    n = graph.elements
    edges = graph.edges
    adjacency = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, component = connected_components(adjacency, directed=False)
    _, dense = np.unique(component[labels], return_inverse=True)
    return dense.astype(np.int64)


def _rebuild_reason(previous: PoolGraph | None, params: GraphParams) -> str | None:
    if previous is None:
        return "no previous graph"
    if previous.params != params:
        return f"parameters changed: {asdict(previous.params)} -> {asdict(params)}"
    return None


def _build(
    pin_ids: np.ndarray, x: np.ndarray, fp: np.ndarray, params: GraphParams, num_threads: int, seed: int
) -> tuple[PoolGraph, tuple[float, float]]:
    n = len(pin_ids)
    index = hnswlib.Index(space=SPACE, dim=params.dimension)
    index.init_index(max_elements=max(n, 1), ef_construction=params.ef_construction, M=params.M, random_seed=seed)
    index.set_num_threads(threads(num_threads))
    labels = np.arange(n, dtype=np.int64)
    started = time.perf_counter()
    if n:
        index.add_items(x, labels)
    inserted = time.perf_counter()
    graph = PoolGraph(index, pin_ids.copy(), fp, np.ones(n, bool), np.empty((0, 2), np.int64), params)
    graph.edges = _unique_edges(_duplicate_edges(graph, x, labels))
    return graph, (inserted - started, time.perf_counter() - inserted)


def _duplicate_edges(graph: PoolGraph, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Pairs (query label, neighbour label) at cosine >= duplicate_cosine among approximate kNN."""
    live = int(graph.live.sum())
    if len(labels) == 0 or live < 2:
        return np.empty((0, 2), np.int64)
    k = min(graph.params.neighbours + 1, live)
    graph.index.set_ef(max(graph.params.ef, k))
    found, distances = graph.index.knn_query(np.ascontiguousarray(x, dtype=np.float32), k=k)
    rows = np.repeat(labels, k)
    cols = found.ravel().astype(np.int64)
    edge = (1.0 - distances.ravel() >= graph.params.duplicate_cosine) & (rows != cols)
    return np.column_stack([rows[edge], cols[edge]])


def _unique_edges(edges: np.ndarray) -> np.ndarray:
    if len(edges) == 0:
        return np.empty((0, 2), np.int64)
    return np.unique(np.sort(edges.astype(np.int64), axis=1), axis=0)


def publish_pool_graph(directory: Path, graph: PoolGraph) -> dict:
    """Publish the graph atomically (``core.artifacts``); returns the manifest."""

    def write(build: Path) -> dict:
        graph.index.save_index(str(build / "index.bin"))
        np.save(build / "pin_ids.npy", graph.pin_ids)
        np.save(build / "fingerprints.npy", graph.fingerprints)
        np.save(build / "live.npy", graph.live)
        np.save(build / "edges.npy", graph.edges)
        return {
            "params": asdict(graph.params),
            "elements": graph.elements,
            "live": int(graph.live.sum()),
            "edges": len(graph.edges),
            "space": SPACE,
        }

    return publish(directory, write)


def load_pool_graph(directory: Path) -> PoolGraph:
    """The published graph after checking every file's checksum; raises ArtifactIntegrityError."""
    build, manifest = verified_build(directory)
    try:
        params = GraphParams(**manifest["params"])
        pin_ids = np.load(build / "pin_ids.npy")
        fp, live, edges = (np.load(build / name) for name in ("fingerprints.npy", "live.npy", "edges.npy"))
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise ArtifactIntegrityError(f"unreadable pool graph in {build}: {exc}") from exc
    if not (len(pin_ids) == len(fp) == len(live) == manifest["elements"]) or int(live.sum()) != manifest["live"]:
        raise ArtifactIntegrityError(f"pool graph in {build} does not match its manifest")
    index = hnswlib.Index(space=SPACE, dim=params.dimension)
    index.load_index(str(build / "index.bin"), max_elements=max(len(pin_ids), 1))
    if index.get_current_count() != len(pin_ids):
        raise ArtifactIntegrityError(
            f"{build}/index.bin holds {index.get_current_count()} items, expected {len(pin_ids)}"
        )
    return PoolGraph(index, pin_ids, fp, live, edges, params)
