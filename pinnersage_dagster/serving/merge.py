"""Retrieval (paper, section 4): the budget spent across medoids (``core.retrieval``: the paper's
sampling, or proportional shares), their neighbour lists merged into one answer.

A request is a few cache lookups and this merge, so it is written for a request's sizes (a few
lists of at most a few hundred pins): a fixed number of vector operations however many medoids
there are, and each neighbour's JSON encoded once, when its medoid's list is fetched, not per
answer (``NeighbourList``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import orjson

SCORE_DECIMALS = 6  # scores are answered rounded to 6 decimals


@dataclass(frozen=True)
class NeighbourList:
    """One medoid's nearest pins, best first: ids, cosine scores, and each item's JSON up to its
    explanation fields (``b'{"pin_id":P,"score":S,'``), encoded as the answer writes it."""

    pins: np.ndarray
    scores: np.ndarray
    heads: np.ndarray  # dtype object: bytes

    @classmethod
    def of(cls, pins: np.ndarray, scores: np.ndarray) -> NeighbourList:
        pins, scores = np.asarray(pins, dtype=np.int64), np.asarray(scores, dtype=np.float64)
        heads = np.empty(len(pins), dtype=object)
        if len(pins):
            # orjson writes a numpy array's numbers as it writes Python ints and floats
            pin_text = orjson.dumps(pins, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",")
            rounded = np.round(scores, SCORE_DECIMALS)
            score_text = orjson.dumps(rounded, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",")
            heads[:] = [b'{"pin_id":%b,"score":%b,' % pair for pair in zip(pin_text, score_text)]
        return cls(pins, scores, heads)

    def __len__(self) -> int:
        return len(self.pins)


@dataclass(frozen=True)
class Merged:
    """The answer's items, best first: pin, score (unrounded), the list each came from
    (``source``) and its encoded head."""

    pins: np.ndarray
    scores: np.ndarray
    source: np.ndarray
    heads: np.ndarray


def merge(lists: Sequence[NeighbourList], takes: Sequence[int], budget: int, exclude: np.ndarray) -> Merged:
    """Merge per-medoid neighbour lists into one list of at most ``budget`` pins.

    List i contributes its best ``takes[i]`` pins not in ``exclude`` (sorted, unique); a pin
    reached from several lists keeps its best score and the list that gave it (on equal scores,
    the earlier list). Items are sorted by score, best first, then by pin id.
    """
    if not lists:
        empty = np.empty(0, dtype=np.int64)
        return Merged(empty, np.empty(0), empty, np.empty(0, dtype=object))
    # array methods, not numpy's module functions: at these sizes their Python wrappers cost as
    # much as the work. A list can lose at most len(exclude) pins to exclusion: nothing past that
    # is read.
    lengths = [min(len(n), take + exclude.size) for n, take in zip(lists, takes)]
    pins = np.concatenate([n.pins[:length] for n, length in zip(lists, lengths)])
    scores = np.concatenate([n.scores[:length] for n, length in zip(lists, lengths)])
    source = np.arange(len(lists)).repeat(lengths)
    starts = np.array([0, *itertools.accumulate(lengths)])
    if exclude.size:
        at = exclude.searchsorted(pins)
        at[at == exclude.size] = 0
        kept = exclude[at] != pins
        counted = kept.cumsum()  # a pin's rank among its own list's kept pins: minus the lists before
        counted -= np.concatenate(([0], counted))[starts[:-1]][source]
        chosen = (kept & (counted <= np.array(takes)[source])).nonzero()[0]
    else:
        chosen = (np.arange(len(pins)) - starts[:-1][source] < np.array(takes)[source]).nonzero()[0]
    pins, scores = pins[chosen], scores[chosen]
    # each list is sorted by score already: a stable sort merges the runs (timsort), equal
    # scores stay in list order; only exact ties between pins need the pin id as a second key
    order = (-scores).argsort(kind="stable")
    ranked = scores[order]
    if (ranked[1:] == ranked[:-1]).any():
        order = np.lexsort((pins, -scores))  # best score first, then lowest pin id; stable
    if len(lists) > 1:
        by_pin = np.sort(pins)
        if (by_pin[1:] == by_pin[:-1]).any():  # rare: two medoids reached the same pin
            _, first = np.unique(pins[order], return_index=True)  # first in order = its best
            order = order[np.sort(first)]
    order = order[:budget]
    chosen = chosen[order]
    heads = np.concatenate([n.heads[:length] for n, length in zip(lists, lengths)])[chosen]
    return Merged(pins[order], scores[order], source[chosen], heads)


def encode_items(merged: Merged, cluster_ids: Sequence[int], medoid_pin_ids: Sequence[int]) -> bytes:
    """The answer's ``items`` as a JSON array: each item's encoded head, then its list's
    explanation fields (one join, no per-item object)."""
    n = len(merged.pins)
    if not n:
        return b"[]"
    tails = [b'"cluster_id":%d,"medoid_pin_id":%d}' % pair for pair in zip(cluster_ids, medoid_pin_ids)]
    between = np.empty(len(tails), dtype=object)
    between[:] = [tail + b"," for tail in tails]
    parts = np.empty(2 * n + 1, dtype=object)
    parts[0] = b"["
    parts[1::2] = merged.heads
    parts[2::2] = between[merged.source]
    parts[-1] = tails[merged.source[-1]] + b"]"
    return b"".join(parts.tolist())
