"""The HNSW index artifact: build, publish atomically with a manifest, load and verify.

Labels inside hnswlib are row numbers 0..n-1; ``pin_ids.npy`` maps them to pin ids, so any
int64 pin id (negative included) can be indexed. An index may carry deleted labels
(tombstones, never returned by a query). A day's index is usually the pool graph itself:
its ``index.bin`` and ``pin_ids.npy`` are hard links to the pool graph's files (one graph
written per day, not two), and ``deleted.npy`` lists the labels outside that day's pool, marked
deleted when the index is opened. ``live.npy`` says which labels are served; the manifest's
``count`` and ``pin_ids_sha256`` describe the live pins only, and opening an index checks that
the graph file's own tombstones and ``deleted.npy`` leave exactly ``live.npy``. Publishing
follows ``core.artifacts``: a reader only ever sees a complete, checksum-verified build.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np

from .artifacts import ArtifactIntegrityError, check_file, publish, read_manifest as read_artifact_manifest
from .hnsw_file import SavedGraph, link_unreachable

INDEX_FILE = "index.bin"
IDS_FILE = "pin_ids.npy"
LIVE_FILE = "live.npy"
DELETED_FILE = "deleted.npy"
SPACE = "ip"  # inner product on unit vectors = cosine; hnswlib distance is 1 - cosine


@dataclass(frozen=True)
class IndexFiles:
    """Where the files of one index build are: in a pin_index build, or linked into a serving
    snapshot under an ``index_`` prefix. ``deleted.npy`` is absent from builds that predate it."""

    index: Path
    pin_ids: Path
    live: Path
    deleted: Path

    @classmethod
    def of(cls, build: Path, prefix: str = "") -> IndexFiles:
        return cls(
            build / INDEX_FILE,
            build / f"{prefix}{IDS_FILE}",
            build / f"{prefix}{LIVE_FILE}",
            build / f"{prefix}{DELETED_FILE}",
        )


@dataclass(frozen=True)
class IndexManifest:
    source_partition: str
    dimension: int
    count: int  # live pins
    elements: int  # labels in the graph, tombstones included
    space: str
    M: int
    ef_construction: int
    ef: int
    build_id: str
    pin_ids_sha256: str
    files: dict[str, str]
    built_at: str
    hnswlib_version: str

    def to_dict(self) -> dict:
        return asdict(self)


def pin_ids_checksum(pin_ids: np.ndarray) -> str:
    """Order-independent checksum of a set of pin ids."""
    return hashlib.sha256(np.sort(np.asarray(pin_ids, dtype=np.int64)).tobytes()).hexdigest()


def threads(num_threads: int) -> int:
    """hnswlib takes -1 literally and runs one thread: resolve 'all cores' here."""
    return num_threads if num_threads > 0 else (os.cpu_count() or 1)


def build_index(
    embeddings: np.ndarray, *, M: int, ef_construction: int, ef: int, num_threads: int = -1, seed: int = 100
) -> hnswlib.Index:
    """An inner-product HNSW index over unit rows, labelled by row number."""
    n, dim = embeddings.shape
    index = hnswlib.Index(space=SPACE, dim=dim)
    index.init_index(max_elements=max(n, 1), ef_construction=ef_construction, M=M, random_seed=seed)
    index.set_num_threads(threads(num_threads))
    if n:
        index.add_items(np.ascontiguousarray(embeddings, dtype=np.float32), np.arange(n))
    index.set_ef(ef)
    return index


def publish_index(
    partition_dir: Path,
    index: hnswlib.Index,
    pin_ids: np.ndarray,
    *,
    source_partition: str,
    M: int,
    ef_construction: int,
    ef: int,
) -> IndexManifest:
    """Write a built index aside (every pin linked so a search reaches it), verify it reads back,
    then swap the manifest in atomically.
    ``pin_ids`` maps every label to its pin; every label is live."""
    pin_ids = np.asarray(pin_ids, dtype=np.int64)

    def write(build_dir: Path) -> dict:
        index.save_index(str(build_dir / INDEX_FILE))
        # a search must reach every pin it serves (``hnsw_file.link_unreachable``)
        saved = SavedGraph(build_dir / INDEX_FILE, int(index.dim))
        link_unreachable(saved, lambda labels: index.get_items(labels, "numpy"))
        np.save(build_dir / IDS_FILE, pin_ids)
        np.save(build_dir / LIVE_FILE, np.ones(len(pin_ids), bool))
        np.save(build_dir / DELETED_FILE, np.empty(0, np.int64))
        return _fields(source_partition, int(index.dim), pin_ids, np.ones(len(pin_ids), bool), M, ef_construction, ef)

    return IndexManifest(**publish(partition_dir, write, verify=_readable))


def publish_linked_index(
    partition_dir: Path,
    graph_build: Path,
    graph_files: dict[str, str],
    pin_ids: np.ndarray,
    graph_live: np.ndarray,
    served: np.ndarray,
    *,
    dimension: int,
    source_partition: str,
    M: int,
    ef_construction: int,
    ef: int,
) -> IndexManifest:
    """Publish the graph of ``graph_build`` (its ``index.bin`` and ``pin_ids.npy``, hard-linked with
    the checksums ``graph_files`` published them with) as an index serving the labels ``served``:
    the graph's live labels outside it are listed in ``deleted.npy``, marked deleted at load."""
    pin_ids = np.asarray(pin_ids, dtype=np.int64)
    served = np.asarray(served, dtype=bool)
    if len(served) != len(pin_ids) or len(graph_live) != len(pin_ids) or (served & ~graph_live).any():
        raise ValueError("an index can only serve live labels of its graph")
    deleted = np.flatnonzero(graph_live & ~served).astype(np.int64)

    def write(build_dir: Path) -> tuple[dict, dict[str, tuple[Path, str]]]:
        np.save(build_dir / LIVE_FILE, served)
        np.save(build_dir / DELETED_FILE, deleted)
        linked = {name: (graph_build / name, graph_files[name]) for name in (INDEX_FILE, IDS_FILE)}
        return _fields(source_partition, dimension, pin_ids, served, M, ef_construction, ef), linked

    return IndexManifest(**publish(partition_dir, write, verify=_readable))


def _fields(
    source_partition: str, dimension: int, pin_ids: np.ndarray, live: np.ndarray, M: int, ef_construction: int, ef: int
) -> dict:
    return {
        "source_partition": source_partition,
        "dimension": dimension,
        "count": int(live.sum()),
        "elements": len(pin_ids),
        "space": SPACE,
        "M": M,
        "ef_construction": ef_construction,
        "ef": ef,
        "pin_ids_sha256": pin_ids_checksum(pin_ids[live]),
        "hnswlib_version": getattr(hnswlib, "__version__", "unknown"),
    }


def _readable(build: Path, manifest: dict[str, Any]) -> None:
    """Refuse to publish an index whose files do not serve what its manifest says (without
    hashing again, publish just did, and without loading the graph)."""
    verified_index_ids(IndexFiles.of(build), IndexManifest(**manifest), checksums=False)


def read_index_manifest(partition_dir: Path) -> IndexManifest:
    try:
        return IndexManifest(**read_artifact_manifest(partition_dir))
    except TypeError as exc:
        raise ArtifactIntegrityError(f"unreadable index manifest in {partition_dir}: {exc}") from exc


def load_index(partition_dir: Path) -> tuple[hnswlib.Index, np.ndarray, IndexManifest]:
    """Load the published index of a partition, verifying checksums against its manifest.

    Returns the pin id of every label (query results index it) and the manifest.
    """
    manifest = read_index_manifest(partition_dir)
    index, pin_ids = open_index_files(IndexFiles.of(partition_dir / "builds" / manifest.build_id), manifest)
    return index, pin_ids, manifest


def live_pin_ids(partition_dir: Path) -> np.ndarray:
    """The pins a partition's published index serves, after verifying the build."""
    manifest = read_index_manifest(partition_dir)
    pin_ids, live = verified_index_ids(IndexFiles.of(partition_dir / "builds" / manifest.build_id), manifest)
    return pin_ids[live]


def open_index_files(
    files: IndexFiles, manifest: IndexManifest, checksums: bool = True
) -> tuple[hnswlib.Index, np.ndarray]:
    """Verify an index's files against ``manifest``, open it and mark the day's deletions
    (``checksums=False``: the files were hashed a moment ago by the publish reading them back)."""
    pin_ids, _ = verified_index_ids(files, manifest, checksums)
    index = hnswlib.Index(space=manifest.space, dim=manifest.dimension)
    index.load_index(str(files.index), max_elements=max(manifest.elements, 1))
    if index.get_current_count() != manifest.elements:
        raise ArtifactIntegrityError(
            f"{files.index} holds {index.get_current_count()} items, manifest says {manifest.elements}"
        )
    for label in _deleted_at_load(files, manifest).tolist():
        index.mark_deleted(label)
    index.set_ef(manifest.ef)
    return index, pin_ids


def verified_index_ids(
    files: IndexFiles, manifest: IndexManifest, checksums: bool = True, graph: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The label -> pin id map and live mask of an index, checked against its manifest: the
    labels the graph file does not hold deleted, less ``deleted.npy``, are exactly the live ones
    (``graph=False`` skips reading the graph file for that: a serving snapshot linking a
    ``pin_index`` build that was checked so when it was published)."""
    named = [(files.index, INDEX_FILE), (files.pin_ids, IDS_FILE), (files.live, LIVE_FILE)]
    if DELETED_FILE in manifest.files:
        named.append((files.deleted, DELETED_FILE))
    for path, name in named:
        if checksums:
            check_file(path, manifest.files.get(name))
        elif not path.is_file():
            raise ArtifactIntegrityError(f"{path} is missing")
    pin_ids, live = np.load(files.pin_ids), np.load(files.live)
    if len(pin_ids) != manifest.elements or len(live) != manifest.elements or int(live.sum()) != manifest.count:
        raise ArtifactIntegrityError(f"{files.pin_ids} does not hold the {manifest.elements} labels of its manifest")
    if pin_ids_checksum(pin_ids[live]) != manifest.pin_ids_sha256:
        raise ArtifactIntegrityError(f"{files.pin_ids} does not hold the {manifest.count} live pins of its manifest")
    if not graph:
        return pin_ids, live
    try:
        saved = SavedGraph(files.index, manifest.dimension)
        if (
            saved.elements != manifest.elements
            or saved.labels.min(initial=0) < 0
            or saved.labels.max(initial=0) >= max(manifest.elements, 1)
        ):
            raise ValueError(f"it holds {saved.elements} elements, its manifest {manifest.elements} labels")
        served = np.ones(manifest.elements, dtype=bool)
        served[saved.labels[saved.deleted]] = False
    except (ValueError, OSError) as exc:
        raise ArtifactIntegrityError(f"{files.index} is not the graph of its manifest: {exc}") from exc
    deleted = _deleted_at_load(files, manifest)
    if not served[deleted].all():
        raise ArtifactIntegrityError(f"{files.deleted} deletes labels {files.index} already holds deleted")
    served[deleted] = False
    if not np.array_equal(served, live):
        raise ArtifactIntegrityError(
            f"{files.index} with {files.deleted} serves {int(served.sum())} labels, not the {manifest.count} "
            f"of {files.live}"
        )
    return pin_ids, live


def _deleted_at_load(files: IndexFiles, manifest: IndexManifest) -> np.ndarray:
    if DELETED_FILE not in manifest.files:
        return np.empty(0, np.int64)
    deleted = np.load(files.deleted)
    if deleted.dtype.kind not in "iu" or (len(deleted) and (deleted.min() < 0 or deleted.max() >= manifest.elements)):
        raise ArtifactIntegrityError(f"{files.deleted} does not list labels of its index")
    return deleted.astype(np.int64)
