"""The HNSW index artifact: build, publish atomically with a manifest, load and verify.

Labels inside hnswlib are row numbers 0..n-1; ``pin_ids.npy`` maps them to pin ids, so any
int64 pin id (negative included) can be indexed. Publishing follows ``core.artifacts``:
a reader only ever sees a complete, checksum-verified build.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import hnswlib
import numpy as np

from .artifacts import ArtifactIntegrityError, publish, sha256
from .artifacts import read_manifest as read_artifact_manifest

INDEX_FILE = "index.bin"
IDS_FILE = "pin_ids.npy"
SPACE = "ip"  # inner product on unit vectors = cosine; hnswlib distance is 1 - cosine

IndexIntegrityError = ArtifactIntegrityError


@dataclass(frozen=True)
class IndexManifest:
    source_partition: str
    dimension: int
    count: int
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


def build_index(
    embeddings: np.ndarray, *, M: int, ef_construction: int, ef: int, num_threads: int = -1, seed: int = 100
) -> hnswlib.Index:
    """An inner-product HNSW index over unit rows, labelled by row number."""
    n, dim = embeddings.shape
    index = hnswlib.Index(space=SPACE, dim=dim)
    index.init_index(max_elements=max(n, 1), ef_construction=ef_construction, M=M, random_seed=seed)
    index.set_num_threads(num_threads)
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
    """Write the build aside, verify it loads, then swap the manifest in atomically."""

    def write(build_dir: Path) -> dict:
        index.save_index(str(build_dir / INDEX_FILE))
        np.save(build_dir / IDS_FILE, np.asarray(pin_ids, dtype=np.int64))
        return {
            "source_partition": source_partition,
            "dimension": int(index.dim),
            "count": int(len(pin_ids)),
            "space": SPACE,
            "M": M,
            "ef_construction": ef_construction,
            "ef": ef,
            "pin_ids_sha256": pin_ids_checksum(pin_ids),
            "hnswlib_version": getattr(hnswlib, "__version__", "unknown"),
        }

    manifest = publish(
        partition_dir, write, verify=lambda d, m: open_index_files(d / INDEX_FILE, d / IDS_FILE, IndexManifest(**m))
    )
    return IndexManifest(**manifest)


def read_manifest(partition_dir: Path) -> IndexManifest:
    try:
        return IndexManifest(**read_artifact_manifest(partition_dir))
    except TypeError as exc:
        raise IndexIntegrityError(f"unreadable index manifest in {partition_dir}: {exc}") from exc


def load_index(partition_dir: Path) -> tuple[hnswlib.Index, np.ndarray, IndexManifest]:
    """Load the published index of a partition, verifying checksums against its manifest."""
    manifest = read_manifest(partition_dir)
    build_dir = partition_dir / "builds" / manifest.build_id
    index, pin_ids = open_index_files(build_dir / INDEX_FILE, build_dir / IDS_FILE, manifest)
    return index, pin_ids, manifest


def open_index_files(index_path: Path, ids_path: Path, manifest: IndexManifest) -> tuple[hnswlib.Index, np.ndarray]:
    """Verify an index file and its pin-id file against ``manifest`` and open them."""
    for path, name in ((index_path, INDEX_FILE), (ids_path, IDS_FILE)):
        if not path.is_file():
            raise IndexIntegrityError(f"{path} is missing")
        if sha256(path) != manifest.files[name]:
            raise IndexIntegrityError(f"{path} does not match the checksum in its manifest")
    pin_ids = np.load(ids_path)
    if len(pin_ids) != manifest.count or pin_ids_checksum(pin_ids) != manifest.pin_ids_sha256:
        raise IndexIntegrityError(f"{ids_path} does not hold the {manifest.count} pins of its manifest")
    index = hnswlib.Index(space=manifest.space, dim=manifest.dimension)
    index.load_index(str(index_path), max_elements=max(manifest.count, 1))
    if index.get_current_count() != manifest.count:
        raise IndexIntegrityError(f"{index_path} holds {index.get_current_count()} items, manifest says {manifest.count}")
    index.set_ef(manifest.ef)
    return index, pin_ids
