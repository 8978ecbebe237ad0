"""Same-day online updates (paper, section 4.2, "lightweight online inference").

The only online state is each user's most recent ``keep`` (20) events *after* the served
batch (``ts >= batch_time``, the end of the snapshot's day). A user's interests are derived
from the snapshot's clusters plus those events, every time they are asked for, so a newer
snapshot supersedes the online state at once: events it already covers are dropped.

The rule, per event in time order, for event pin x (unit embedding):

1. if x is already a member of one of the user's clusters, that cluster gets the action;
2. else, for each cluster c (n pins, centroid mu), the Ward cost of merging {x} into c is
   ``d = 2 * n / (n + 1) * ||mu - x||^2`` (Eq. 1 on the paper's scale, as in Algorithm 1);
   if the lowest cost is <= alpha, x joins that cluster (centroid and size are updated and
   the medoid is recomputed as the member nearest the new centroid, Eq. 2);
3. otherwise x starts a new cluster (``kind = 'online'``) whose medoid is x.

Importance at time t (Eq. 3 with the new times): the batch importance decayed from
``batch_time`` to t, plus ``exp(-lambda * age)`` for each online action in the cluster.
"""

from __future__ import annotations

import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..core.events import ACTIONS, OnlineEvent
from .snapshot import ServingSnapshot

DAY = pd.Timedelta(days=1)


@dataclass
class Interest:
    cluster_id: int
    medoid_pin_id: int
    importance: float
    size: int
    kind: str
    online_updated: bool = False
    online_actions: int = 0
    centroid: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)  # set when events need it
    members: list[int] = field(default_factory=list, repr=False)


ADDED, DUPLICATE, OLDER_THAN_KEPT = "added", "duplicate", "older_than_kept_online_events"
_RECORD = struct.Struct("<qqB")  # ts (ns), pin, action: one kept event, 17 bytes
# measured with tracemalloc (tests/test_acknowledged_events.py): a user holding 20 events and
# the LRU's entry for them (484 bytes measured at 20k users)
BYTES_PER_ONLINE_USER = 600


class OnlineEvents:
    """Recent events per user, bounded per user (``keep``) and in users (LRU, ``max_users``).

    A user's events are one packed, sorted ``bytes`` of ``keep`` records at most, so memory is
    at most about ``max_users * BYTES_PER_ONLINE_USER`` (the default 1M users: about 0.6 GB per
    worker). Past ``max_users``, the user whose events arrived least recently loses their online
    state: their recommendations come from the snapshot alone until the next snapshot, which
    holds those events (they are in the event log and reach the warehouse either way).
    """

    def __init__(self, keep: int = 20, max_users: int = 1_000_000) -> None:
        self.keep = keep
        self.max_users = max_users
        self.evicted_users = 0
        self._events: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, event: OnlineEvent) -> str:
        """Keep the event among the user's most recent ``keep``. Returns ``ADDED``, ``DUPLICATE``
        (the user already has this exact event) or ``OLDER_THAN_KEPT`` (older than every event
        kept: it has no online effect)."""
        record = (event.ts.value, event.pin_id, ACTIONS.index(event.action))
        with self._lock:
            records = list(_RECORD.iter_unpack(self._events.get(event.user_id, b"")))
            if record in records:
                self._events.move_to_end(event.user_id)
                return DUPLICATE
            if len(records) >= self.keep and record < records[0]:
                return OLDER_THAN_KEPT
            records = sorted([*records, record])[-self.keep :]  # late arrivals still keep the most recent
            self._events[event.user_id] = b"".join(_RECORD.pack(*r) for r in records)
            self._events.move_to_end(event.user_id)
            while len(self._events) > self.max_users:
                self._events.popitem(last=False)
                self.evicted_users += 1
            return ADDED

    def for_user(self, user_id: int, after: pd.Timestamp) -> list[OnlineEvent]:
        with self._lock:
            packed = self._events.get(user_id)
        if packed is None:
            return []
        cutoff = after.value
        return [
            OnlineEvent(ts=pd.Timestamp(ts), user_id=user_id, pin_id=pin, action=ACTIONS[action])
            for ts, pin, action in _RECORD.iter_unpack(packed)
            if ts >= cutoff
        ]

    def prune(self, before: pd.Timestamp) -> int:
        """Drop events a newer batch covers; returns how many were dropped."""
        dropped, cutoff = 0, before.value
        with self._lock:
            for user_id in list(self._events):
                records = list(_RECORD.iter_unpack(self._events[user_id]))
                kept = [r for r in records if r[0] >= cutoff]
                dropped += len(records) - len(kept)
                if kept:
                    self._events[user_id] = b"".join(_RECORD.pack(*r) for r in kept)
                else:
                    del self._events[user_id]
        return dropped

    @property
    def users(self) -> int:
        return len(self._events)


@dataclass(frozen=True)
class InterestArrays:
    """A user's interests as parallel arrays: what a recommendation needs of them."""

    cluster_id: np.ndarray
    medoid_pin_id: np.ndarray
    importance: np.ndarray
    online_updated: np.ndarray


def interest_arrays(snapshot: ServingSnapshot, user_id: int, events: list[OnlineEvent], now_ns: int) -> InterestArrays:
    """``user_interests`` as arrays; without events (the common case) straight from the
    snapshot's columns: the batch importance decayed to now, nothing else to derive."""
    if events:
        interests = user_interests(snapshot, user_id, events, pd.Timestamp(now_ns))
        return InterestArrays(
            np.array([c.cluster_id for c in interests], dtype=np.int64),
            np.array([c.medoid_pin_id for c in interests], dtype=np.int64),
            np.array([c.importance for c in interests], dtype=np.float64),
            np.array([c.online_updated for c in interests], dtype=bool),
        )
    rows = snapshot.user_rows(user_id)
    columns = snapshot.medoid_columns
    return InterestArrays(
        columns["cluster_id"][rows],
        columns["medoid_pin_id"][rows],
        columns["importance"][rows] * _batch_decay(snapshot, now_ns),
        np.zeros(rows.stop - rows.start, dtype=bool),
    )


def _batch_decay(snapshot: ServingSnapshot, now_ns: int) -> float:
    """exp(-lambda * days since the batch), the factor every batch importance carries now."""
    return float(np.exp(-snapshot.decay_lambda * max((now_ns - snapshot.batch_time.value) / DAY.value, 0.0)))


def user_interests(
    snapshot: ServingSnapshot, user_id: int, events: list[OnlineEvent], now: pd.Timestamp
) -> list[Interest]:
    """The user's clusters from the snapshot, updated with today's events (rule above)."""
    rows = snapshot.user_rows(user_id)
    decay = snapshot.decay_lambda
    batch_decay = _batch_decay(snapshot, now.value)
    columns = {name: values[rows].tolist() for name, values in snapshot.medoid_columns.items()}
    interests = [
        Interest(cluster_id=c, medoid_pin_id=m, importance=i * batch_decay, size=n, kind=k)
        for c, m, i, n, k in zip(
            columns["cluster_id"], columns["medoid_pin_id"], columns["importance"], columns["size"], columns["kind"]
        )
    ]
    if not events:
        return interests  # the common case: no online state, nothing more to derive
    member_clusters, member_pins = snapshot.user_members(user_id)
    for offset, interest in enumerate(interests):
        interest.centroid = snapshot.centroids[rows.start + offset].astype(np.float64)
        interest.members = member_pins[member_clusters == interest.cluster_id].tolist()
    for event in sorted(events):
        x = snapshot.embeddings(np.array([event.pin_id]))[0].astype(np.float64)
        weight = float(np.exp(-decay * max((now - event.ts) / DAY, 0.0)))
        target = next((c for c in interests if event.pin_id in c.members), None)
        if target is None:
            target = _absorb(snapshot, interests, event.pin_id, x)
        target.importance += weight
        target.online_actions += 1
        target.online_updated = True
    return interests


def _absorb(snapshot: ServingSnapshot, interests: list[Interest], pin_id: int, x: np.ndarray) -> Interest:
    """Join the cluster of lowest Ward merge cost if it is within alpha, else start a new one."""
    if interests:
        costs = [2.0 * c.size / (c.size + 1) * float(np.sum((c.centroid - x) ** 2)) for c in interests]
        best = int(np.argmin(costs))
        if costs[best] <= snapshot.alpha:
            c = interests[best]
            c.centroid = (c.centroid * c.size + x) / (c.size + 1)
            c.size += 1
            c.members.append(pin_id)
            member_x = snapshot.embeddings(np.array(c.members)).astype(np.float64)
            spread = np.sum((member_x - c.centroid) ** 2, axis=1)
            ties = np.flatnonzero(spread <= spread.min() * (1 + 1e-9) + 1e-15)
            c.medoid_pin_id = int(min(np.array(c.members)[ties]))
            return c
    new_id = max((c.cluster_id for c in interests), default=-1) + 1
    fresh = Interest(
        cluster_id=new_id, medoid_pin_id=pin_id, importance=0.0, size=1, kind="online", centroid=x, members=[pin_id]
    )
    interests.append(fresh)
    return fresh
