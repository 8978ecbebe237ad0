"""The medoid cache (paper, section 4.1.1): ANN results by medoid pin id, for one index version."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

Neighbours = TypeVar("Neighbours")  # what a fetch returns (the service's: ``serving.merge.NeighbourList``)


class MedoidCache(Generic[Neighbours]):
    """A bounded LRU of ANN results keyed by medoid pin id.

    Entries belong to one index version: a request against another version clears the cache,
    so results are never served from an index that is no longer the one in use. An entry
    fetched at depth d serves any request for depth <= d.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self._entries: OrderedDict[int, tuple[int, Neighbours]] = OrderedDict()  # (depth fetched, result)
        self._version: str | None = None
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, version: str, medoid_pin_id: int, depth: int, fetch: Callable[[int], Neighbours]) -> Neighbours:
        with self._lock:
            if version != self._version:
                self._entries.clear()
                self._version = version
            cached = self._entries.get(medoid_pin_id)
            if cached is not None and cached[0] >= depth:
                self._entries.move_to_end(medoid_pin_id)
                self.hits += 1
                return cached[1]
            self.misses += 1
        entry = fetch(depth)  # outside the lock: ANN queries run concurrently
        with self._lock:
            if version == self._version:
                self._entries[medoid_pin_id] = (depth, entry)
                self._entries.move_to_end(medoid_pin_id)
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
        return entry

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def __len__(self) -> int:
        return len(self._entries)
