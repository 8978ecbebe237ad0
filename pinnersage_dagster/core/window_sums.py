"""A day's window summed for serving, in one pass over its distinct (user, pin) rows: each
cluster's centroid (the mean of its members, float32, for the online update) and each user's
decay sum (the actions' embeddings weighted by ``exp(-lambda * age)``, float64, ``core.decay``).

Every member of a user's clusters is one of the user's window pins, so one gather of each
distinct (user, pin)'s embedding serves both sums: at 100k users about 10M gathered rows
instead of 20M (the members and the actions used to gather their own). Each sum is the same,
bit for bit, as summing its own gathered rows: the same weights times the same rows, added in
the same order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy.sparse import csr_matrix

from .decay import CHUNK_ROWS


def first_of_pairs(users: np.ndarray, pins: np.ndarray) -> np.ndarray:
    """For rows sorted by (user, pin): True on the first row of each distinct (user, pin)."""
    if len(users) == 0:
        return np.empty(0, dtype=bool)
    return np.r_[True, (users[1:] != users[:-1]) | (pins[1:] != pins[:-1])]


def window_sum_blocks(
    action_users: np.ndarray,
    action_pins: np.ndarray,
    action_weights: np.ndarray,
    member_users: np.ndarray,
    member_clusters: np.ndarray,
    member_pins: np.ndarray,
    embeddings: Callable[[np.ndarray], np.ndarray],
    *,
    chunk_rows: int = CHUNK_ROWS,
    threads: int = 1,
) -> tuple[np.ndarray, Iterator[tuple[np.ndarray, np.ndarray]]]:
    """(the users with actions, blocks of (centroids, decay sums)).

    Actions come sorted by (user, pin), members by (user, cluster, pin). Each block covers a run
    of whole users with about ``chunk_rows`` distinct (user, pin) rows: the centroids of their
    clusters, in member order, and their decay sums, in user order; the rows are gathered once
    per block and stay in the CPU cache for both products. A member that is not among its
    user's actions is an error (the clusters and the window disagree). With ``threads`` > 1 the
    blocks are computed ahead on that many threads (``embeddings`` is called from them)."""
    action_users, action_pins = np.asarray(action_users), np.asarray(action_pins)
    member_users, member_clusters = np.asarray(member_users), np.asarray(member_clusters)
    member_pins = np.asarray(member_pins)
    _check_sorted(action_users, action_pins, "actions must be sorted by user and pin")
    _check_sorted(member_users, member_clusters, "members must be sorted by user and cluster")
    first = first_of_pairs(action_users, action_pins)
    pair_action = np.flatnonzero(first)  # each distinct row's first action
    user_action = _firsts(action_users)
    user_pair = np.searchsorted(pair_action, user_action)  # each user's first distinct row
    users = action_users[user_action].astype(np.int64)
    member_lo = np.searchsorted(member_users, users, "left")
    member_hi = np.searchsorted(member_users, users, "right")
    if int((member_hi - member_lo).sum()) != len(member_users):
        raise ValueError("cluster members of users with no action in the window")
    cluster_first = np.flatnonzero(first_of_pairs(member_users, member_clusters))
    sizes = np.diff(np.r_[cluster_first, len(member_users)])
    weights = np.repeat((1.0 / sizes).astype(np.float32), sizes)
    pair_end = np.r_[user_pair[1:], len(pair_action)]  # each user's rows end here

    def block(u: int, last: int) -> tuple[np.ndarray, np.ndarray]:
        """The centroids and decay sums of users ``u .. last - 1``."""
        lo, hi = user_pair[u], pair_end[last - 1]
        a_lo, a_hi = user_action[u], user_action[last] if last < len(users) else len(action_users)
        pair_pins = action_pins[pair_action[lo:hi]]
        x = np.asarray(embeddings(pair_pins))
        mix = csr_matrix(
            (action_weights[a_lo:a_hi], np.cumsum(first[a_lo:a_hi]) - 1, np.r_[user_action[u:last], a_hi] - a_lo),
            shape=(last - u, hi - lo),
        )
        decay = mix @ x.astype(np.float64)
        m_lo, m_hi = member_lo[u], member_hi[last - 1]
        c_lo, c_hi = np.searchsorted(cluster_first, [m_lo, m_hi])
        columns = _member_rows(
            pair_pins,
            pair_end[u:last] - user_pair[u:last],
            member_users[m_lo:m_hi],
            member_pins[m_lo:m_hi],
            member_hi[u:last] - member_lo[u:last],
        )
        means = csr_matrix(
            (weights[m_lo:m_hi], columns, np.r_[cluster_first[c_lo:c_hi], m_hi] - m_lo),
            shape=(c_hi - c_lo, hi - lo),
        )
        return means @ x, decay

    bounds = []
    u = 0
    while u < len(users):
        last = max(u + 1, int(np.searchsorted(pair_end, user_pair[u] + chunk_rows, side="right")))
        bounds.append((u, last))
        u = last
    return users, _in_order(block, bounds, threads)


def _in_order(
    block: Callable[[int, int], tuple[np.ndarray, np.ndarray]], bounds: list[tuple[int, int]], threads: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``block`` of each bound, yielded in order; with ``threads`` > 1, computed ahead on that
    many threads, at most two blocks per thread waiting for the caller, so memory stays a few
    blocks whatever the caller's pace. numpy's gathers and copies run without the GIL, scipy's
    sparse products with it: 1.3x on two threads for the sums of 100k users. Each block's
    arithmetic is the same on any thread, so the bits are too."""
    if threads <= 1:
        for u, last in bounds:
            yield block(u, last)
        return
    with ThreadPoolExecutor(threads) as pool:
        pending: deque = deque()
        for u, last in bounds:
            pending.append(pool.submit(block, u, last))
            if len(pending) >= 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _member_rows(
    pins: np.ndarray,
    pair_counts: np.ndarray,
    member_users: np.ndarray,
    member_pins: np.ndarray,
    member_counts: np.ndarray,
) -> np.ndarray:
    """Row of each member among the distinct (user, pin) rows of the same users, sorted by (user,
    pin), ``pair_counts`` and ``member_counts`` rows per user: one binary search of a key that
    orders (user, pin) like the rows."""
    lowest, highest = int(pins.min()), int(pins.max())
    span = highest - lowest + 1
    if span * len(pair_counts) < 2**62:  # the pins' offsets themselves (catalog ids are dense)
        rank, member_rank = pins - lowest, member_pins - lowest
        inside = (member_pins >= lowest) & (member_pins <= highest)
    else:  # sparse ids: their ranks among the block's pins
        distinct = np.unique(pins)
        span = len(distinct)
        rank = np.searchsorted(distinct, pins)
        member_rank = np.minimum(np.searchsorted(distinct, member_pins), span - 1)
        inside = distinct[member_rank] == member_pins
    key = np.repeat(np.arange(len(pair_counts)), pair_counts) * span + rank
    member_key = np.repeat(np.arange(len(member_counts)), member_counts) * span + member_rank
    rows = np.minimum(np.searchsorted(key, member_key), len(key) - 1)
    found = inside & (key[rows] == member_key)
    if not found.all():
        at = int(np.flatnonzero(~found)[0])
        raise ValueError(
            f"user {int(member_users[at])}: cluster member pin {int(member_pins[at])} is not among the user's actions"
        )
    return rows


def _firsts(sorted_values: np.ndarray) -> np.ndarray:
    """Index of the first row of each run of equal values."""
    if len(sorted_values) == 0:
        return np.empty(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])


def _check_sorted(first: np.ndarray, second: np.ndarray, message: str) -> None:
    if len(first) < 2:
        return
    later = first[1:] > first[:-1]
    if not np.all(later | ((first[1:] == first[:-1]) & (second[1:] >= second[:-1]))):
        raise ValueError(message)
