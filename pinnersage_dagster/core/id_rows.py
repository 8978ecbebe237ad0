"""Rows of pin ids in a sorted array of unique ids.

A catalog's ids are usually dense (a counter, with gaps for removed pins), and then a table
indexed by ``id - smallest`` finds a row with one read of a few MiB that stays in the CPU cache.
A binary search of a million ids is twenty dependent reads, most of them cache misses between
the gathers of embeddings they serve: at 1M pins, 4M lookups in chunks of 2,048 between such
gathers took 1.3 s against 0.08 s for the table (one process). Ids too sparse for a table
(hashes, say) keep the binary search.
"""

from __future__ import annotations

import numpy as np

# a table of at most this many int32 entries per id (16 bytes per id at most)
DENSE_SPAN = 4


class IdRows:
    """``rows(pin_ids)``: each id's row in ``sorted_ids`` (sorted, unique), -1 where absent."""

    def __init__(self, sorted_ids: np.ndarray) -> None:
        self.ids = np.asarray(sorted_ids, dtype=np.int64)
        self._table: np.ndarray | None = None
        self._lowest = 0
        if len(self.ids):
            lowest, span = int(self.ids[0]), int(self.ids[-1]) - int(self.ids[0]) + 1
            if span <= DENSE_SPAN * len(self.ids) and len(self.ids) < np.iinfo(np.int32).max:
                self._table = np.full(span, -1, dtype=np.int32)
                self._table[self.ids - lowest] = np.arange(len(self.ids), dtype=np.int32)
                self._lowest = lowest

    def __call__(self, pin_ids: np.ndarray) -> np.ndarray:
        pin_ids = np.asarray(pin_ids, dtype=np.int64)
        if len(self.ids) == 0:
            return np.full(len(pin_ids), -1, dtype=np.int64)
        if self._table is None:
            rows = np.minimum(np.searchsorted(self.ids, pin_ids), len(self.ids) - 1)
            return np.where(self.ids[rows] == pin_ids, rows, -1)
        # int64 wrap-around cannot land inside the table: offset == k (mod 2**64) with a
        # representable pin means pin == lowest + k exactly
        offset = pin_ids - self._lowest
        inside = (offset >= 0) & (offset < len(self._table))
        return np.where(inside, self._table[np.where(inside, offset, 0)], -1).astype(np.int64)
