"""The serving snapshot: one day's medoids paired with the index they were built with.

A snapshot is a self-contained, checksummed artifact (``core.artifacts``) per partition D:

| file | content |
|---|---|
| ``medoids.parquet`` | user_id, cluster_id, medoid_pin_id, importance, size, n_actions, kind (sorted by user, cluster) |
| ``centroids.npy`` | float32 mean embedding of each cluster, aligned with ``medoids.parquet`` (for the online update) |
| ``members.parquet`` | user_id, cluster_id, pin_id of every cluster member |
| ``seen.parquet`` | user_id, pin_id: every distinct action pin of the user's window (excluded from results) |
| ``popular.npy`` | the most acted-on pool pins of the window, for users with no interests (cold start) |
| ``decay_users.npy``, ``decay_sums.npy`` | each user's decay-weighted sum of action-pin embeddings at the batch time (``core.decay``): the ``decay_average`` arm |
| ``catalog_*.npy`` | every catalog pin's unit embedding, as a base hard-linked from an earlier snapshot plus the day's delta (``serving.catalog``), memory-mapped |
| ``index.bin``, ``index_pin_ids.npy``, ``index_live.npy``, ``index_deleted.npy`` | the ``pin_index`` build of day D, hard-linked (immutable) |

The manifest records the index manifest it was paired with, so medoids are never served
against another day's index, and loading verifies every checksum before anything is served.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import hnswlib
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ..core.artifacts import ArtifactIntegrityError, NpyRows, publish, verified_build
from ..core.decay import decay_weights
from ..core.hnsw import (
    DELETED_FILE,
    IDS_FILE,
    INDEX_FILE,
    LIVE_FILE,
    IndexFiles,
    IndexManifest,
    open_index_files,
    read_index_manifest,
    verified_index_ids,
)
from ..core.window_sums import first_of_pairs, window_sum_blocks
from .catalog import CatalogSource, CatalogView, find_base, write_catalog
from .settings import ServingParams

FORMAT_VERSION = 4  # 2: the index may carry tombstones (index_live.npy); 3: catalog as base + delta; 4: decay sums
INDEX_PREFIX = "index_"  # the pin_index build's files, linked in beside the snapshot's own
MEDOID_COLUMNS = ["user_id", "cluster_id", "medoid_pin_id", "importance", "size", "n_actions", "kind"]


def publish_snapshot(
    partition_dir: Path,
    *,
    partition: str,
    batch_time: pd.Timestamp,
    medoids: pd.DataFrame,
    members: pd.DataFrame,
    actions: pd.DataFrame,
    popular: np.ndarray,
    catalog: CatalogSource,
    index_dir: Path,
    alpha: float,
    decay_lambda: float,
    lineage: dict | None = None,
    serving: dict | None = None,
    threads: int = 0,
) -> dict:
    """Publish the snapshot of ``partition``; ``index_dir`` is that day's published pin_index;
    ``lineage``: the versions of what it was built from (``guards``), kept in the manifest;
    ``serving``: the model's serving parameters (``serving.settings.ServingParams``);
    ``actions``: the window's actions (user_id, pin_id, ts): the seen pins and the decay sums;
    ``threads``: for the centroids and decay sums (0: one per core).

    Immutable files of other builds (the day's index, the catalog base of an earlier snapshot)
    are hard-linked with their recorded checksums; every file written here is hashed once.
    """
    index_manifest = read_index_manifest(index_dir)
    if index_manifest.source_partition != partition:
        raise ArtifactIntegrityError(f"index in {index_dir} is for {index_manifest.source_partition}, not {partition}")
    if index_manifest.dimension != catalog.dimension:
        raise ArtifactIntegrityError(
            f"index in {index_dir} has dimension {index_manifest.dimension}, the catalog "
            f"{catalog.dimension}: materialize candidate_pool and pin_index again"
        )
    if lineage is not None and lineage.get("pin_index") not in (None, index_manifest.build_id):
        raise ArtifactIntegrityError(
            f"index in {index_dir} is build {index_manifest.build_id}, not the recorded {lineage['pin_index']}"
        )
    medoids = _sorted(medoids, ["user_id", "cluster_id"])[MEDOID_COLUMNS]
    members = _sorted(members, ["user_id", "cluster_id", "pin_id"])
    actions = _sorted(actions, ["user_id", "pin_id", "ts"])
    users, pins = actions["user_id"].to_numpy(), actions["pin_id"].to_numpy()
    first = first_of_pairs(users, pins)
    seen = pd.DataFrame({"user_id": users[first], "pin_id": pins[first]})
    base = find_base(partition_dir.parent, catalog.hash_kind, catalog.dimension)

    def write(build: Path) -> tuple[dict, dict[str, tuple[Path, str]]]:
        index_build = index_dir / "builds" / index_manifest.build_id
        linked = {
            target: (index_build / name, index_manifest.files[name])
            for target, name in (
                (INDEX_FILE, INDEX_FILE),
                (f"{INDEX_PREFIX}{IDS_FILE}", IDS_FILE),
                (f"{INDEX_PREFIX}{LIVE_FILE}", LIVE_FILE),
                (f"{INDEX_PREFIX}{DELETED_FILE}", DELETED_FILE),
            )
            if name in index_manifest.files
        }
        catalog_section, base_files = write_catalog(build, catalog, base, origin=f"{partition}/{build.name}")
        linked.update(base_files)
        view = CatalogView(build, elsewhere=base_files)
        medoids.to_parquet(build / "medoids.parquet", index=False)
        members[["user_id", "cluster_id", "pin_id"]].to_parquet(build / "members.parquet", index=False)
        seen.to_parquet(build / "seen.parquet", index=False)
        np.save(build / "popular.npy", np.asarray(popular, dtype=np.int64))
        _write_sums(build, medoids, members, actions, batch_time, decay_lambda, view, threads or os.cpu_count() or 1)
        fields = {
            "format_version": FORMAT_VERSION,
            "partition": partition,
            "batch_time": batch_time.isoformat(),
            "alpha": alpha,
            "decay_lambda": decay_lambda,
            "users": int(medoids["user_id"].nunique()),
            "clusters": len(medoids),
            "index": index_manifest.to_dict(),
            "catalog": catalog_section,
            "lineage": lineage or {},
            "serving": serving or {},
        }
        return fields, linked

    return publish(partition_dir, write, verify=_readable)


def _readable(build: Path, manifest: dict) -> None:
    """Read the new build back before publishing it, without hashing again (publish just did) and
    without loading the HNSW graph: it is the pin_index build, verified when that was published."""
    try:
        index_manifest = IndexManifest(**manifest["index"])
        pin_ids, _ = verified_index_ids(
            IndexFiles.of(build, INDEX_PREFIX), index_manifest, checksums=False, graph=False
        )
        clusters = pq.read_metadata(build / "medoids.parquet").num_rows
        if np.load(build / "centroids.npy", mmap_mode="r").shape[0] != clusters:
            raise ArtifactIntegrityError(f"{build}: centroids do not line up with medoids")
        for name in ("members.parquet", "seen.parquet"):
            pq.read_metadata(build / name)
        np.load(build / "popular.npy")
        if np.load(build / "decay_sums.npy", mmap_mode="r").shape[0] != np.load(build / "decay_users.npy").shape[0]:
            raise ArtifactIntegrityError(f"{build}: decay sums do not line up with their users")
        CatalogView(build)
    except ArtifactIntegrityError:
        raise
    except Exception as exc:
        raise ArtifactIntegrityError(f"{build}: cannot be read back: {type(exc).__name__}: {exc}") from exc


def _write_sums(
    build: Path,
    medoids: pd.DataFrame,
    members: pd.DataFrame,
    actions: pd.DataFrame,
    batch_time: pd.Timestamp,
    decay_lambda: float,
    catalog: CatalogView,
    threads: int,
) -> None:
    """centroids.npy (aligned with the medoids) and the decay sums at the batch time, written
    block by block in one pass over the window (``core.window_sums``, on ``threads`` threads):
    never every sum at once."""
    users, blocks = window_sum_blocks(
        actions["user_id"].to_numpy(),
        actions["pin_id"].to_numpy(),
        _decay_weights(actions["ts"], batch_time, decay_lambda),
        members["user_id"].to_numpy(),
        members["cluster_id"].to_numpy(),
        members["pin_id"].to_numpy(),
        catalog.embeddings,
        threads=threads,
    )
    np.save(build / "decay_users.npy", users)
    with (
        NpyRows(build / "centroids.npy", (len(medoids), catalog.dimension), np.float32) as centroids,
        NpyRows(build / "decay_sums.npy", (len(users), catalog.dimension), np.float32) as sums,
    ):
        for means, decay in blocks:
            centroids.write(means)
            sums.write(decay)


def _decay_weights(ts: pd.Series, batch_time: pd.Timestamp, decay_lambda: float) -> np.ndarray:
    """exp(-lambda * age in days) of each action at the batch time."""
    age = (np.datetime64(batch_time.to_datetime64(), "us") - ts.to_numpy(dtype="datetime64[us]")) / np.timedelta64(
        86_400_000_000, "us"
    )
    return decay_weights(age, decay_lambda)


def _sorted(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """``frame`` sorted by ``keys``; the warehouse returns it sorted already, which costs one scan to see."""
    columns = [frame[k].to_numpy() for k in keys]
    if len(frame) < 2:
        return frame.reset_index(drop=True)
    later = np.zeros(len(frame) - 1, dtype=bool)  # row i+1 > row i on the keys so far
    equal = np.ones(len(frame) - 1, dtype=bool)
    for column in columns:
        later |= equal & (column[1:] > column[:-1])
        equal &= column[1:] == column[:-1]
    if np.all(later | equal):
        return frame.reset_index(drop=True)
    return frame.sort_values(keys, kind="stable").reset_index(drop=True)


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
    decay_users: np.ndarray
    decay_sums: np.ndarray
    catalog: CatalogView
    index: hnswlib.Index
    index_pin_ids: np.ndarray
    index_manifest: IndexManifest
    serving: ServingParams = field(default_factory=ServingParams)
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

    def decay_sum(self, user_id: int) -> np.ndarray | None:
        """The user's decay-weighted sum at the batch time (``core.decay``), or None."""
        row = int(np.searchsorted(self.decay_users, user_id))
        if row < self.decay_users.size and self.decay_users[row] == user_id:
            return self.decay_sums[row]
        return None

    def seen(self, user_id: int) -> np.ndarray:
        return self.seen_pin[_block(self.seen_user, user_id)]

    def in_catalog(self, pin_ids: np.ndarray) -> np.ndarray:
        """Whether each pin is in the catalog of the snapshot's day."""
        return self.catalog.contains(pin_ids)

    def embeddings(self, pin_ids: np.ndarray) -> np.ndarray:
        """Unit float32 embeddings of catalog pins; KeyError for unknown pins."""
        return self.catalog.embeddings(pin_ids)


def _block(sorted_keys: np.ndarray, key: int) -> slice:
    return slice(int(np.searchsorted(sorted_keys, key, "left")), int(np.searchsorted(sorted_keys, key, "right")))


def load_snapshot(partition_dir: Path) -> ServingSnapshot:
    """Load and verify the published snapshot of one partition; raises ArtifactIntegrityError."""
    build, manifest = verified_build(partition_dir)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactIntegrityError(
            f"{partition_dir}: snapshot format {manifest.get('format_version')} is not {FORMAT_VERSION}"
        )
    return _open(build, manifest)


def _open(build: Path, manifest: dict) -> ServingSnapshot:
    try:
        index_manifest = IndexManifest(**manifest["index"])
        if index_manifest.source_partition != manifest["partition"]:
            raise ArtifactIntegrityError(
                f"{build}: index of {index_manifest.source_partition} in a snapshot of {manifest['partition']}"
            )
        if build.parent.parent.name != manifest["partition"]:
            raise ArtifactIntegrityError(f"{build}: a snapshot of {manifest['partition']} in the folder of another day")
        lineage = manifest.get("lineage") or {}
        if lineage.get("pin_index") not in (None, index_manifest.build_id):
            raise ArtifactIntegrityError(
                f"{build}: paired with index build {index_manifest.build_id}, built from {lineage['pin_index']}"
            )
        # the linked files are verified against the index manifest the snapshot was paired with
        index, index_pin_ids = open_index_files(IndexFiles.of(build, INDEX_PREFIX), index_manifest)
        medoids = pd.read_parquet(build / "medoids.parquet")
        centroids = np.load(build / "centroids.npy")
        if len(centroids) != len(medoids):
            raise ArtifactIntegrityError(f"{build}: {len(centroids)} centroids for {len(medoids)} medoids")
        catalog = CatalogView(build)
        dims = {"index": index_manifest.dimension, "catalog": catalog.dimension, "centroids": centroids.shape[1]}
        if index.dim != index_manifest.dimension or len(set(dims.values())) > 1:
            raise ArtifactIntegrityError(f"{build}: its parts disagree on the embedding dimension {dims}")
        seen = pd.read_parquet(build / "seen.parquet")
        decay_users, decay = np.load(build / "decay_users.npy"), np.load(build / "decay_sums.npy")
        if decay.shape[0] != decay_users.shape[0] or (decay.size and decay.shape[1] != catalog.dimension):
            raise ArtifactIntegrityError(f"{build}: decay sums {decay.shape} for {decay_users.shape[0]} users")
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
            decay_users=decay_users,
            decay_sums=decay,
            catalog=catalog,
            index=index,
            index_pin_ids=index_pin_ids,
            index_manifest=index_manifest,
            serving=ServingParams.from_manifest(manifest.get("serving")),
        )
    except ArtifactIntegrityError:
        raise
    except Exception as exc:  # any unreadable part refuses the whole snapshot
        raise ArtifactIntegrityError(f"{build}: cannot be loaded: {type(exc).__name__}: {exc}") from exc
