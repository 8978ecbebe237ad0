"""The cheap request path answers what the old one did: the same items, scores, order and
explanation fields for the same chosen medoids and shares (``tests/reference/retrieval.py``),
over thousands of requests of the tiny graph's snapshot (the demo's, in ``test_readme``); the
draw keeps its distribution; every budget from 1 yields items."""

import numpy as np
import orjson
import pandas as pd
import pytest
from scipy.stats import chisquare

from pinnersage_dagster.core.retrieval import proportional_budget, sample_medoids, sampled_shares
from pinnersage_dagster.serving.merge import NeighbourList, encode_items, merge
from pinnersage_dagster.serving.service import RecommenderService
from pinnersage_dagster.serving.settings import ServiceSettings
from pinnersage_dagster.serving.store import SnapshotManager

from ..reference.retrieval import compare_with_reference, merge_candidates, old_items, old_proportional_budget
from ..support import DAY

NOW = pd.Timestamp(DAY) + pd.Timedelta(days=1, hours=9)  # the morning after the tiny graph's day


def test_answers_equal_the_old_path_for_the_same_medoids_and_shares(graph):
    counts = compare_with_reference(graph.root / "serving", requests=3000)
    assert counts["sampled"] > 1000 and counts["proportional"] > 1000 and counts["items"] > 100_000
    assert counts.get("sampled, online", 0) + counts.get("proportional, online", 0) > 10


def test_merge_equals_the_old_merge_on_ties_duplicates_and_exclusion():
    rng = np.random.default_rng(5)
    for _ in range(2000):
        lists, tuples = [], []
        for medoid in range(int(rng.integers(1, 6))):
            n = int(rng.integers(0, 60))
            pins = rng.choice(80, size=n, replace=False).astype(np.int64)  # small ids: lists share pins
            scores = -np.sort(-rng.choice([0.5, 0.25, 0.125, 0.9, 0.7], size=n))  # many exact ties
            lists.append(NeighbourList.of(pins, scores))
            tuples.append((medoid, 1000 + medoid, pins, scores))
        takes = rng.integers(1, 40, size=len(lists)).tolist()
        exclude = np.unique(rng.choice(80, size=int(rng.integers(0, 30)))).astype(np.int64)
        budget = int(rng.integers(1, 100))
        merged = merge(lists, takes, budget, exclude)
        items = orjson.loads(encode_items(merged, list(range(len(lists))), [1000 + m for m in range(len(lists))]))
        assert items == old_items(*merge_candidates(tuples, takes, budget, exclude))


def test_the_draw_is_proportional_to_importance_without_replacement_seeded_or_not():
    """The exponential-clock draw against successive sampling's probabilities: the first pick,
    and ordered pairs, from a generator and from per-request seeds."""
    importance = np.array([6.0, 3.0, 1.0, 2.0])
    p = importance / importance.sum()
    expected = {(i, j): p[i] * p[j] / (1 - p[i]) for i in range(4) for j in range(4) if i != j}
    keys = sorted(expected)
    rng = np.random.default_rng(11)
    for source in ("generator", "seeds"):
        draws = [
            tuple(sample_medoids(importance, 2, rng if source == "generator" else seed).tolist())
            for seed in range(40_000)
        ]
        assert all(a != b for a, b in draws)
        pairs = pd.Series(draws).value_counts()
        observed = [pairs.get(k, 0) for k in keys]
        assert chisquare(observed, [40_000 * expected[k] for k in keys]).pvalue > 0.001, source
        firsts = np.bincount([a for a, _ in draws], minlength=4)
        assert chisquare(firsts, 40_000 * p).pvalue > 0.001, source
    assert sample_medoids(importance, 3, 12345).tolist() == sample_medoids(importance, 3, 12345).tolist()
    assert sorted(sample_medoids(importance, 10, 7).tolist()) == [0, 1, 2, 3]


def test_a_service_draws_by_importance_and_a_seed_fixes_the_draw(graph):
    service = RecommenderService(SnapshotManager(graph.root / "serving"), ServiceSettings(events_root=None))
    assert service.manager.refresh()
    snapshot = service.snapshot()
    counts = np.bincount(snapshot._medoid_users)
    user = int(np.argmax(counts))  # a user with the most interests (4 in the tiny graph), 3 drawn
    assert counts[user] > 3
    rows = snapshot.user_rows(user)
    medoids = snapshot.medoid_columns["medoid_pin_id"][rows]
    importance = snapshot.medoid_columns["importance"][rows]
    seen = {m: 0 for m in medoids.tolist()}
    n = 4000
    for _ in range(n):
        for m in service.recommend(user, budget=30, now=NOW)["sampled"]:
            seen[m["medoid_pin_id"]] += 1
    # inclusion frequencies against numpy's successive sampling of the same importances
    rng = np.random.default_rng(0)
    reference = np.zeros(len(medoids))
    for _ in range(20_000):
        reference[rng.choice(len(medoids), size=3, replace=False, p=importance / importance.sum())] += 1
    observed = np.array([seen[m] for m in medoids.tolist()]) / n
    assert np.allclose(observed, reference / 20_000, atol=0.035)
    first = service.recommend(user, seed=99, now=NOW)
    assert all(service.recommend(user, seed=99, now=NOW)["items"] == first["items"] for _ in range(5))
    assert len({tuple(m["medoid_pin_id"] for m in service.recommend(user, now=NOW)["sampled"]) for _ in range(50)}) > 1


@pytest.mark.parametrize("budget", [1, 2, 3, 4, 400])
def test_every_budget_yields_items_when_the_user_has_interests(graph, budget):
    """A budget below the medoids drawn (3) goes one pin each to the most important drawn."""
    service = RecommenderService(SnapshotManager(graph.root / "serving"), ServiceSettings(events_root=None))
    assert service.manager.refresh()
    snapshot = service.snapshot()
    counts = np.bincount(snapshot._medoid_users)
    for user in np.flatnonzero(counts >= 3)[:10].tolist():
        for policy in ("sampled", "proportional"):
            answer = service.recommend(user, seed=1, budget=budget, now=NOW, policy=policy)
            assert 1 <= len(answer["items"]) <= budget, (user, policy)
            shares = [m["share"] for m in answer["sampled"]]
            assert all(shares) and sum(shares) <= budget
        drawn = service.recommend(user, seed=1, budget=budget, now=NOW)["sampled"]
        if budget < 3:  # the most important of the three drawn
            assert len(drawn) == budget
    assert sampled_shares(np.array([1.0, 5.0, 3.0]), 2).tolist() == [0, 1, 1]
    assert sampled_shares(np.array([2.0, 2.0, 3.0]), 1).tolist() == [0, 0, 1]
    assert sampled_shares(np.array([2.0, 2.0, 1.0]), 1).tolist() == [1, 0, 0]  # a tie: the earlier drawn
    assert sampled_shares(np.array([1.0, 5.0, 3.0]), 400).tolist() == [133, 133, 133]


def test_proportional_shares_equal_the_old_rule():
    rng = np.random.default_rng(3)
    for _ in range(3000):
        n = int(rng.integers(1, 80))
        importance = rng.choice([rng.pareto(1.0, n) + 1e-3, rng.integers(1, 4, n).astype(float)])  # ties too
        budget = int(rng.integers(1, 401))
        assert proportional_budget(importance, budget).tolist() == old_proportional_budget(importance, budget).tolist()
