"""The HNSW index artifact: build, publish atomically with a manifest, load and verify.

Labels inside hnswlib are row numbers 0..n-1; ``pin_ids.npy`` maps them to pin ids, so any
int64 pin id (negative included) can be indexed. An index may carry deleted labels
(tombstones, never returned by a query): the day's index is the pool graph with the pins
not in that day's pool marked deleted. ``live.npy`` says which labels are live; the
manifest's ``count`` and ``pin_ids_sha256`` describe the live pins only. Publishing follows
``core.artifacts``: a reader only ever sees a complete, checksum-verified build.
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

INDEX_FILE = "index.bin"
IDS_FILE = "pin_ids.npy"
LIVE_FILE = "live.npy"
SPACE = "ip"  # inner product on unit vectors = cosine; hnswlib distance is 1 - cosine


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
    live: np.ndarray | None = None,
    source_partition: str,
    M: int,
    ef_construction: int,
    ef: int,
) -> IndexManifest:
    """Write the build aside, verify it loads, then swap the manifest in atomically.

    ``pin_ids`` maps every label to its pin; ``live`` (default: all) marks the labels not
    deleted in ``index``.
    """
    pin_ids = np.asarray(pin_ids, dtype=np.int64)
    live = np.ones(len(pin_ids), bool) if live is None else np.asarray(live, dtype=bool)

    def write(build_dir: Path) -> dict:
        index.save_index(str(build_dir / INDEX_FILE))
        np.save(build_dir / IDS_FILE, pin_ids)
        np.save(build_dir / LIVE_FILE, live)
        return {
            "source_partition": source_partition,
            "dimension": int(index.dim),
            "count": int(live.sum()),
            "elements": len(pin_ids),
            "space": SPACE,
            "M": M,
            "ef_construction": ef_construction,
            "ef": ef,
            "pin_ids_sha256": pin_ids_checksum(pin_ids[live]),
            "hnswlib_version": getattr(hnswlib, "__version__", "unknown"),
        }

    manifest = publish(
        partition_dir,
        write,
        verify=_readable,
    )
    return IndexManifest(**manifest)


def _readable(build: Path, manifest: dict[str, Any]) -> None:
    """Refuse to publish an index that cannot be opened as its manifest describes."""
    open_index_files(
        build / INDEX_FILE, build / IDS_FILE, build / LIVE_FILE, IndexManifest(**manifest), checksums=False
    )


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
    build_dir = partition_dir / "builds" / manifest.build_id
    index, pin_ids = open_index_files(build_dir / INDEX_FILE, build_dir / IDS_FILE, build_dir / LIVE_FILE, manifest)
    return index, pin_ids, manifest


def live_pin_ids(partition_dir: Path) -> np.ndarray:
    """The pins a partition's published index can return, after verifying the build."""
    manifest = read_index_manifest(partition_dir)
    build_dir = partition_dir / "builds" / manifest.build_id
    pin_ids, live = verified_index_ids(build_dir / INDEX_FILE, build_dir / IDS_FILE, build_dir / LIVE_FILE, manifest)
    return pin_ids[live]


def open_index_files(
    index_path: Path, ids_path: Path, live_path: Path, manifest: IndexManifest, checksums: bool = True
) -> tuple[hnswlib.Index, np.ndarray]:
    """Verify an index file and its label files against ``manifest`` and open them
    (``checksums=False``: the files were hashed a moment ago by the publish reading them back)."""
    pin_ids, _ = verified_index_ids(index_path, ids_path, live_path, manifest, checksums)
    index = hnswlib.Index(space=manifest.space, dim=manifest.dimension)
    index.load_index(str(index_path), max_elements=max(manifest.elements, 1))
    if index.get_current_count() != manifest.elements:
        raise ArtifactIntegrityError(
            f"{index_path} holds {index.get_current_count()} items, manifest says {manifest.elements}"
        )
    index.set_ef(manifest.ef)
    return index, pin_ids


def verified_index_ids(
    index_path: Path, ids_path: Path, live_path: Path, manifest: IndexManifest, checksums: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The label -> pin id map and live mask of an index, checked against its manifest."""
    for path, name in ((index_path, INDEX_FILE), (ids_path, IDS_FILE), (live_path, LIVE_FILE)):
        if checksums:
            check_file(path, manifest.files.get(name))
        elif not path.is_file():
            raise ArtifactIntegrityError(f"{path} is missing")
    pin_ids, live = np.load(ids_path), np.load(live_path)
    if len(pin_ids) != manifest.elements or len(live) != manifest.elements or int(live.sum()) != manifest.count:
        raise ArtifactIntegrityError(f"{ids_path} does not hold the {manifest.elements} labels of its manifest")
    if pin_ids_checksum(pin_ids[live]) != manifest.pin_ids_sha256:
        raise ArtifactIntegrityError(f"{ids_path} does not hold the {manifest.count} live pins of its manifest")
    return pin_ids, live
