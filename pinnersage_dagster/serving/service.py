"""The recommender: interests and recommendations per user, and the online event intake."""

from __future__ import annotations

import functools
import os
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pandas as pd

from ..core.decay import decay_weights, unit
from ..core.events import ACTIONS
from ..core.experiment import Experiment
from ..core.retrieval import proportional_budget, sample_medoids, sampled_shares
from .cache import MedoidCache
from .event_log import EventLog
from .impressions import ImpressionLog
from .merge import SCORE_DECIMALS, NeighbourList, encode_items, merge
from .online import ADDED, OLDER_THAN_KEPT, OnlineEvent, OnlineEvents, interest_arrays, user_interests
from .settings import ServiceSettings, ServingParams
from .snapshot import ServingSnapshot
from .store import SnapshotManager


class NoSnapshotError(RuntimeError):
    """Nothing has been published yet (or nothing loadable)."""


def utc_now() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC").tz_localize(None)


class RecommenderService:
    """``event_log``: where accepted events are made durable before they are acknowledged, and
    where the events other workers accepted are followed (``serving.event_log``). Without one
    (tests of the model alone), accepted events live in this process only.

    ``experiment``: users are assigned to its arms (``core.experiment``) and what each is shown is
    written to ``impressions``; a request that names its own policy is outside the experiment."""

    def __init__(
        self,
        manager: SnapshotManager,
        settings: ServiceSettings | None = None,
        event_log: EventLog | None = None,
        experiment: Experiment | None = None,
        impressions: ImpressionLog | None = None,
    ) -> None:
        self.settings = settings or ServiceSettings()
        self.manager = manager
        self.cache: MedoidCache[NeighbourList] = MedoidCache(self.settings.cache_entries)
        self.events = OnlineEvents(keep=ServingParams().online_recent_actions, max_users=self.settings.online_max_users)
        self.event_log = event_log
        self.experiment = experiment
        self.impressions = impressions
        self.replay_rejected: dict[str, int] = {}
        self._rng = np.random.default_rng()  # the medoid draw of requests without a seed (thread-safe)
        self._info: tuple[ServingSnapshot | None, dict[str, str]] = (None, {})
        # events read from the log (or held online) that a served batch covers: not rejections,
        # counted so every event read is accounted for
        self.covered_by_batch = 0
        previous = manager.on_swap

        def on_swap(snapshot: ServingSnapshot) -> None:
            self.events.keep = snapshot.serving.online_recent_actions  # as the batch was published
            # the new batch supersedes what it covers (events of its day accepted after its
            # raw_actions ran reach the batch with the next day's run: docs/reliability.md)
            self.covered_by_batch += self.events.prune(before=snapshot.batch_time)
            if self.event_log is not None:
                self.event_log.retire_before(snapshot.batch_time.date())
            if previous is not None:
                previous(snapshot)

        manager.on_swap = on_swap

    def snapshot(self) -> ServingSnapshot:
        snapshot = self.manager.current
        if snapshot is None:
            raise NoSnapshotError("no serving snapshot has been published yet: materialize serving_snapshot")
        if self.event_log is not None:  # what any worker accepted is visible here from the next request on
            followed = self.event_log.follow(since=snapshot.batch_time.date())
            if followed:
                self._keep(snapshot, followed, utc_now())
        return snapshot

    def _keep(self, snapshot: ServingSnapshot, events: list[OnlineEvent], now: pd.Timestamp) -> None:
        """Events read from the log (replayed at start, or appended by another worker): the same
        rules as a post; what they refuse is counted, never fatal."""
        for event in events:
            raw = {"user_id": event.user_id, "pin_id": event.pin_id, "action": event.action, "ts": event.ts}
            checked, reason = self._validate(snapshot, raw, now)
            if reason == "covered_by_batch":
                self.covered_by_batch += 1
            elif checked is None:
                self.replay_rejected[reason] = self.replay_rejected.get(reason, 0) + 1
            else:
                self.events.add(checked)

    def interests(self, user_id: int, now: pd.Timestamp | None = None) -> dict[str, Any]:
        snapshot = self.snapshot()
        now = now or utc_now()
        interests = user_interests(snapshot, user_id, self.events.for_user(user_id, snapshot.batch_time), now)
        return {
            "user_id": user_id,
            "snapshot": _snapshot_info(snapshot),
            "interests": [
                {
                    "cluster_id": c.cluster_id,
                    "medoid_pin_id": c.medoid_pin_id,
                    "importance": round(c.importance, 6),
                    "size": c.size,
                    "kind": c.kind,
                    "online_updated": c.online_updated,
                    "online_actions": c.online_actions,
                }
                for c in sorted(interests, key=lambda c: -c.importance)
            ],
        }

    def recommend(
        self,
        user_id: int,
        *,
        seed: int | None = None,
        exclude_seen: bool = True,
        budget: int | None = None,
        now: pd.Timestamp | None = None,
        policy: str | None = None,
    ) -> dict[str, Any]:
        """The answer ``recommend_json`` serves, decoded."""
        return orjson.loads(
            self.recommend_json(user_id, seed=seed, exclude_seen=exclude_seen, budget=budget, now=now, policy=policy)
        )

    def recommend_json(
        self,
        user_id: int,
        *,
        seed: int | None = None,
        exclude_seen: bool = True,
        budget: int | None = None,
        now: pd.Timestamp | None = None,
        policy: str | None = None,
    ) -> bytes:
        """The user's recommendations as the API's JSON body.

        ``policy``: 'sampled' (the paper: e medoids drawn by importance, floor(budget / e) each;
        a budget below e goes one pin each to the most important drawn), 'proportional' (every
        medoid, a share of the budget by importance; ``core.retrieval``) or 'decay_average' (the
        paper's control: one decay-weighted average embedding). Under an experiment, a request
        that names no policy gets its user's arm. ``seed`` fixes the medoid draw."""
        snapshot = self.snapshot()
        now_ns = now.value if now is not None else time.time_ns()  # naive timestamps are UTC
        experiment, at = None, None
        if self.experiment is not None:
            at = datetime.fromtimestamp(now_ns / 1e9, UTC).replace(tzinfo=None)
            experiment = self.experiment if self.experiment.active(at.date()) else None
        arm = experiment.arm(user_id) if experiment and policy is None else None
        answer, items, pins = self._recommend(snapshot, user_id, seed, exclude_seen, budget, now_ns, arm or policy)
        answer["items"] = orjson.Fragment(items)
        answer["experiment"] = {"name": experiment.name, "arm": arm} if experiment and arm else None
        answer["impression_id"] = os.urandom(8).hex()
        if experiment is not None and at is not None and self.impressions is not None:
            self.impressions.record(
                {
                    "impression_id": answer["impression_id"],
                    "ts": at.isoformat(timespec="milliseconds"),
                    "user_id": user_id,
                    "experiment": experiment.name,
                    "arm": arm,  # None: the request named its own policy (outside the experiment)
                    "policy": answer["policy"],
                    "source": answer["source"],
                    "snapshot": snapshot.partition,
                    "snapshot_version": snapshot.version,
                    "pin_ids": pins.tolist(),
                },
                at.date(),
            )
        return orjson.dumps(answer)

    def _recommend(
        self,
        snapshot: ServingSnapshot,
        user_id: int,
        seed: int | None,
        exclude_seen: bool,
        budget: int | None,
        now_ns: int,
        policy: str | None,
    ) -> tuple[dict[str, Any], bytes, np.ndarray]:
        """The answer without its items, the items' JSON, and their pin ids."""
        budget = budget or min(snapshot.serving.retrieval_budget, self.settings.max_budget)
        events = self.events.for_user(user_id, snapshot.batch_time)
        interests = interest_arrays(snapshot, user_id, events, now_ns)
        seen = snapshot.seen(user_id) if exclude_seen else np.empty(0, np.int64)  # sorted, unique
        if exclude_seen and events:
            seen = np.union1d(seen, [e.pin_id for e in events])
        if not len(interests.importance):
            return self._cold_start(snapshot, user_id, budget, seen)
        policy = policy or self.settings.policy or snapshot.serving.retrieval_policy
        if policy == "decay_average":
            return self._decay_average(snapshot, user_id, events, pd.Timestamp(now_ns), budget, seen)
        importance = interests.importance
        if policy == "proportional":
            shares = proportional_budget(importance, budget)
            picked = np.flatnonzero(shares)
            picked = picked[np.argsort(-importance[picked], kind="stable")]
            shares = shares[picked]
        elif policy == "sampled":
            draw = self._rng if seed is None else seed
            picked = sample_medoids(importance, snapshot.serving.sampled_medoids, draw)
            shares = sampled_shares(importance[picked], budget)
            picked, shares = picked[shares > 0], shares[shares > 0]
        else:
            raise ValueError(f"unknown retrieval policy {policy!r}")
        clusters, medoids = interests.cluster_id[picked].tolist(), interests.medoid_pin_id[picked].tolist()
        ks = shares.tolist()
        margin = min(len(seen), self.settings.exclusion_margin)
        # fetched at least ef deep: hnswlib searches max(ef, k) candidates for k neighbours, so a
        # shallower fetch costs the same search, finds the same head (but for the order of pins at
        # exactly equal distance) and would be refetched by a deeper request
        ef, count = snapshot.index_manifest.ef, snapshot.index_manifest.count
        lists = [
            self.cache.get(
                snapshot.version, m, min(max(k + margin, ef), count), functools.partial(self._ann, snapshot, m)
            )
            for m, k in zip(medoids, ks)
        ]
        merged = merge(lists, ks, budget, seen)
        answer = {
            "user_id": user_id,
            "source": "pinnersage",
            "policy": policy,
            "snapshot": self._snapshot_info(snapshot),
            "per_medoid": max(ks, default=0),
            "sampled": [
                {
                    "cluster_id": c,
                    "medoid_pin_id": m,
                    "importance": round(i, 6),
                    "online_updated": u,
                    "share": k,
                }
                for c, m, i, u, k in zip(
                    clusters,
                    medoids,
                    importance[picked].tolist(),
                    interests.online_updated[picked].tolist(),
                    ks,
                )
            ],
        }
        return answer, encode_items(merged, clusters, medoids), merged.pins

    def _decay_average(
        self,
        snapshot: ServingSnapshot,
        user_id: int,
        events: list[OnlineEvent],
        now: pd.Timestamp,
        budget: int,
        seen: np.ndarray,
    ) -> tuple[dict[str, Any], bytes, np.ndarray]:
        """The control arm: the whole budget from one vector, the user's decay average now (the
        batch's sum decayed to now, plus the day's events: ``core.decay``)."""
        day = pd.Timedelta(days=1)
        query = np.zeros(snapshot.catalog.dimension)
        batch = snapshot.decay_sum(user_id)
        if batch is not None:
            query += decay_weights(np.array([(now - snapshot.batch_time) / day]), snapshot.decay_lambda)[0] * batch
        if events:
            ages = np.array([(now - e.ts) / day for e in events]).clip(min=0)
            weights = decay_weights(ages, snapshot.decay_lambda)
            query += weights @ snapshot.embeddings(np.array([e.pin_id for e in events])).astype(np.float64)
        if not np.any(query):
            return self._cold_start(snapshot, user_id, budget, seen)
        depth = min(budget + min(len(seen), self.settings.exclusion_margin), snapshot.index_manifest.count)
        labels, distances = snapshot.index.knn_query(unit(query).astype(np.float32)[None, :], k=depth)
        pins, scores = snapshot.index_pin_ids[labels[0]], 1.0 - distances[0].astype(np.float64)
        keep = ~np.isin(pins, seen) if seen.size else np.ones(len(pins), bool)
        pins, scores = pins[keep][:budget], scores[keep][:budget]
        answer = {
            "user_id": user_id,
            "source": "pinnersage",
            "policy": "decay_average",
            "snapshot": self._snapshot_info(snapshot),
            "per_medoid": len(pins),
            "sampled": [],
        }
        items = [
            {"pin_id": p, "score": s, "cluster_id": None, "medoid_pin_id": None}
            for p, s in zip(pins.tolist(), np.round(scores, SCORE_DECIMALS).tolist())
        ]
        return answer, orjson.dumps(items), pins

    def _ann(self, snapshot: ServingSnapshot, medoid_pin_id: int, depth: int) -> NeighbourList:
        if depth <= 0:
            return NeighbourList.of(np.empty(0, np.int64), np.empty(0))
        query = snapshot.embeddings(np.array([medoid_pin_id]))
        labels, distances = snapshot.index.knn_query(query, k=depth)
        return NeighbourList.of(snapshot.index_pin_ids[labels[0]], 1.0 - distances[0].astype(np.float64))

    def _cold_start(
        self, snapshot: ServingSnapshot, user_id: int, budget: int, seen: np.ndarray
    ) -> tuple[dict[str, Any], bytes, np.ndarray]:
        """Users with no interests get the window's most acted-on pool pins, most popular first."""
        popular = (
            snapshot.popular[~np.isin(snapshot.popular, seen)][:budget] if seen.size else snapshot.popular[:budget]
        )
        answer = {
            "user_id": user_id,
            "source": "popular",
            "policy": "popular",
            "snapshot": self._snapshot_info(snapshot),
            "per_medoid": 0,
            "sampled": [],
        }
        items = [{"pin_id": p, "score": None, "cluster_id": None, "medoid_pin_id": None} for p in popular.tolist()]
        return answer, orjson.dumps(items), popular

    def _snapshot_info(self, snapshot: ServingSnapshot) -> dict[str, str]:
        """The answer's ``snapshot`` section, built once per snapshot (encoded at once, never changed)."""
        if self._info[0] is not snapshot:
            self._info = (snapshot, _snapshot_info(snapshot))
        return self._info[1]

    def post_events(self, events: list[dict[str, Any]], now: pd.Timestamp | None = None) -> dict[str, Any]:
        """Validate and keep events. Returns the accepted count, each rejected event with its
        reason, and each accepted event that has no online effect (``offline_only``, with its
        reason): it is durable and reaches the batch like any other."""
        snapshot = self.snapshot()
        now = now or utc_now()
        checked = [self._validate(snapshot, raw, now) for raw in events]
        valid = [event for event, _ in checked if event is not None]
        if self.event_log is not None:  # durable first (EventLogError: nothing is acknowledged)
            new, others = self.event_log.append(valid)
            self._keep(snapshot, others, now)
            fresh = iter(new)
        accepted, rejected, offline_only = 0, [], []
        for position, (event, reason) in enumerate(checked):
            if event is not None:
                is_new = next(fresh) if self.event_log is not None else True  # not already in the log
                status = self.events.add(event) if is_new else "duplicate"
                if status == OLDER_THAN_KEPT:
                    offline_only.append({"index": position, "reason": status})
                elif status != ADDED:
                    reason = "duplicate_event"
            if reason:
                rejected.append({"index": position, "reason": reason})
            else:
                accepted += 1
        return {
            "accepted": accepted,
            "rejected": rejected,
            "offline_only": offline_only,
            "snapshot": _snapshot_info(snapshot),
        }

    def _validate(
        self, snapshot: ServingSnapshot, raw: dict[str, Any], now: pd.Timestamp
    ) -> tuple[OnlineEvent | None, str]:
        if raw["action"] not in ACTIONS:
            return None, "invalid_action"
        ts = pd.Timestamp(raw["ts"])
        ts = ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts
        if not snapshot.in_catalog(np.array([raw["pin_id"]]))[0]:
            return None, "unknown_pin_id"
        if ts < snapshot.batch_time:
            return None, "covered_by_batch"
        if ts > now + pd.Timedelta(seconds=self.settings.future_tolerance_seconds):
            return None, "ts_in_future"
        return OnlineEvent(ts=ts, user_id=int(raw["user_id"]), pin_id=int(raw["pin_id"]), action=raw["action"]), ""


def _snapshot_info(snapshot: ServingSnapshot) -> dict[str, str]:
    return {
        "partition": snapshot.partition,
        "version": snapshot.version,
        "index_build": snapshot.index_manifest.build_id,
    }
