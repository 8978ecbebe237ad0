"""Retrieval as the paper: sampling, the floor(400/e) budget and merge, exclusion, cache, online rule, swaps."""

import threading

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chisquare

from pinnersage_dagster.core.retrieval import per_medoid_budget, proportional_budget, sample_medoids
from pinnersage_dagster.serving.cache import MedoidCache
from pinnersage_dagster.serving.merge import NeighbourList, merge
from pinnersage_dagster.serving.online import OnlineEvent
from pinnersage_dagster.serving.service import RecommenderService
from pinnersage_dagster.serving.settings import ServiceSettings
from pinnersage_dagster.serving.snapshot import load_snapshot
from pinnersage_dagster.serving.store import SnapshotManager

from ..support import catalog, publish_day

DAY, NEXT = "2026-05-01", "2026-05-02"
NOW = pd.Timestamp("2026-05-02 12:00")  # during the day after DAY's batch


@pytest.fixture
def service(tmp_path) -> RecommenderService:
    publish_day(tmp_path, DAY)
    manager = SnapshotManager(tmp_path / "serving")
    service = RecommenderService(manager, ServiceSettings())
    assert manager.refresh()
    return service


def test_first_draw_is_proportional_to_importance():
    importance = np.array([1.0, 2.0, 3.0, 4.0])
    rng = np.random.default_rng(0)
    first = np.array([sample_medoids(importance, 1, rng)[0] for _ in range(20_000)])
    observed = np.bincount(first, minlength=4)
    assert chisquare(observed, 20_000 * importance / importance.sum()).pvalue > 0.001


def test_sampling_is_without_replacement_and_follows_successive_proportions():
    importance = np.array([6.0, 3.0, 1.0])
    rng = np.random.default_rng(1)
    draws = [tuple(sample_medoids(importance, 2, rng)) for _ in range(20_000)]
    assert all(a != b for a, b in draws)
    pairs = pd.Series(draws).value_counts()
    p = importance / importance.sum()
    expected = {(i, j): p[i] * p[j] / (1 - p[i]) for i in range(3) for j in range(3) if i != j}
    keys = sorted(expected)
    assert chisquare([pairs.get(k, 0) for k in keys], [20_000 * expected[k] for k in keys]).pvalue > 0.001
    assert sorted(sample_medoids(importance, 10, rng)) == [0, 1, 2]  # fewer clusters than asked: all of them
    with pytest.raises(ValueError):
        sample_medoids(np.array([1.0, np.nan]), 1, rng)


def test_budget_and_merge():
    assert [per_medoid_budget(400, e) for e in (1, 2, 3, 4, 7)] == [400, 200, 133, 100, 57]
    a = NeighbourList.of(np.array([1, 2, 3, 4]), np.array([0.9, 0.8, 0.7, 0.6]))
    b = NeighbourList.of(np.array([3, 5, 6, 7]), np.array([0.95, 0.5, 0.4, 0.3]))
    merged = merge([a, b], [3, 3], budget=400, exclude=np.array([2]))
    assert list(zip(merged.pins.tolist(), merged.source.tolist())) == [(3, 1), (1, 0), (4, 0), (5, 1), (6, 1)]
    assert merged.scores.tolist() == [0.95, 0.9, 0.6, 0.5, 0.4]
    assert len(merge([a, b], [3, 3], budget=2, exclude=np.array([], dtype=np.int64)).pins) == 2


def test_recommendations_follow_the_paper(service):
    result = service.recommend(1, seed=3, now=NOW)
    assert result["source"] == "pinnersage" and len(result["sampled"]) == 2  # user 1 has 2 interests
    assert result["per_medoid"] == 200
    items = result["items"]
    ids = [i["pin_id"] for i in items]
    assert len(ids) == len(set(ids)) <= 400
    seen = set(service.snapshot().seen(1).tolist())
    assert not seen & set(ids)  # excluded by default
    scores = [i["score"] for i in items]
    assert scores == sorted(scores, reverse=True)
    # each item comes from the medoid of its own topic
    ids_all, _, topic = catalog()
    topic_of = dict(zip(ids_all.tolist(), topic.tolist()))
    best = [i for i in items if i["score"] > 0.5]
    assert best and all(topic_of[i["pin_id"]] == topic_of[i["medoid_pin_id"]] for i in best)
    included = service.recommend(1, seed=3, exclude_seen=False, now=NOW)
    assert seen & {i["pin_id"] for i in included["items"]}


def test_proportional_budget_by_hand():
    assert proportional_budget(np.array([1.0]), 400).tolist() == [400]
    assert proportional_budget(np.array([5.0, 3.0, 2.0]), 400).tolist() == [200, 120, 80]
    # 240 / 120 / 40 by importance; the first is capped at 200 and its 40 go to the others, 3:1
    assert proportional_budget(np.array([6.0, 3.0, 1.0]), 400).tolist() == [200, 150, 50]
    assert proportional_budget(np.array([10.0, 1.0]), 400).tolist() == [200, 200]  # the cap: both interests shown
    assert proportional_budget(np.array([1.0, 1.0, 1.0]), 400).tolist() == [134, 133, 133]  # largest remainder
    fifty = proportional_budget(np.ones(50), 400)  # a floor of 10: only the 40 first can be queried
    assert (fifty > 0).sum() == 40 and set(fifty[fifty > 0]) == {10} and fifty.sum() == 400
    rng = np.random.default_rng(0)
    for n in (2, 7, 39, 41, 300):
        importance = rng.pareto(1.0, n) + 1e-3
        shares = proportional_budget(importance, 400)
        used = shares[shares > 0]
        assert shares.sum() <= 400 and used.min() >= 10 and used.max() <= 200
        order = np.argsort(-importance, kind="stable")
        assert np.all(np.diff(shares[order]) <= 0)  # a more important medoid never gets less


def test_the_proportional_policy_spends_the_budget_over_every_medoid(service):
    result = service.recommend(1, now=NOW, policy="proportional")
    assert result["policy"] == "proportional" and len(result["sampled"]) == 2  # both of user 1's interests
    shares = [m["share"] for m in result["sampled"]]
    assert sum(shares) <= 400 and result["per_medoid"] == max(shares)
    ids = [i["pin_id"] for i in result["items"]]
    assert len(ids) == len(set(ids)) <= 400
    assert service.recommend(1, now=NOW, policy="proportional")["items"] == result["items"]  # nothing is sampled
    with pytest.raises(ValueError, match="unknown retrieval policy"):
        service.recommend(1, now=NOW, policy="greedy")


def test_cold_start_users_get_popular_pins(service):
    result = service.recommend(3, now=NOW)
    assert result["source"] == "popular" and result["sampled"] == []
    assert [i["pin_id"] for i in result["items"]] == service.snapshot().popular.tolist()


def test_medoid_cache_hits_bounds_and_versions(service):
    service.recommend(1, seed=3, now=NOW)
    misses = service.cache.misses
    service.recommend(1, seed=3, now=NOW)
    assert service.cache.misses == misses and service.cache.hits >= 2 and service.cache.hit_rate > 0

    cache = MedoidCache(max_entries=2)
    calls = []

    def fetch(depth):
        calls.append(depth)
        return np.arange(depth), np.ones(depth)

    cache.get("v1", 1, 5, fetch)
    cache.get("v1", 1, 3, fetch)  # shallower: served from the entry
    cache.get("v1", 1, 8, fetch)  # deeper: refetched
    cache.get("v1", 2, 5, fetch)
    cache.get("v1", 3, 5, fetch)  # evicts medoid 1 (least recently used)
    assert len(cache) == 2 and calls == [5, 8, 5, 5]
    cache.get("v1", 1, 5, fetch)
    cache.get("v2", 2, 5, fetch)  # a new index version starts empty
    assert calls == [5, 8, 5, 5, 5, 5] and len(cache) == 1


def test_online_event_joins_the_cheapest_cluster_or_starts_one(service):
    ids, _, topic = catalog()
    topic1_new = int(ids[np.flatnonzero(topic == 1)][30])  # near user 1's second interest
    topic3_new = int(ids[np.flatnonzero(topic == 3)][0])  # a topic user 1 never touched
    before = {c["cluster_id"]: c for c in service.interests(1, now=NOW)["interests"]}
    ts = NOW - pd.Timedelta(hours=1)
    posted = service.post_events(
        [
            {"user_id": 1, "pin_id": topic1_new, "action": "click", "ts": ts},
            {"user_id": 1, "pin_id": topic3_new, "action": "repin", "ts": ts},
            {"user_id": 1, "pin_id": topic3_new, "action": "repin", "ts": ts},  # repeated
            {"user_id": 1, "pin_id": 42, "action": "click", "ts": ts},  # not in the catalog
            {"user_id": 1, "pin_id": topic1_new, "action": "click", "ts": pd.Timestamp(DAY)},  # the batch has it
            {"user_id": 1, "pin_id": topic1_new, "action": "click", "ts": NOW + pd.Timedelta(hours=2)},
        ],
        now=NOW,
    )
    assert posted["accepted"] == 2
    assert [r["reason"] for r in posted["rejected"]] == [
        "duplicate_event",
        "unknown_pin_id",
        "covered_by_batch",
        "ts_in_future",
    ]

    after = {c["cluster_id"]: c for c in service.interests(1, now=NOW)["interests"]}
    joined = after[1]
    assert joined["size"] == before[1]["size"] + 1 and joined["online_updated"] and joined["online_actions"] == 1
    assert joined["importance"] == pytest.approx(before[1]["importance"] + np.exp(-0.01 / 24))
    new = [c for c in after.values() if c["kind"] == "online"]
    assert len(new) == 1 and new[0]["medoid_pin_id"] == topic3_new and new[0]["size"] == 1
    assert not after[0]["online_updated"] and after[0]["importance"] == pytest.approx(before[0]["importance"])
    # recommendations reflect it at once: the seen list grows, and the new interest can be sampled
    recs = service.recommend(1, seed=0, now=NOW)
    assert topic1_new not in {i["pin_id"] for i in recs["items"]}
    assert topic3_new in {s["medoid_pin_id"] for s in recs["sampled"]}  # 3 interests, 3 samples: all drawn
    assert any(i["medoid_pin_id"] == topic3_new for i in recs["items"])


def test_batch_importance_decays_with_time_since_the_batch(service):
    at_batch = service.interests(1, now=pd.Timestamp("2026-05-02"))["interests"]
    a_day_later = service.interests(1, now=pd.Timestamp("2026-05-03"))["interests"]
    for x, y in zip(at_batch, a_day_later):
        assert y["importance"] == pytest.approx(x["importance"] * np.exp(-0.01))


def test_a_newer_snapshot_supersedes_online_state(tmp_path):
    publish_day(tmp_path, DAY)
    service = RecommenderService(SnapshotManager(tmp_path / "serving"))
    service.manager.refresh()
    ids, _, topic = catalog()
    pin = int(ids[np.flatnonzero(topic == 3)][0])
    service.post_events([{"user_id": 1, "pin_id": pin, "action": "click", "ts": NOW}], now=NOW)
    assert service.events.users == 1
    publish_day(tmp_path, NEXT)  # the batch of NEXT covers NOW
    assert service.manager.refresh()
    assert service.snapshot().partition == NEXT
    assert service.events.users == 0
    assert all(c["kind"] != "online" for c in service.interests(1, now=NOW + pd.Timedelta(days=1))["interests"])


def test_a_broken_snapshot_is_refused_and_the_old_one_keeps_serving(tmp_path):
    publish_day(tmp_path, DAY)
    manager = SnapshotManager(tmp_path / "serving")
    service = RecommenderService(manager)
    assert manager.refresh()
    manifest = publish_day(tmp_path, NEXT)
    medoids = tmp_path / "serving" / NEXT / "builds" / manifest["build_id"] / "medoids.parquet"
    medoids.write_bytes(medoids.read_bytes()[:-20])  # truncated: checksum mismatch
    assert not manager.refresh()
    assert service.snapshot().partition == DAY
    assert list(manager.refusals) == [(NEXT, manifest["build_id"])]
    assert not manager.refresh()  # not retried
    republished = publish_day(tmp_path, NEXT)
    assert manager.refresh() and service.snapshot().version == republished["build_id"]


def test_an_incomplete_snapshot_is_never_loaded(tmp_path):
    publish_day(tmp_path, DAY)
    (tmp_path / "serving" / NEXT / "builds" / "partial").mkdir(parents=True)  # a crash before the manifest
    manager = SnapshotManager(tmp_path / "serving")
    assert manager.refresh() and manager.current.partition == DAY
    assert manager.published() == [(DAY, manager.current.version)]


def test_swapping_under_load_drops_no_request_and_never_mixes_snapshots(tmp_path):
    publish_day(tmp_path, DAY)
    service = RecommenderService(SnapshotManager(tmp_path / "serving"))
    service.manager.refresh()
    errors, seen_versions = [], set()
    stop = threading.Event()

    def client():
        while not stop.is_set():
            try:
                result = service.recommend(1, now=NOW)
                snap = result["snapshot"]
                seen_versions.add((snap["partition"], snap["version"], snap["index_build"]))
                assert result["items"]
            except Exception as exc:
                errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for partition in (NEXT, "2026-05-03", "2026-05-04"):
        publish_day(tmp_path, partition)
        assert service.manager.refresh()
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    # every answer used the index build its own snapshot was published with
    for partition, version, index_build in seen_versions:
        snapshot = load_snapshot(tmp_path / "serving" / partition)
        assert (snapshot.version, snapshot.index_manifest.build_id) == (version, index_build)
        assert snapshot.index_manifest.source_partition == partition
    assert len({v[0] for v in seen_versions}) >= 2


def test_online_event_ordering():
    a = OnlineEvent(pd.Timestamp("2026-01-01 10:00"), 1, 5, "click")
    b = OnlineEvent(pd.Timestamp("2026-01-01 09:00"), 1, 6, "click")
    assert sorted([a, b]) == [b, a]
