"""One HNSW graph for the candidate pool: the near-duplicate self-join and every day's pin_index.

The graph holds every quality-passing catalog pin under a stable label. A run that finds the
catalog grown by a day of uploads only inserts and queries the new pins, O(new · log n),
instead of rebuilding a graph of millions. Pins that leave the catalog, fall below the
quality threshold or get a new embedding are marked deleted (tombstones; a changed pin
comes back under a new label). Duplicate pairs found so far are kept as label edges, so the
near-duplicate groups are recomputed from all edges every run, exactly as a rebuild would
group them. A rebuild happens when there is no usable graph, the parameters changed, or
tombstones would exceed ``MAX_TOMBSTONE_SHARE`` of the graph.

Duplicate pairs come from two searches of the pins that entered the graph:

- random-hyperplane hashing (``core.near_duplicates``): every pair that shares a bucket of one
  of ``hash_tables`` tables is compared exactly. Its recall at a given cosine is a known
  probability whatever the data looks like, which a graph search cannot promise: in worlds with
  hubs (noisy embeddings) hnswlib leaves some pins linked to by no other pin, so no search of
  its graph returns them (2% of the realistic world's graph at 100k pins, 12% at 1M; the saved
  graph then gets a link to each of them, ``hnsw_file.link_unreachable``, before it is published);
- the new pins' own level-0 neighbour lists in the saved graph (the insertion's search, at
  ``ef_construction``, for free), which pairs what the hashing separated by chance.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import hnswlib
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .artifacts import ArtifactIntegrityError, check_file, publish, read_manifest
from .hnsw import threads
from .hnsw_file import SavedGraph, link_unreachable
from .near_duplicates import hashed_pairs

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
    hash_tables: int
    hash_bits: int

    @classmethod
    def from_manifest(cls, raw: dict) -> GraphParams:
        """The parameters a published graph records; one published by another version of the
        search lacks some and gets 0 for them, so it differs from any usable parameters (a rebuild)."""
        return cls(**{field.name: raw.get(field.name, 0) for field in fields(cls)})


@dataclass
class PoolGraph:
    """``pin_ids``, ``fingerprints`` and ``live`` are per label; ``edges`` are label pairs (a < b)
    of live pins at cosine >= ``duplicate_cosine``."""

    index: hnswlib.Index | None  # None once released: the update's saved file holds it
    pin_ids: np.ndarray
    fingerprints: np.ndarray
    live: np.ndarray
    edges: np.ndarray
    params: GraphParams
    saved: Path | None = None  # a file holding exactly this index, saved by the update: publish moves it

    @property
    def elements(self) -> int:
        return len(self.pin_ids)

    def labels_of(self, pin_ids: np.ndarray) -> np.ndarray:
        """The live label of each pin id; -1 for pins that are not live in the graph."""
        return live_labels(self.pin_ids, self.live, pin_ids)


def live_labels(label_pins: np.ndarray, live: np.ndarray, pin_ids: np.ndarray) -> np.ndarray:
    """The live label of each of ``pin_ids`` in a graph whose labels hold ``label_pins``; -1 if none."""
    result = np.full(len(pin_ids), -1, dtype=np.int64)
    alive = np.flatnonzero(live)
    if len(alive) == 0:
        return result
    order = np.argsort(label_pins[alive], kind="stable")
    sorted_ids = label_pins[alive][order]
    pos = np.minimum(np.searchsorted(sorted_ids, pin_ids), len(sorted_ids) - 1)
    found = sorted_ids[pos] == pin_ids
    result[found] = alive[order[pos[found]]]
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
    self_join_seconds: float = 0.0  # the duplicate search: hashing and the neighbour lists
    unreachable: int = 0  # live pins no search of the graph can return (the service never serves them)
    linked: int = 0  # links the update added so that searches reach pins hnswlib left without one
    link_seconds: float = 0.0


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
    workdir: Path | None = None,
    release_index: bool = False,
    num_threads: int = -1,
    seed: int = 100,
) -> tuple[PoolGraph, GraphUpdate]:
    """The graph over exactly ``pin_ids`` (unit rows ``x``), reusing ``previous`` when it can.

    ``previous`` is consumed: its index is updated in place, or dropped before a rebuild. When
    pins enter the graph, the index is saved to ``workdir`` (a temporary folder without one) to
    read its links; the returned graph's ``saved`` names that file, for ``publish_pool_graph``
    to move. ``release_index`` then drops the in-memory index as soon as it is saved (a caller
    that only publishes the graph: the duplicate search runs beside the embeddings alone).
    """
    pin_ids = np.asarray(pin_ids, dtype=np.int64)
    if len(np.unique(pin_ids)) != len(pin_ids):
        raise ValueError("pin ids must be unique")
    x = np.ascontiguousarray(x, dtype=np.float32)
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
    started = time.perf_counter()
    if reason is not None:
        if previous is not None:
            previous.index = None  # the old graph is not needed to build the new one
        graph = _build(pin_ids, fp, params, num_threads, seed)
        assert graph.index is not None
        mode, retired, new = "rebuild", 0, np.arange(len(pin_ids))
        new_labels = row_of_label = np.arange(len(pin_ids), dtype=np.int64)
        if len(pin_ids):
            graph.index.add_items(x, new_labels)
    else:
        assert previous is not None and previous.index is not None  # a previous graph to update
        mode, reason, retired = "incremental", "catalog changed by inserts/retirements only", len(retire)
        for label_ in retire.tolist():
            previous.index.mark_deleted(label_)
        previous.live[retire] = False
        kept = previous.edges
        if len(kept):
            kept = kept[previous.live[kept[:, 0]] & previous.live[kept[:, 1]]]
        new = np.flatnonzero(~same)
        first = previous.elements
        new_labels = np.arange(first, first + len(new), dtype=np.int64)
        row_of_label = np.full(first + len(new), -1, dtype=np.int64)
        row_of_label[label[same]] = np.flatnonzero(same)
        row_of_label[new_labels] = new
        if len(new):
            previous.index.resize_index(first + len(new))
            previous.index.set_num_threads(threads(num_threads))
            previous.index.add_items(x[new], new_labels)
        graph = PoolGraph(
            index=previous.index,
            pin_ids=np.r_[previous.pin_ids, pin_ids[new]],
            fingerprints=np.r_[previous.fingerprints, fp[new]],
            live=np.r_[previous.live, np.ones(len(new), bool)],
            edges=kept,
            params=params,
        )
        previous.index = None  # the new graph's now
    inserted = time.perf_counter()
    linked = unreachable = 0
    link_seconds = 0.0
    if len(new):
        found, linked, unreachable, link_seconds = _search_duplicates(
            graph, x, row_of_label, new_labels, seed, workdir, release_index and workdir is not None
        )
        graph.edges = _unique_edges(np.vstack([graph.edges, found]))
    update = GraphUpdate(
        mode,
        reason,
        len(new),
        retired,
        graph.elements,
        int(graph.live.sum()),
        len(graph.edges),
        inserted - started,
        time.perf_counter() - inserted - link_seconds,
        unreachable,
        linked,
        link_seconds,
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
    if previous.index is None:
        return "the previous graph's index was released"
    if previous.params != params:
        return f"parameters changed: {asdict(previous.params)} -> {asdict(params)}"
    return None


def _build(pin_ids: np.ndarray, fp: np.ndarray, params: GraphParams, num_threads: int, seed: int) -> PoolGraph:
    n = len(pin_ids)
    index = hnswlib.Index(space=SPACE, dim=params.dimension)
    index.init_index(max_elements=max(n, 1), ef_construction=params.ef_construction, M=params.M, random_seed=seed)
    index.set_num_threads(threads(num_threads))
    return PoolGraph(index, pin_ids.copy(), fp, np.ones(n, bool), np.empty((0, 2), np.int64), params)


def _search_duplicates(
    graph: PoolGraph,
    x: np.ndarray,
    row_of_label: np.ndarray,
    new_labels: np.ndarray,
    seed: int,
    workdir: Path | None,
    release: bool,
) -> tuple[np.ndarray, int, int, float]:
    """Duplicate edges of the pins that just entered the graph (see the module docstring), the
    links added to the saved file so that a search reaches every live pin (``release``: the file
    is the graph, ``hnsw_file.link_unreachable``), how many live pins no search reaches, and the
    seconds the linking took. Live label ``l`` is the pin of row ``row_of_label[l]`` of ``x``."""
    assert graph.index is not None
    with tempfile.TemporaryDirectory(prefix=".graph-", dir=workdir) as scratch:
        path = Path(scratch) / "index.bin"
        graph.index.save_index(str(path))
        if release:
            graph.index = None
        live = np.flatnonzero(graph.live)
        hashed = hashed_pairs(
            x,
            row_of_label[live],
            live,
            live >= new_labels[0],  # new labels follow every old one
            graph.params.duplicate_cosine,
            tables=graph.params.hash_tables,
            bits=graph.params.hash_bits,
            seed=seed,
        )
        saved = SavedGraph(path, graph.params.dimension)
        internal = np.empty(saved.elements, dtype=np.int64)
        internal[saved.labels] = np.arange(saved.elements)
        listed = _listed_edges(graph, saved, np.sort(internal[new_labels]), x, row_of_label)
        if release:  # the file is the graph to publish: no pin of it may be out of a search's reach
            started = time.perf_counter()
            linked, unreachable = link_unreachable(saved, lambda labels: x[row_of_label[labels]])
            link_seconds = time.perf_counter() - started
        else:
            link_seconds = 0.0
            linked, unreachable = 0, int((~saved.reachable() & graph.live[saved.labels]).sum())
        del saved
        if workdir is not None:  # keep the file: it is exactly the graph to publish
            kept = Path(workdir) / f"index-{os.getpid()}-{time.monotonic_ns()}.bin"
            os.replace(path, kept)
            graph.saved = kept
    return np.vstack([hashed, listed]), linked, unreachable, link_seconds


def _listed_edges(
    graph: PoolGraph, saved: SavedGraph, rows: np.ndarray, x: np.ndarray, row_of_label: np.ndarray, chunk: int = 1024
) -> np.ndarray:
    """Pairs among the level-0 neighbour lists of the given (sorted) internal ids at cosine >= threshold."""
    found = [np.empty((0, 2), np.int64)]
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]  # an update's new rows are contiguous: one slice of the file
        links = saved.links(int(part[0]), int(part[-1]) + 1)[part - part[0]]
        row, slot = np.nonzero(links >= 0)
        b = saved.labels[links[row, slot]]
        live = graph.live[b]
        row, b = row[live], b[live]
        a = saved.labels[part]
        # each queried pin's vector once, its neighbours' gathered: (chunk x M0) rows at most
        cosine = np.einsum("ij,ij->i", x[row_of_label[a]][row], x[row_of_label[b]])
        close = cosine >= graph.params.duplicate_cosine
        found.append(np.column_stack([a[row[close]], b[close]]))
    return np.vstack(found)


def _unique_edges(edges: np.ndarray) -> np.ndarray:
    """The distinct pairs (smaller label first), sorted. Each pair is one int64 key when the
    labels' spans allow it: ``np.unique(axis=0)`` compares rows as bytes and took 38 s for the
    32M pairs of 2,000 identical pins (every hash table pairs a bucket's pins), the keys 1-2 s."""
    if len(edges) == 0:
        return np.empty((0, 2), np.int64)
    edges = edges.astype(np.int64, copy=False)
    a, b = np.minimum(edges[:, 0], edges[:, 1]), np.maximum(edges[:, 0], edges[:, 1])
    low_a, low_b = a.min(), b.min()
    span_b = int(b.max()) - int(low_b) + 1
    if (int(a.max()) - int(low_a) + 1) * span_b >= 2**63:
        return np.unique(np.column_stack([a, b]), axis=0)
    a -= low_a
    a *= span_b
    a += b
    a -= low_b
    keys = np.sort(a, kind="stable")  # a radix sort for integers: 4x numpy's default here
    keys = keys[np.r_[True, keys[1:] != keys[:-1]]]
    return np.column_stack([keys // span_b + low_a, keys % span_b + low_b])


def publish_pool_graph(directory: Path, graph: PoolGraph) -> dict:
    """Publish the graph atomically (``core.artifacts``); returns the manifest."""

    def write(build: Path) -> dict:
        if graph.saved is not None and graph.saved.exists():
            shutil.move(graph.saved, build / "index.bin")  # saved by the update, exactly this graph
            graph.saved = None
        elif graph.index is not None:
            graph.index.save_index(str(build / "index.bin"))
        else:
            raise ValueError("the graph's index was released and its saved file is gone: nothing to publish")
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


@dataclass(frozen=True)
class PublishedLabels:
    """What a day's index needs of the published graph without loading it: where its build is,
    the checksums it was published with, and its labels' pins and liveness (both verified)."""

    build: Path
    files: dict[str, str]
    pin_ids: np.ndarray
    live: np.ndarray
    params: GraphParams


def published_labels(directory: Path) -> PublishedLabels:
    """The published graph's labels, checking the small files' checksums; ``index.bin`` is
    hashed by whoever opens it (the index check, the service), never loaded here."""
    manifest = read_manifest(directory)
    try:
        build = directory / "builds" / manifest["build_id"]
        files, params = manifest["files"], GraphParams.from_manifest(manifest["params"])
        for name in ("pin_ids.npy", "live.npy"):
            check_file(build / name, files.get(name))
        pin_ids, live = np.load(build / "pin_ids.npy"), np.load(build / "live.npy")
    except (KeyError, TypeError, AttributeError, ValueError, OSError) as exc:
        raise ArtifactIntegrityError(f"unreadable pool graph in {directory}: {exc}") from exc
    if not (len(pin_ids) == len(live) == manifest["elements"]) or int(live.sum()) != manifest["live"]:
        raise ArtifactIntegrityError(f"pool graph in {build} does not match its manifest")
    if "index.bin" not in files or not (build / "index.bin").is_file():
        raise ArtifactIntegrityError(f"{build}/index.bin is missing")
    return PublishedLabels(build, files, pin_ids, live, params)


def load_pool_graph(directory: Path) -> PoolGraph:
    """The published graph after checking every file's checksum; raises ArtifactIntegrityError."""
    labels = published_labels(directory)
    build = labels.build
    for name in ("index.bin", "fingerprints.npy", "edges.npy"):
        check_file(build / name, labels.files.get(name))
    try:
        fp, edges = np.load(build / "fingerprints.npy"), np.load(build / "edges.npy")
    except (ValueError, OSError) as exc:
        raise ArtifactIntegrityError(f"unreadable pool graph in {build}: {exc}") from exc
    if len(fp) != len(labels.pin_ids):
        raise ArtifactIntegrityError(f"pool graph in {build} does not match its manifest")
    index = hnswlib.Index(space=SPACE, dim=labels.params.dimension)
    index.load_index(str(build / "index.bin"), max_elements=max(len(labels.pin_ids), 1))
    if index.get_current_count() != len(labels.pin_ids):
        raise ArtifactIntegrityError(
            f"{build}/index.bin holds {index.get_current_count()} items, expected {len(labels.pin_ids)}"
        )
    return PoolGraph(index, labels.pin_ids, fp, labels.live, edges, labels.params)
