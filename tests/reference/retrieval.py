"""The recommendation path as it was before requests were made cheap, kept as the reference the
service's answers must equal for the same chosen medoids and shares.

The old path, per request: the user's ``Interest`` objects, a share per chosen medoid (floor(budget
/ e) for ``sampled``, ``core.retrieval.proportional_budget`` for ``proportional``), an ANN query of
depth share + margin per medoid on a cache miss, then per medoid ``np.isin`` against the seen pins,
one ``lexsort`` and ``np.unique`` over everything, and a dict per item; the proportional shares
with numpy scalars throughout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pinnersage_dagster.serving.online import user_interests
from pinnersage_dagster.serving.service import RecommenderService
from pinnersage_dagster.serving.settings import ServiceSettings
from pinnersage_dagster.serving.store import SnapshotManager


def merge_candidates(
    neighbours: list[tuple[int, int, np.ndarray, np.ndarray]], k: list[int], budget: int, exclude: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The old merge: each medoid's best ``k`` pins not in ``exclude``; a pin reached twice keeps
    its best score; sorted by score, then pin id."""
    parts = []
    for (cluster_id, medoid_pin_id, pin_ids, scores), take in zip(neighbours, k):
        if exclude.size:
            keep = ~np.isin(pin_ids, exclude)
            pin_ids, scores = pin_ids[keep], scores[keep]
        pin_ids, scores = pin_ids[:take], scores[:take]
        parts.append((pin_ids, scores, np.full(len(pin_ids), cluster_id), np.full(len(pin_ids), medoid_pin_id)))
    if not parts:
        empty = np.empty(0, dtype=np.int64)
        return empty, np.empty(0), empty, empty
    pins, scores, clusters, medoids = (np.concatenate(column) for column in zip(*parts))
    order = np.lexsort((pins, -scores))
    pins, scores, clusters, medoids = pins[order], scores[order], clusters[order], medoids[order]
    _, first = np.unique(pins, return_index=True)
    first = np.sort(first)[:budget]
    return pins[first], scores[first], clusters[first], medoids[first]


def old_proportional_budget(
    importance: np.ndarray, budget: int, *, floor: int = 10, cap_share: float = 0.5
) -> np.ndarray:
    """Pins to fetch per medoid (aligned with ``importance``; 0 = not queried), sum <= budget."""
    importance = np.asarray(importance, dtype=np.float64)
    shares = np.zeros(importance.size, dtype=np.int64)
    if importance.size == 0 or budget <= 0:
        return shares
    floor = max(1, min(floor, budget))
    cap = max(floor, int(budget * cap_share)) if importance.size > 1 else budget
    # the most important medoids that can all get the floor (ties: the lower index first)
    order = np.lexsort((np.arange(importance.size), -importance))
    queried = order[: max(1, budget // floor)]
    weights = importance[queried]
    share = np.zeros(queried.size)
    free, open_ = float(budget), np.ones(queried.size, dtype=bool)
    while open_.any():  # water-filling: a capped medoid's excess goes to the others, by importance
        share[open_] = free * weights[open_] / weights[open_].sum()
        over = open_ & (share > cap)
        if not over.any():
            break
        share[over] = cap
        open_ &= ~over
        free = budget - share[~open_].sum()
    share = np.maximum(share, floor)
    base = np.floor(share).astype(np.int64)
    base = np.minimum(base, cap)
    spare = budget - base.sum()
    if spare > 0:  # largest remainders first, never above the cap
        room = np.argsort(-(share - base), kind="stable")
        for i in room:
            if spare == 0:
                break
            if base[i] < cap:
                base[i] += 1
                spare -= 1
    while base.sum() > budget:  # the floors overshot: take from the largest shares
        base[np.argmax(base)] -= 1
    shares[queried] = base
    return shares


def old_items(pins, scores, clusters, medoids) -> list[dict]:
    return [
        {"pin_id": p, "score": s, "cluster_id": c, "medoid_pin_id": m}
        for p, s, c, m in zip(pins.tolist(), np.round(scores, 6).tolist(), clusters.tolist(), medoids.tolist())
    ]


def old_ann(service: RecommenderService, medoid_pin_id: int, depth: int) -> tuple[np.ndarray, np.ndarray]:
    snapshot = service.snapshot()
    query = snapshot.embeddings(np.array([medoid_pin_id]))
    labels, distances = snapshot.index.knn_query(query, k=depth)
    return snapshot.index_pin_ids[labels[0]], 1.0 - distances[0].astype(np.float64)


def same_up_to_ties(pins: np.ndarray, scores: np.ndarray, deeper_pins: np.ndarray, deeper_scores: np.ndarray) -> bool:
    """``pins`` (best first) are the head of ``deeper_pins`` but for the order of pins of equal
    score, and at the cut, which of the pins tied with the last one made it."""
    n = len(pins)
    if not np.array_equal(scores, deeper_scores[:n]):
        return False
    inside = scores != scores[-1] if n else np.zeros(0, bool)
    head = deeper_pins[:n]
    if sorted(zip(scores[inside], pins[inside])) != sorted(zip(scores[inside], head[inside])):
        return False
    return set(pins[~inside].tolist()) <= set(deeper_pins[deeper_scores == scores[-1]].tolist()) if n else True


def check_answer(
    service: RecommenderService, answer: dict, *, budget: int, now: pd.Timestamp, exclude_seen: bool = True
) -> None:
    """``answer`` (the service's, decoded) must be what the old path gives for the medoids and
    shares it chose: the same items, scores, order and explanation fields."""
    snapshot = service.snapshot()
    user_id = answer["user_id"]
    events = service.events.for_user(user_id, snapshot.batch_time)
    interests = {c.cluster_id: c for c in user_interests(snapshot, user_id, events, now)}
    seen = np.union1d(snapshot.seen(user_id), [e.pin_id for e in events]) if exclude_seen else np.empty(0, np.int64)
    chosen = answer["sampled"]
    for medoid in chosen:  # the explanation fields, as the old path wrote them
        c = interests[medoid["cluster_id"]]
        assert (medoid["medoid_pin_id"], medoid["importance"], medoid["online_updated"]) == (
            c.medoid_pin_id,
            round(c.importance, 6),
            c.online_updated,
        )
    ks = [m["share"] for m in chosen]
    if answer["policy"] == "proportional":  # the old shares, in the old order
        ordered = list(interests.values())
        shares = old_proportional_budget(np.array([c.importance for c in ordered]), budget)
        picked = np.flatnonzero(shares)
        picked = picked[np.argsort(-np.array([c.importance for c in ordered])[picked], kind="stable")]
        assert [(ordered[i].cluster_id, int(shares[i])) for i in picked] == [
            (m["cluster_id"], m["share"]) for m in chosen
        ]
    elif len(chosen) and budget >= len(chosen):  # the paper's floor(budget / e) for every drawn medoid
        assert ks == [budget // len(chosen)] * len(chosen)
    margin = min(len(seen), service.settings.exclusion_margin)
    neighbours = []
    for medoid, k in zip(chosen, ks):
        entry = service.cache._entries[medoid["medoid_pin_id"]][1]
        pins, scores = old_ann(service, medoid["medoid_pin_id"], len(entry))
        assert np.array_equal(pins, entry.pins) and np.array_equal(scores, entry.scores)
        # what the old path fetched (share + margin deep) is the entry's head while both are within
        # the index's ef (hnswlib searches max(ef, k) candidates), up to the order of pins at exactly
        # the same distance (hnswlib's heap keeps either of two tied pins at the cut); a deeper
        # entry, fetched for an earlier deeper request, served the old path's prefix just the same
        depth = k + margin
        if max(depth, len(entry)) <= snapshot.index_manifest.ef:
            shallow, shallow_scores = old_ann(
                service, medoid["medoid_pin_id"], min(depth, snapshot.index_manifest.count)
            )
            assert same_up_to_ties(shallow, shallow_scores, entry.pins, entry.scores)
        neighbours.append((medoid["cluster_id"], medoid["medoid_pin_id"], pins, scores))
    assert answer["items"] == old_items(*merge_candidates(neighbours, ks, budget, seen))


def compare_with_reference(serving_root: Path, requests: int, seed: int = 0) -> dict[str, int]:
    """``requests`` answers of a service on ``serving_root``, each checked against the old path:
    users, budgets 3..400, both policies, seen pins excluded or not, some users with the day's
    events (their interests updated online). Returns what was checked, by kind."""
    service = RecommenderService(SnapshotManager(serving_root), ServiceSettings(events_root=None))
    assert service.manager.refresh()
    snapshot = service.snapshot()
    now = snapshot.batch_time + pd.Timedelta(hours=9)  # the morning after the snapshot's day
    rng = np.random.default_rng(seed)
    users = np.unique(snapshot.medoids["user_id"].to_numpy())
    pool = snapshot.index_pin_ids
    for user in rng.choice(users, size=min(len(users), 10), replace=False).tolist():  # same-day events
        pins = rng.choice(pool, size=3, replace=False).tolist()
        events = [{"user_id": user, "pin_id": p, "action": "click", "ts": now - pd.Timedelta(minutes=5)} for p in pins]
        assert service.post_events(events, now=now)["accepted"] == 3
    counts: dict[str, int] = {}
    for _ in range(requests):
        user = int(rng.choice(users))
        budget = int(rng.integers(3, 401))
        policy = str(rng.choice(["sampled", "proportional"]))
        exclude_seen = bool(rng.random() < 0.8)
        answer = service.recommend(
            user, seed=int(rng.integers(2**63)), budget=budget, now=now, policy=policy, exclude_seen=exclude_seen
        )
        check_answer(service, answer, budget=budget, now=now, exclude_seen=exclude_seen)
        kind = f"{policy}{', online' if any(m['online_updated'] for m in answer['sampled']) else ''}"
        counts[kind] = counts.get(kind, 0) + 1
        counts["items"] = counts.get("items", 0) + len(answer["items"])
    return counts
