"""Read an index file saved by hnswlib without loading the graph: labels, tombstones, level-0
neighbour lists and which elements a search can reach; and give the elements no search reaches
a link to them, written in place (``link_unreachable``).

hnswlib's Python API does not expose its graph, and a loaded copy of a graph of millions of
pins costs its whole size in memory; the saved file is read a slice at a time instead (not
memory-mapped: mapped pages would count in the reading process's resident memory). The layout is
hnswlib 0.8's ``saveIndex`` (pinned in pyproject.toml): a 96-byte header, then one fixed-size
record per element (level-0 link list: a 32-bit word holding the neighbour count in its low 16
bits and the deleted mark in bit 16, then ``maxM0`` 32-bit internal ids; the vector; the 64-bit
label), then the upper levels. ``tests/core/test_hnsw_file.py`` checks the reading and the
writing against hnswlib itself, so an upgrade that changes the format fails there, not in
production.
"""

from __future__ import annotations

import os
from collections.abc import Callable
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
        self.flags = word & ~np.uint32(0xFFFF)  # the word's other bits: kept as they are by a rewrite
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

    def level0(self) -> np.ndarray:
        """Every element's level-0 neighbours as int32 (internal ids; -1 past each count): 4
        bytes per link (256 MiB at 1M elements of M=32), read a slice of the file at a time."""
        links = np.empty((self.elements, self.max_m0), dtype=np.int32)
        for start in range(0, self.elements, CHUNK):
            stop = min(start + CHUNK, self.elements)
            links[start:stop] = self.links(start, stop)
        return links

    def reachable(self, links: np.ndarray | None = None) -> np.ndarray:
        """Per internal id: can a search get there? Breadth-first over the level-0 links from the
        entry point. A search descends the upper levels to one level-0 element and walks the
        level-0 links from there, so an element no level-0 path leads to is never returned. (An
        element only an upper level leads to counts as unreachable here: conservative.)
        ``links``: this file's ``level0()``, when the caller holds it already."""
        reached = np.zeros(self.elements, dtype=bool)
        if self.elements == 0:
            return reached
        links = self.level0() if links is None else links
        return _spread(links, reached, np.array([self.entry_point]))


def _spread(links: np.ndarray, reached: np.ndarray, frontier: np.ndarray) -> np.ndarray:
    """Mark (in place) every element the level-0 links lead to from ``frontier``; returns ``reached``."""
    reached[frontier] = True
    while len(frontier):
        step = []
        for start in range(0, len(frontier), CHUNK):  # a bounded slice of the frontier's links at a time
            found = links[frontier[start : start + CHUNK]].ravel()
            found = found[found >= 0]
            found = found[~reached[found]]
            reached[found] = True  # marked at once: a later slice never lists it again
            step.append(np.unique(found))
        frontier = np.concatenate(step)
    return reached


def link_unreachable(saved: SavedGraph, vectors: Callable[[np.ndarray], np.ndarray]) -> tuple[int, int]:
    """Give every live element that no level-0 path reaches an incoming link, written into the
    saved file (``saved``, read once by the caller; stale after this); returns (links added, live elements still unreachable). ``vectors`` gives the
    vectors of live labels, as the index was given them.

    hnswlib links a new element to the neighbours its selection heuristic keeps, and each of them
    back; but a neighbour whose list is full keeps only what the heuristic picks again. On
    embeddings with hubs the heuristic keeps one neighbour for most elements (the hub, nearer to
    each candidate than the element is), so the hub's list fills and most elements lose their only
    incoming link: 12% of a million pins of the realistic world, which no search returns.
    Each unreachable element is appended to the list of the live element nearest to it, among
    its own neighbours and theirs, that a search reaches and whose list has room (of the whole
    graph when none of those has); the elements reached that way can take the next round's.
    The element's own links, the vectors, labels, tombstones and upper levels stay as they are,
    so hnswlib loads the file as before (``tests/core/test_hnsw_file.py``)."""
    if saved.elements == 0:
        return 0, 0
    labels = saved.labels

    def of(ids: np.ndarray) -> np.ndarray:
        return np.asarray(vectors(labels[ids]), dtype=np.float32)

    links = saved.level0()
    reached = saved.reachable(links)
    live = ~saved.deleted
    counts = saved.counts.copy()
    changed = np.zeros(saved.elements, dtype=bool)
    added = 0
    while len(lonely := np.flatnonzero(live & ~reached)):
        open_ = reached & live & (counts < saved.max_m0)
        element, neighbour = _nearest_with_room(links, lonely, open_, of)
        if len(element) == 0:  # none near them has room (small lists): the nearest of all that do
            element, neighbour = _nearest_open(lonely, open_, of)
        if len(element) == 0:
            break
        # several elements may pick one neighbour: each takes a free slot in turn while there is one
        order = np.argsort(neighbour, kind="stable")
        element, neighbour = element[order], neighbour[order]
        starts = np.flatnonzero(np.r_[True, neighbour[1:] != neighbour[:-1]])
        rank = np.arange(len(neighbour)) - np.repeat(starts, np.diff(np.r_[starts, len(neighbour)]))
        slot = counts[neighbour] + rank
        fits = slot < saved.max_m0
        element, neighbour, slot = element[fits], neighbour[fits], slot[fits]
        links[neighbour, slot] = element
        np.add.at(counts, neighbour, 1)
        changed[neighbour] = True
        added += len(element)
        _spread(links, reached, element)
    rows = np.flatnonzero(changed)
    if len(rows):
        records = np.empty((len(rows), 1 + saved.max_m0), dtype="<u4")
        records[:, 0] = saved.flags[rows] | counts[rows].astype(np.uint32)
        records[:, 1:] = links[rows].astype(np.int64).astype(np.uint32)  # past the count: never read
        with open(saved.path, "r+b") as file:
            for row, record in zip(rows.tolist(), records, strict=True):
                os.pwrite(file.fileno(), record.tobytes(), HEADER.itemsize + row * saved.record)
    return added, int((live & ~reached).sum())


def _nearest_with_room(
    links: np.ndarray, lonely: np.ndarray, open_: np.ndarray, vectors: Callable[[np.ndarray], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``lonely``, the ``open_`` element nearest to it among its neighbours and
    theirs; returns (elements that have one, that element)."""
    elements, chosen = [], []
    for start in range(0, len(lonely), 1024):  # a bounded set of candidate pairs at a time
        part = lonely[start : start + 1024]
        own = links[part].astype(np.int64)
        second = links[np.maximum(own, 0)].astype(np.int64)
        second[own < 0] = -1
        candidates = np.concatenate([own, second.reshape(len(part), -1)], axis=1)
        row, column = np.nonzero(candidates >= 0)
        candidate = candidates[row, column]
        keep = open_[candidate] & (candidate != part[row])
        row, candidate = row[keep], candidate[keep]
        if len(row) == 0:
            continue
        cosine = np.einsum("ij,ij->i", vectors(part)[row], vectors(candidate))
        order = np.lexsort((-cosine, row))  # by element, the nearest candidate first
        first = order[np.r_[True, row[order][1:] != row[order][:-1]]]
        elements.append(part[row[first]])
        chosen.append(candidate[first])
    if not elements:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(elements), np.concatenate(chosen)


def _nearest_open(
    lonely: np.ndarray, open_: np.ndarray, vectors: Callable[[np.ndarray], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """For (at most 1,024 of) ``lonely``, the nearest ``open_`` element of the whole graph, exact,
    a slice of the open elements at a time: for the few that no neighbour within two links can
    take; the next round's two-link search starts from the elements reached by these."""
    lonely, candidates = lonely[:1024], np.flatnonzero(open_)
    if len(candidates) == 0 or len(lonely) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    query = vectors(lonely)
    best = np.full(len(lonely), -np.inf)
    chosen = np.full(len(lonely), -1, dtype=np.int64)
    for start in range(0, len(candidates), 16_384):  # 64 MiB of similarities at a time
        part = candidates[start : start + 16_384]
        cosine = query @ vectors(part).T
        column = cosine.argmax(axis=1)
        value = cosine[np.arange(len(lonely)), column]
        better = value > best
        best[better], chosen[better] = value[better], part[column[better]]
    return lonely, chosen
