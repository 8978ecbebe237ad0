"""The serving snapshot: one day's medoids paired with the index they were built with.

A snapshot is a self-contained, checksummed artifact (``core.artifacts``) per partition D:

| file | content |
|---|---|
| ``medoids.parquet`` | user_id, cluster_id, medoid_pin_id, importance, size, n_actions, kind (sorted by user, cluster) |
| ``centroids.npy`` | float32 mean embedding of each cluster, aligned with ``medoids.parquet`` (for the online update) |
| ``members.parquet`` | user_id, cluster_id, pin_id of every cluster member |
| ``seen.parquet`` | user_id, pin_id: every distinct action pin of the user's window (excluded from results) |
| ``popular.npy`` | the most acted-on pool pins of the window, for users with no interests (cold start) |
| ``catalog_ids.npy``, ``catalog_embeddings.npy`` | every catalog pin (sorted) and its unit embedding, memory-mapped |
| ``index.bin``, ``index_pin_ids.npy``, ``index_live.npy`` | the ``pin_index`` build of day D, hard-linked (immutable) |

The manifest records the index manifest it was paired with, so medoids are never served
against another day's index, and loading verifies every checksum before anything is served.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import hnswlib
import numpy as np
import pandas as pd

from ..core.artifacts import ArtifactIntegrityError, link_or_copy, publish, verified_build
from ..core.hnsw import IDS_FILE, INDEX_FILE, LIVE_FILE, IndexManifest, open_index_files, read_manifest

FORMAT_VERSION = 2  # 2: the index may carry tombstones (index_live.npy)
MEDOID_COLUMNS = ["user_id", "cluster_id", "medoid_pin_id", "importance", "size", "n_actions", "kind"]


def publish_snapshot(
    partition_dir: Path,
    *,
    partition: str,
    batch_time: pd.Timestamp,
    medoids: pd.DataFrame,
    members: pd.DataFrame,
    seen: pd.DataFrame,
    popular: np.ndarray,
    catalog_ids: np.ndarray,
    catalog_embeddings: np.ndarray,
    index_dir: Path,
    alpha: float,
    decay_lambda: float,
) -> dict:
    """Publish the snapshot of ``partition``; ``index_dir`` is that day's published pin_index."""
    index_manifest = read_manifest(index_dir)  # the linked files are verified against it before publishing
    if index_manifest.source_partition != partition:
        raise ArtifactIntegrityError(f"index in {index_dir} is for {index_manifest.source_partition}, not {partition}")
    medoids = medoids.sort_values(["user_id", "cluster_id"]).reset_index(drop=True)[MEDOID_COLUMNS]
    members = members.sort_values(["user_id", "cluster_id", "pin_id"]).reset_index(drop=True)
    order = np.argsort(catalog_ids, kind="stable")
    catalog_ids, catalog_embeddings = catalog_ids[order], catalog_embeddings[order]
    centroids = _centroids(medoids, members, catalog_ids, catalog_embeddings)

    def write(build: Path) -> dict:
        medoids.to_parquet(build / "medoids.parquet", index=False)
        members[["user_id", "cluster_id", "pin_id"]].to_parquet(build / "members.parquet", index=False)
        seen.sort_values(["user_id", "pin_id"])[["user_id", "pin_id"]].to_parquet(build / "seen.parquet", index=False)
        np.save(build / "centroids.npy", centroids)
        np.save(build / "popular.npy", np.asarray(popular, dtype=np.int64))
        np.save(build / "catalog_ids.npy", catalog_ids.astype(np.int64))
        np.save(build / "catalog_embeddings.npy", np.ascontiguousarray(catalog_embeddings, dtype=np.float32))
        index_build = index_dir / "builds" / index_manifest.build_id
        link_or_copy(index_build / INDEX_FILE, build / INDEX_FILE)
        link_or_copy(index_build / IDS_FILE, build / "index_pin_ids.npy")
        link_or_copy(index_build / LIVE_FILE, build / "index_live.npy")
        return {
            "format_version": FORMAT_VERSION,
            "partition": partition,
            "batch_time": batch_time.isoformat(),
            "alpha": alpha,
            "decay_lambda": decay_lambda,
            "users": int(medoids["user_id"].nunique()),
            "clusters": len(medoids),
            "index": index_manifest.to_dict(),
        }

    return publish(partition_dir, write, verify=lambda build, manifest: _open(build, manifest))


def _centroids(
    medoids: pd.DataFrame, members: pd.DataFrame, ids: np.ndarray, emb: np.ndarray, chunk_rows: int = 200_000
) -> np.ndarray:
    """Mean member embedding of each cluster, in chunks of whole clusters: memory stays at
    ``chunk_rows`` embeddings, not one per member (5M members x 256 would be 10 GB in float64)."""
    dim = emb.shape[1]
    if medoids.empty:
        return np.empty((0, dim), dtype=np.float32)
    keys = members[["user_id", "cluster_id"]].to_numpy()
    starts = np.flatnonzero(np.r_[True, np.any(keys[1:] != keys[:-1], axis=1)])
    if len(starts) != len(medoids):
        raise ValueError("every medoid row needs its cluster members")
    ends = np.r_[starts[1:], len(keys)]
    rows = np.searchsorted(ids, members["pin_id"].to_numpy())
    out = np.empty((len(starts), dim), dtype=np.float32)
    first = 0
    while first < len(starts):
        # whole clusters whose members fit the chunk (at least one cluster)
        last = max(first + 1, int(np.searchsorted(ends, starts[first] + chunk_rows, side="right")))
        lo, hi = starts[first], ends[last - 1]
        x = emb[rows[lo:hi]].astype(np.float64)
        sums = np.add.reduceat(x, starts[first:last] - lo, axis=0)
        out[first:last] = sums / (ends[first:last] - starts[first:last])[:, None]
        first = last
    return out


@dataclass
class ServingSnapshot:
    """A loaded, verified snapshot. Read-only: requests share it across threads."""

    partition: str
    version: str
    batch_time: pd.Timestamp
    alpha: float
    decay_lambda: float
    medoids: pd.DataFrame
    centroids: np.ndarray
    members: pd.DataFrame
    seen_user: np.ndarray
    seen_pin: np.ndarray
    popular: np.ndarray
    catalog_ids: np.ndarray
    catalog_embeddings: np.ndarray
    index: hnswlib.Index
    index_pin_ids: np.ndarray
    index_manifest: IndexManifest
    _medoid_users: np.ndarray = field(init=False, repr=False)
    _member_users: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # plain arrays: the request path never touches pandas
        self._medoid_users = self.medoids["user_id"].to_numpy()
        self.medoid_columns = {
            "cluster_id": self.medoids["cluster_id"].to_numpy(),
            "medoid_pin_id": self.medoids["medoid_pin_id"].to_numpy(),
            "importance": self.medoids["importance"].to_numpy(),
            "size": self.medoids["size"].to_numpy(),
            "kind": self.medoids["kind"].to_numpy(dtype=object),
        }
        self._member_users = self.members["user_id"].to_numpy()
        self._member_clusters = self.members["cluster_id"].to_numpy()
        self._member_pins = self.members["pin_id"].to_numpy()

    def user_rows(self, user_id: int) -> slice:
        """Rows of ``medoids``/``centroids`` that belong to ``user_id`` (empty if none)."""
        return _block(self._medoid_users, user_id)

    def user_members(self, user_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(cluster_id, pin_id) of every member of the user's clusters."""
        block = _block(self._member_users, user_id)
        return self._member_clusters[block], self._member_pins[block]

    def seen(self, user_id: int) -> np.ndarray:
        return self.seen_pin[_block(self.seen_user, user_id)]

    def catalog_rows(self, pin_ids: np.ndarray) -> np.ndarray:
        """Row of each pin in the catalog arrays, -1 where the pin is unknown."""
        pin_ids = np.asarray(pin_ids, dtype=np.int64)
        rows = np.searchsorted(self.catalog_ids, pin_ids)
        rows = np.minimum(rows, len(self.catalog_ids) - 1)
        return np.where(self.catalog_ids[rows] == pin_ids, rows, -1) if len(self.catalog_ids) else np.full(len(pin_ids), -1)

    def embeddings(self, pin_ids: np.ndarray) -> np.ndarray:
        rows = self.catalog_rows(pin_ids)
        if np.any(rows < 0):
            raise KeyError(f"pins not in the catalog: {np.asarray(pin_ids)[rows < 0][:5].tolist()}")
        return np.asarray(self.catalog_embeddings[rows], dtype=np.float32)


def _block(sorted_keys: np.ndarray, key: int) -> slice:
    return slice(int(np.searchsorted(sorted_keys, key, "left")), int(np.searchsorted(sorted_keys, key, "right")))


def load_snapshot(partition_dir: Path) -> ServingSnapshot:
    """Load and verify the published snapshot of one partition; raises ArtifactIntegrityError."""
    build, manifest = verified_build(partition_dir)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactIntegrityError(f"{partition_dir}: snapshot format {manifest.get('format_version')} is not {FORMAT_VERSION}")
    return _open(build, manifest)


def _open(build: Path, manifest: dict) -> ServingSnapshot:
    try:
        index_manifest = IndexManifest(**manifest["index"])
        if index_manifest.source_partition != manifest["partition"]:
            raise ArtifactIntegrityError(f"{build}: index of {index_manifest.source_partition} in a snapshot of {manifest['partition']}")
        # the linked files are verified against the index manifest the snapshot was paired with
        index, index_pin_ids = open_index_files(
            build / INDEX_FILE, build / "index_pin_ids.npy", build / "index_live.npy", index_manifest
        )
        medoids = pd.read_parquet(build / "medoids.parquet")
        centroids = np.load(build / "centroids.npy")
        if len(centroids) != len(medoids):
            raise ArtifactIntegrityError(f"{build}: {len(centroids)} centroids for {len(medoids)} medoids")
        seen = pd.read_parquet(build / "seen.parquet")
        return ServingSnapshot(
            partition=manifest["partition"],
            version=manifest["build_id"],
            batch_time=pd.Timestamp(manifest["batch_time"]),
            alpha=float(manifest["alpha"]),
            decay_lambda=float(manifest["decay_lambda"]),
            medoids=medoids,
            centroids=centroids,
            members=pd.read_parquet(build / "members.parquet"),
            seen_user=seen["user_id"].to_numpy(),
            seen_pin=seen["pin_id"].to_numpy(),
            popular=np.load(build / "popular.npy"),
            catalog_ids=np.load(build / "catalog_ids.npy"),
            catalog_embeddings=np.load(build / "catalog_embeddings.npy", mmap_mode="r"),
            index=index,
            index_pin_ids=index_pin_ids,
            index_manifest=index_manifest,
        )
    except ArtifactIntegrityError:
        raise
    except Exception as exc:  # any unreadable part refuses the whole snapshot
        raise ArtifactIntegrityError(f"{build}: cannot be loaded: {type(exc).__name__}: {exc}") from exc

