"""The catalog's embeddings inside a serving snapshot: a base shared across days, plus a delta.

Every snapshot must hold every catalog pin's embedding (the online path embeds whatever a user
acts on today), but the catalog barely changes from one day to the next. So a snapshot holds

| file | content |
|---|---|
| ``catalog_base_ids.npy``, ``catalog_base_hashes.npy``, ``catalog_base_embeddings.npy`` | a base: sorted pin ids, a 64-bit hash of each embedding, the float32 embeddings (memory-mapped) |
| ``catalog_base_live.npy`` | which base pins are still in today's catalog with the same embedding |
| ``catalog_delta_ids.npy``, ``catalog_delta_embeddings.npy`` | pins new or changed since the base (sorted) |

The base files are hard-linked from the newest earlier snapshot and their checksums are taken
from its manifest (immutable published files are never read again to publish); only the delta
is written. A new base is written when there is no usable earlier one, the dimension or the
hash function changed, or delta and dead base pins would pass ``REBASE_SHARE`` of the base.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ..core.artifacts import ArtifactIntegrityError, check_file, read_manifest, save_npy_rows
from ..core.id_rows import IdRows
from ..core.pool_graph import fingerprints

REBASE_SHARE = 0.10
BASE_FILES = ("catalog_base_ids.npy", "catalog_base_hashes.npy", "catalog_base_embeddings.npy")
LIVE_FILE, DELTA_IDS, DELTA_EMBEDDINGS = (
    "catalog_base_live.npy",
    "catalog_delta_ids.npy",
    "catalog_delta_embeddings.npy",
)


class CatalogSource(Protocol):
    """Where a snapshot's catalog comes from (the warehouse, or arrays in tests and benchmarks)."""

    hash_kind: str  # hashes of two sources are comparable only when their kinds are equal
    dimension: int

    def fingerprints(self) -> tuple[np.ndarray, np.ndarray]:
        """Every catalog pin id (sorted) and the uint64 hash of its embedding."""

    def rows(self, pin_ids: np.ndarray | None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(ids, hashes, float32 embeddings) chunks, sorted by id, of ``pin_ids`` (None: every pin)."""


class ArrayCatalog:
    """A catalog held in memory: sorted ids and their embeddings."""

    hash_kind = "blake2b-64"  # core.pool_graph.fingerprints

    def __init__(self, ids: np.ndarray, embeddings: np.ndarray) -> None:
        order = np.argsort(ids, kind="stable")
        self.ids, self.embeddings = np.asarray(ids, dtype=np.int64)[order], np.asarray(embeddings, np.float32)[order]
        self.dimension = int(self.embeddings.shape[1])

    def fingerprints(self) -> tuple[np.ndarray, np.ndarray]:
        return self.ids, fingerprints(self.embeddings)

    def rows(self, pin_ids: np.ndarray | None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        picked = slice(None) if pin_ids is None else np.searchsorted(self.ids, np.sort(pin_ids))
        x = self.embeddings[picked]
        yield self.ids[picked], fingerprints(x), x


@dataclass
class Base:
    """An earlier snapshot's base: its files and their recorded checksums."""

    build: Path
    ids: np.ndarray
    hashes: np.ndarray
    checksums: dict[str, str]
    origin: str


def find_base(snapshots_root: Path, hash_kind: str, dimension: int) -> Base | None:
    """The base of the newest published snapshot under ``snapshots_root`` that can be reused."""
    for partition_dir in sorted(snapshots_root.glob("*"), reverse=True):
        try:
            manifest = read_manifest(partition_dir)
            catalog = manifest["catalog"]
            if catalog["hash_kind"] != hash_kind or catalog["dimension"] != dimension:
                continue
            build = partition_dir / "builds" / manifest["build_id"]
            checksums = {name: manifest["files"][name] for name in BASE_FILES}
            for name in BASE_FILES[:2]:  # small; the embeddings' checksum is carried over unread
                check_file(build / name, checksums[name])
            if not (build / BASE_FILES[2]).is_file():
                continue
            return Base(
                build, np.load(build / BASE_FILES[0]), np.load(build / BASE_FILES[1]), checksums, catalog["base_origin"]
            )
        except (ArtifactIntegrityError, KeyError, TypeError, OSError, ValueError):
            continue
    return None


def write_catalog(
    build: Path, source: CatalogSource, base: Base | None, origin: str
) -> tuple[dict, dict[str, tuple[Path, str]]]:
    """Write the catalog files of a new build; returns the manifest section and the base files
    to hard-link into the build with their known checksums."""
    ids, hashes = source.fingerprints()
    if base is not None:
        pos = np.minimum(np.searchsorted(base.ids, ids), max(len(base.ids) - 1, 0))
        same = (base.ids[pos] == ids) & (base.hashes[pos] == hashes) if len(base.ids) else np.zeros(len(ids), bool)
        live = np.zeros(len(base.ids), dtype=bool)
        live[pos[same]] = True
        delta, delta_hashes = ids[~same], hashes[~same]
        if len(delta) + int((~live).sum()) > REBASE_SHARE * len(base.ids):
            base = None
    if base is None:
        base_ids, base_hashes = _write_rows(build, source, None, BASE_FILES[2], expected=(ids, hashes))
        np.save(build / BASE_FILES[0], base_ids)
        np.save(build / BASE_FILES[1], base_hashes)
        live, linked, origin_of_base = np.ones(len(base_ids), bool), {}, origin
        delta, delta_hashes = np.empty(0, np.int64), np.empty(0, np.uint64)
    else:
        linked = {name: (base.build / name, base.checksums[name]) for name in BASE_FILES}
        origin_of_base = base.origin
    delta_ids, _ = _write_rows(build, source, delta, DELTA_EMBEDDINGS, expected=(delta, delta_hashes))
    np.save(build / DELTA_IDS, delta_ids)
    np.save(build / LIVE_FILE, live)
    section = {
        "hash_kind": source.hash_kind,
        "dimension": source.dimension,
        "pins": len(ids),
        "base_origin": origin_of_base,
        "base_reused": bool(linked),
        "base_pins": len(live),
        "dead_base_pins": int((~live).sum()),
        "delta_pins": len(delta_ids),
    }
    return section, linked


def _write_rows(
    build: Path, source: CatalogSource, pin_ids: np.ndarray | None, name: str, expected: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Stream rows into a .npy file (bounded memory); they must be exactly the planned pins."""
    want_ids, want_hashes = expected
    got_ids, got_hashes = np.empty(len(want_ids), np.int64), np.empty(len(want_ids), np.uint64)
    changed = ArtifactIntegrityError("the catalog changed while the snapshot was written: re-run it")

    def blocks() -> Iterator[np.ndarray]:
        filled = 0
        for ids, hashes, x in source.rows(pin_ids) if len(want_ids) else ():
            if filled + len(ids) > len(want_ids):
                raise changed
            got_ids[filled : filled + len(ids)], got_hashes[filled : filled + len(ids)] = ids, hashes
            filled += len(ids)
            yield x
        if filled != len(want_ids):
            raise changed

    save_npy_rows(build / name, blocks(), (len(want_ids), source.dimension), np.float32)
    if not (np.array_equal(got_ids, want_ids) and np.array_equal(got_hashes, want_hashes)):
        raise changed
    return got_ids, got_hashes


class CatalogView:
    """Lookups of a snapshot's catalog: the delta first, then the live base."""

    def __init__(self, build: Path, elsewhere: dict[str, tuple[Path, str]] | None = None) -> None:
        """``elsewhere``: base files not linked into ``build`` yet (while it is being written)."""

        def path(name: str) -> Path:
            return (elsewhere or {}).get(name, (build / name, ""))[0]

        self.base_ids = np.load(path(BASE_FILES[0]))
        self.base_live = np.load(build / LIVE_FILE)
        self.base_embeddings = np.load(path(BASE_FILES[2]), mmap_mode="r")
        self.delta_ids = np.load(build / DELTA_IDS)
        self.delta_embeddings = np.load(build / DELTA_EMBEDDINGS, mmap_mode="r")
        if (
            len(self.base_live) != len(self.base_ids)
            or len(self.base_embeddings) != len(self.base_ids)
            or len(self.delta_embeddings) != len(self.delta_ids)
        ):
            raise ArtifactIntegrityError(f"{build}: catalog files do not line up")
        self._base_rows, self._delta_rows = IdRows(self.base_ids), IdRows(self.delta_ids)

    def locate(self, pin_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row of each pin in the delta, and in the base (where not in the delta); -1 if absent."""
        delta = self._delta_rows(pin_ids)
        base = self._base_rows(pin_ids)
        base = np.where((delta < 0) & (base >= 0) & self.base_live[np.maximum(base, 0)], base, -1)
        return delta, base

    def contains(self, pin_ids: np.ndarray) -> np.ndarray:
        delta, base = self.locate(pin_ids)
        return (delta >= 0) | (base >= 0)

    def embeddings(self, pin_ids: np.ndarray) -> np.ndarray:
        delta, base = self.locate(pin_ids)
        missing = (delta < 0) & (base < 0)
        if missing.any():
            raise KeyError(f"pins not in the catalog: {np.asarray(pin_ids)[missing][:5].tolist()}")
        in_delta = delta >= 0
        if not in_delta.any():  # the common case: one gather from the base
            out = np.asarray(self.base_embeddings[base])
        else:
            out = np.empty((len(delta), self.dimension), dtype=np.float32)
            out[in_delta] = self.delta_embeddings[delta[in_delta]]
            out[~in_delta] = self.base_embeddings[base[~in_delta]]
        return out

    @property
    def dimension(self) -> int:
        return int(self.base_embeddings.shape[1])

    @property
    def pins(self) -> int:
        return int(self.base_live.sum()) + len(self.delta_ids)
