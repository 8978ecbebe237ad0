"""Read an index file saved by hnswlib without loading the graph: labels, tombstones, level-0
neighbour lists and which elements a search can reach.

hnswlib's Python API does not expose its graph, and a loaded copy of a graph of millions of
pins costs its whole size in memory; the saved file is memory-mapped instead. The layout is
hnswlib 0.8's ``saveIndex`` (pinned in pyproject.toml): a 96-byte header, then one fixed-size
record per element (level-0 link list: a 32-bit word holding the neighbour count in its low 16
bits and the deleted mark in bit 16, then ``maxM0`` 32-bit internal ids; the vector; the 64-bit
label), then the upper levels. ``tests/core/test_hnsw_file.py`` checks the reading against
hnswlib itself, so an upgrade that changes the format fails there, not in production.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import breadth_first_order

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
CHUNK = 65_536  # elements per slice of the memory map: bounds the copies of link lists and vectors


class SavedGraph:
    """A memory-mapped hnswlib index file. Rows are hnswlib's internal ids, not labels."""

    def __init__(self, path: Path, dim: int) -> None:
        self.path = Path(path)
        header = np.fromfile(self.path, dtype=HEADER, count=1)
        if len(header) != 1:
            raise ValueError(f"{self.path} is not an hnswlib index: shorter than its header")
        self.header = header[0]
        self.elements = int(self.header["count"])
        size = int(self.header["size_per_element"])
        self.max_m0 = int(self.header["max_m0"])
        self.dim = dim
        if int(self.header["offset_data"]) != 4 + 4 * self.max_m0 or size != 4 + 4 * self.max_m0 + 4 * dim + 8:
            raise ValueError(f"{self.path} is not an hnswlib 0.8 index of dimension {dim}")
        self._records = np.memmap(
            self.path, dtype=np.uint8, mode="r", offset=HEADER.itemsize, shape=(self.elements, size)
        )
        words = self._column(0, 4, "<u4")
        self.counts = (words & 0xFFFF).astype(np.int64)
        self.deleted = (words & DELETED_BIT) != 0
        self.labels = self._column(int(self.header["label_offset"]), 8, "<u8").astype(np.int64)

    @property
    def entry_point(self) -> int:
        return int(self.header["entry_point"])

    def _column(self, offset: int, width: int, dtype: str, rows: slice = slice(None)) -> np.ndarray:
        return np.ascontiguousarray(self._records[rows, offset : offset + width]).view(dtype).reshape(-1)

    def links(self, start: int, stop: int) -> np.ndarray:
        """Level-0 neighbours (internal ids) of rows start..stop; -1 past each row's count."""
        raw = np.ascontiguousarray(self._records[start:stop, 4 : 4 + 4 * self.max_m0]).view("<u4")
        links = raw.reshape(stop - start, self.max_m0).astype(np.int64)
        links[np.arange(self.max_m0)[None, :] >= self.counts[start:stop, None]] = -1
        return links

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The stored vectors of the given internal ids (float32, one row each)."""
        offset = int(self.header["offset_data"])
        return np.ascontiguousarray(self._records[rows, offset : offset + 4 * self.dim]).view("<f4")

    def reachable(self) -> np.ndarray:
        """Per internal id: can a search get there? Breadth-first over the level-0 links from the
        entry point. A search descends the upper levels to one level-0 element and walks the
        level-0 links from there, so an element no level-0 path leads to is never returned. (An
        element only an upper level leads to counts as unreachable here: conservative.)"""
        if self.elements == 0:
            return np.zeros(0, dtype=bool)
        indices = []
        for start in range(0, self.elements, CHUNK):
            links = self.links(start, min(start + CHUNK, self.elements))
            indices.append(links[links >= 0].astype(np.int32))
        indptr = np.r_[0, np.cumsum(self.counts)]
        adjacency = csr_matrix(
            (np.ones(int(indptr[-1]), dtype=np.int8), np.concatenate(indices), indptr),
            shape=(self.elements, self.elements),
        )
        found = breadth_first_order(adjacency, self.entry_point, directed=True, return_predecessors=False)
        reached = np.zeros(self.elements, dtype=bool)
        reached[found] = True
        return reached
