"""Read an index file saved by hnswlib without loading the graph: labels, tombstones, level-0
neighbour lists and which elements a search can reach.

hnswlib's Python API does not expose its graph, and a loaded copy of a graph of millions of
pins costs its whole size in memory; the saved file is read a slice at a time instead (not
memory-mapped: mapped pages would count in the reading process's resident memory). The layout is
hnswlib 0.8's ``saveIndex`` (pinned in pyproject.toml): a 96-byte header, then one fixed-size
record per element (level-0 link list: a 32-bit word holding the neighbour count in its low 16
bits and the deleted mark in bit 16, then ``maxM0`` 32-bit internal ids; the vector; the 64-bit
label), then the upper levels. ``tests/core/test_hnsw_file.py`` checks the reading against
hnswlib itself, so an upgrade that changes the format fails there, not in production.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HEADER = np.dtype(
    [
        ("offset_level0", "<u8"),
        ("max_elements", "<u8"),
        ("count", "<u8"),
        ("size_per_element", "<u8"),
        ("label_offset", "<u8"),
        ("offset_data", "<u8"),
        ("max_level", "<i4"),
        ("entry_point", "<u4"),
        ("max_m", "<u8"),
        ("max_m0", "<u8"),
        ("m", "<u8"),
        ("mult", "<f8"),
        ("ef_construction", "<u8"),
    ]
)
DELETED_BIT = 1 << 16
CHUNK = 65_536  # elements read at a time: bounds the copies of their records


class SavedGraph:
    """An hnswlib index file, read a slice at a time. Rows are hnswlib's internal ids, not labels."""

    def __init__(self, path: Path, dim: int) -> None:
        self.path = Path(path)
        header = np.fromfile(self.path, dtype=HEADER, count=1)
        if len(header) != 1:
            raise ValueError(f"{self.path} is not an hnswlib index: shorter than its header")
        self.header = header[0]
        self.elements = int(self.header["count"])
        self.record = int(self.header["size_per_element"])
        self.max_m0 = int(self.header["max_m0"])
        self.dim = dim
        if int(self.header["offset_data"]) != 4 + 4 * self.max_m0 or self.record != 4 + 4 * self.max_m0 + 4 * dim + 8:
            raise ValueError(f"{self.path} is not an hnswlib 0.8 index of dimension {dim}")
        if self.path.stat().st_size < HEADER.itemsize + self.elements * self.record:
            raise ValueError(f"{self.path} is shorter than its {self.elements} elements")
        words, labels = [], []
        label_offset = int(self.header["label_offset"])
        for start in range(0, self.elements, CHUNK):
            records = self._records(start, min(start + CHUNK, self.elements))
            words.append(records[:, :4].copy().view("<u4").reshape(-1))
            labels.append(records[:, label_offset : label_offset + 8].copy().view("<u8").reshape(-1))
        word = np.concatenate(words) if words else np.empty(0, np.uint32)
        self.counts = (word & 0xFFFF).astype(np.int64)
        self.deleted = (word & DELETED_BIT) != 0
        self.labels = np.concatenate(labels).astype(np.int64) if labels else np.empty(0, np.int64)

    @property
    def entry_point(self) -> int:
        return int(self.header["entry_point"])

    def _records(self, start: int, stop: int) -> np.ndarray:
        raw = np.fromfile(
            self.path, dtype=np.uint8, count=(stop - start) * self.record, offset=HEADER.itemsize + start * self.record
        )
        return raw.reshape(stop - start, self.record)

    def links(self, start: int, stop: int) -> np.ndarray:
        """Level-0 neighbours (internal ids) of rows start..stop; -1 past each row's count."""
        raw = self._records(start, stop)[:, 4 : 4 + 4 * self.max_m0].copy().view("<u4")
        links = raw.reshape(stop - start, self.max_m0).astype(np.int64)
        links[np.arange(self.max_m0)[None, :] >= self.counts[start:stop, None]] = -1
        return links

    def reachable(self) -> np.ndarray:
        """Per internal id: can a search get there? Breadth-first over the level-0 links from the
        entry point. A search descends the upper levels to one level-0 element and walks the
        level-0 links from there, so an element no level-0 path leads to is never returned. (An
        element only an upper level leads to counts as unreachable here: conservative.) Memory:
        the links as int32, 4 bytes per link (256 MiB at 1M elements of M=32), and a bounded
        slice of the frontier's links at a time."""
        reached = np.zeros(self.elements, dtype=bool)
        if self.elements == 0:
            return reached
        links = np.empty((self.elements, self.max_m0), dtype=np.int32)
        for start in range(0, self.elements, CHUNK):
            stop = min(start + CHUNK, self.elements)
            links[start:stop] = self.links(start, stop)
        frontier = np.array([self.entry_point])
        reached[frontier] = True
        while len(frontier):
            step = []
            for start in range(0, len(frontier), CHUNK):
                found = links[frontier[start : start + CHUNK]].ravel()
                found = found[found >= 0]
                found = found[~reached[found]]
                reached[found] = True  # marked at once: a later slice never lists it again
                step.append(np.unique(found))
            frontier = np.concatenate(step)
        return reached
