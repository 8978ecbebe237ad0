"""The HNSW index artifact: build, publish atomically with a manifest, load and verify.

Layout of one index partition directory::

    <partition_dir>/manifest.json        # the published pointer, replaced atomically
    <partition_dir>/builds/<build_id>/index.bin
    <partition_dir>/builds/<build_id>/pin_ids.npy

Labels inside hnswlib are row numbers 0..n-1; ``pin_ids.npy`` maps them to pin ids, so
any int64 pin id (negative included) can be indexed. A reader only ever follows
``manifest.json``, which is written last, so it never sees a half-written build.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import hnswlib
import numpy as np

MANIFEST = "manifest.json"
INDEX_FILE = "index.bin"
IDS_FILE = "pin_ids.npy"
SPACE = "ip"  # inner product on unit vectors = cosine; hnswlib distance is 1 - cosine


class IndexIntegrityError(RuntimeError):
    """A published index does not match its manifest."""


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

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


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
    build_id = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    build_dir = partition_dir / "builds" / build_id
    build_dir.mkdir(parents=True)
    index.save_index(str(build_dir / INDEX_FILE))
    np.save(build_dir / IDS_FILE, np.asarray(pin_ids, dtype=np.int64))
    for name in (INDEX_FILE, IDS_FILE):
        _fsync(build_dir / name)
    manifest = IndexManifest(
        source_partition=source_partition,
        dimension=int(index.dim),
        count=int(len(pin_ids)),
        space=SPACE,
        M=M,
        ef_construction=ef_construction,
        ef=ef,
        build_id=build_id,
        pin_ids_sha256=pin_ids_checksum(pin_ids),
        files={name: _sha256(build_dir / name) for name in (INDEX_FILE, IDS_FILE)},
        built_at=datetime.now(timezone.utc).isoformat(),
        hnswlib_version=getattr(hnswlib, "__version__", "unknown"),
    )
    _open_verified(build_dir, manifest)  # refuse to publish what cannot be read back
    tmp = partition_dir / f".{MANIFEST}.{build_id}.tmp"
    tmp.write_text(manifest.to_json())
    _fsync(tmp)
    os.replace(tmp, partition_dir / MANIFEST)
    _remove_stale_builds(partition_dir, keep=build_id)
    return manifest


def read_manifest(partition_dir: Path) -> IndexManifest:
    path = partition_dir / MANIFEST
    try:
        return IndexManifest(**json.loads(path.read_text()))
    except FileNotFoundError:
        raise IndexIntegrityError(f"no published index: {path} does not exist") from None
    except (json.JSONDecodeError, TypeError) as exc:
        raise IndexIntegrityError(f"unreadable index manifest {path}: {exc}") from exc


def load_index(partition_dir: Path) -> tuple[hnswlib.Index, np.ndarray, IndexManifest]:
    """Load the published index of a partition, verifying checksums against its manifest."""
    manifest = read_manifest(partition_dir)
    index, pin_ids = _open_verified(partition_dir / "builds" / manifest.build_id, manifest)
    index.set_ef(manifest.ef)
    return index, pin_ids, manifest


def _open_verified(build_dir: Path, manifest: IndexManifest) -> tuple[hnswlib.Index, np.ndarray]:
    for name, expected in manifest.files.items():
        path = build_dir / name
        if not path.exists():
            raise IndexIntegrityError(f"{path} is missing")
        if _sha256(path) != expected:
            raise IndexIntegrityError(f"{path} does not match the checksum in its manifest")
    pin_ids = np.load(build_dir / IDS_FILE)
    if len(pin_ids) != manifest.count or pin_ids_checksum(pin_ids) != manifest.pin_ids_sha256:
        raise IndexIntegrityError(f"{build_dir / IDS_FILE} does not hold the {manifest.count} pins of its manifest")
    index = hnswlib.Index(space=manifest.space, dim=manifest.dimension)
    index.load_index(str(build_dir / INDEX_FILE), max_elements=max(manifest.count, 1))
    if index.get_current_count() != manifest.count:
        raise IndexIntegrityError(
            f"{build_dir / INDEX_FILE} holds {index.get_current_count()} items, manifest says {manifest.count}"
        )
    return index, pin_ids


def _remove_stale_builds(partition_dir: Path, keep: str) -> None:
    for build in (partition_dir / "builds").iterdir():
        if build.name != keep:
            shutil.rmtree(build, ignore_errors=True)
    for tmp in partition_dir.glob(f".{MANIFEST}.*.tmp"):
        tmp.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())
