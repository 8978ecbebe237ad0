"""The model is exactly the paper's: Ward clusters (Algorithm 1), medoid (Eq. 2), importance (Eq. 3)."""

import numpy as np
import pandas as pd
import pytest

from pinnersage_dagster.core.representatives import segment_importance, segment_medoids
from pinnersage_dagster.core.user_pass import SINGLETON, WARD, represent_history
from pinnersage_dagster.core.ward import UNCLUSTERED, clusters_from_linkage, cut_linkages, ward_clusters, ward_linkage

from ..reference.algorithm1 import algorithm1, merge_loop
from ..reference.two_pass import cluster_users, summarize_clusters


def product_clusters(P: np.ndarray, alpha: float) -> set[frozenset[int]]:
    labels = ward_clusters(P, alpha).labels
    return {frozenset(np.flatnonzero(labels == c).tolist()) for c in set(labels.tolist()) - {UNCLUSTERED}}


def random_points(rng: np.random.Generator, m: int, dim: int) -> np.ndarray:
    """Points around a few random centres, so that alpha cuts fall between and within groups."""
    centres = rng.standard_normal((rng.integers(1, 6), dim)) * rng.uniform(0.5, 3.0)
    return centres[rng.integers(0, len(centres), m)] + rng.standard_normal((m, dim)) * rng.uniform(0.1, 1.0)


@pytest.mark.parametrize("seed", range(200))
def test_ward_matches_literal_algorithm1(seed):
    rng = np.random.default_rng(seed)
    P = random_points(rng, int(rng.integers(2, 40)), int(rng.integers(2, 12)))
    heights = sorted(d for _, d in merge_loop(P))
    # an alpha strictly between two merge distances (or beyond all), never on a tie
    k = int(rng.integers(0, len(heights) + 1))
    lo = heights[k - 1] if k > 0 else 0.0
    hi = heights[k] if k < len(heights) else heights[-1] * 2 + 1
    alpha = lo + (hi - lo) * rng.uniform(0.2, 0.8)
    assert product_clusters(P, alpha) == set(algorithm1(P, alpha))


@pytest.mark.parametrize("seed", range(5))
def test_ward_matches_algorithm1_on_unit_embeddings(seed):
    from pinnersage_dagster.core.synthetic import SyntheticWorld, generate_pins

    pins = generate_pins(SyntheticWorld(n_pins=2_000, seed=seed, preset="clean"))
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(pins.pin_id), 60, replace=False)
    P = pins.embedding[rows].astype(np.float64)
    assert product_clusters(P, 1.3) == set(algorithm1(P, 1.3))


def test_merge_costs_are_on_the_paper_scale():
    P = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0]])
    result = ward_clusters(P, alpha=1.5)  # d = ||p0 - p1||^2 = 1 <= 1.5; the next merge is far above
    assert result.labels.tolist() == [0, 0, UNCLUSTERED]
    assert result.merge_costs == pytest.approx([1.0])
    assert ward_clusters(P, alpha=0.99).n_clusters == 0  # d = 1 > alpha: no cluster at all


@pytest.mark.parametrize("seed", range(20))
def test_one_cut_of_a_batch_equals_each_users_own_cut(seed):
    """The per-user pass cuts a whole batch's trees at once: each set gets exactly its own
    clusters (numbered by first row), including sets of one point and sets with no cluster."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 30, size=int(rng.integers(1, 8)))
    points = [random_points(rng, int(m), 6) for m in sizes]
    alpha = float(rng.uniform(0.5, 20.0))
    trees = [ward_linkage(p) for p in points if len(p) >= 2]
    batch = cut_linkages(trees, sizes, alpha)
    row, cost, linked = 0, 0, iter(trees)
    for s, m in enumerate(sizes.tolist()):
        own = clusters_from_linkage(next(linked), alpha) if m >= 2 else ward_clusters(points[s], alpha)
        assert np.array_equal(batch.labels[row : row + m], own.labels)
        assert batch.counts[s] == own.n_clusters
        assert np.array_equal(batch.merge_costs[cost : cost + own.n_clusters], own.merge_costs)
        row, cost = row + m, cost + own.n_clusters
    with pytest.raises(ValueError, match="one linkage"):
        cut_linkages(trees[:-1], sizes, alpha) if trees else cut_linkages(
            [ward_linkage(points[0][:1].repeat(2, 0))], sizes, alpha
        )


def test_ward_rejects_bad_alpha():
    with pytest.raises(ValueError, match="alpha"):
        ward_clusters(np.zeros((3, 2)), alpha=0)


@pytest.mark.parametrize("seed", range(30))
def test_medoid_is_brute_force_argmin_of_squared_distances(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 25, size=rng.integers(1, 8))
    X = rng.standard_normal((sizes.sum(), 6))
    segments = np.repeat(np.arange(len(sizes)), sizes)
    got = segment_medoids(X, segments)
    start = 0
    for s, size in enumerate(sizes):
        block = X[start : start + size]
        cost = ((block[:, None, :] - block[None, :, :]) ** 2).sum(axis=(1, 2))
        assert got[s] == start + int(np.argmin(cost))
        start += size


def test_importance_is_eq3():
    ages = np.array([0.0, 10.0, 100.0, 1.5])
    seg = np.array([0, 0, 1, 1])
    got = segment_importance(seg, ages, 2, decay_lambda=0.01)
    assert got == pytest.approx([1 + np.exp(-0.1), np.exp(-1.0) + np.exp(-0.015)])
    assert segment_importance(seg, ages, 2, decay_lambda=0.0) == pytest.approx([2, 2])  # lambda 0 counts actions
    with pytest.raises(ValueError):
        segment_importance(seg, -ages - 1, 2, 0.01)


def _two_topic_user(rng):
    a, b = np.eye(8)[0], np.eye(8)[1]
    X = np.vstack([a + 0.05 * rng.standard_normal((5, 8)), b + 0.05 * rng.standard_normal((4, 8))])
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def test_cluster_users_follows_algorithm1_and_falls_back_to_singletons():
    rng = np.random.default_rng(0)
    X1 = _two_topic_user(rng)
    far = np.eye(8)[2:5]  # three orthogonal pins: squared distance 2 > alpha, never merge
    user_ids = np.r_[np.full(9, 1), np.full(3, 2), [3]]
    pin_ids = np.r_[np.arange(9), np.arange(100, 103), [7]]
    members = cluster_users(user_ids, pin_ids, np.vstack([X1, far, far[:1]]), alpha=1.3)

    u1 = members[members.user_id == 1]
    assert set(u1.kind) == {WARD}
    assert sorted(u1.groupby("cluster_id").pin_id.apply(frozenset)) == sorted(
        [frozenset(range(5)), frozenset(range(5, 9))]
    )
    u2 = members[members.user_id == 2]
    assert set(u2.kind) == {SINGLETON} and len(u2) == 3 and u2.cluster_id.nunique() == 3
    u3 = members[members.user_id == 3]
    assert u3.kind.tolist() == [SINGLETON] and u3.pin_id.tolist() == [7]


def test_the_daily_pass_follows_algorithm1_and_falls_back_to_singletons():
    rng = np.random.default_rng(0)
    X1 = _two_topic_user(rng)
    far = np.eye(8)[2:5]
    x = np.vstack([X1, far])
    ids = np.arange(12)  # catalog: pins 0-8 of user 1's topics, 9-11 three orthogonal pins
    history = pd.DataFrame(
        {
            "user_id": np.r_[np.full(9, 1), np.full(3, 2), [3]],
            "pin_id": np.r_[np.arange(9), [9, 10, 11], [9]],
            "ts": pd.Timestamp("2026-02-01"),
        }
    )
    members = represent_history(history, ids, x, alpha=1.3, decay_lambda=0.01, now=pd.Timestamp("2026-03-01"))
    u1 = members[members.user_id == 1]
    assert set(u1.kind) == {WARD}
    assert sorted(u1.groupby("cluster_id").pin_id.apply(frozenset)) == sorted(
        [frozenset(range(5)), frozenset(range(5, 9))]
    )
    u2 = members[members.user_id == 2]
    assert set(u2.kind) == {SINGLETON} and len(u2) == 3 and u2.cluster_id.nunique() == 3
    u3 = members[members.user_id == 3]
    assert u3.kind.tolist() == [SINGLETON] and u3.pin_id.tolist() == [9]


def test_cluster_users_requires_distinct_pins():
    with pytest.raises(ValueError, match="twice"):
        cluster_users(np.array([1, 1]), np.array([5, 5]), np.eye(2), alpha=1.0)


def test_summarize_clusters_matches_brute_force():
    rng = np.random.default_rng(3)
    X = _two_topic_user(rng)
    members = cluster_users(np.full(9, 1), np.arange(9), X, alpha=1.3)
    now = pd.Timestamp("2026-03-01")
    # pin 2 acted on three times, pin 7 twice: importance sums over actions, not pins
    pins = [0, 1, 2, 2, 2, 3, 4, 5, 6, 7, 7, 8]
    ages = rng.uniform(0, 89, len(pins))
    actions = pd.DataFrame({"user_id": 1, "pin_id": pins, "ts": now - pd.to_timedelta(ages, unit="D")})
    members = members.sort_values(["user_id", "cluster_id"], kind="stable").reset_index(drop=True)
    out = summarize_clusters(members, X[members.pin_id.to_numpy()], actions, now=now, decay_lambda=0.01)
    for row in out.itertuples():
        pins_in = members.loc[members.cluster_id == row.cluster_id, "pin_id"].to_numpy()
        cost = [sum(np.sum((X[m] - X[j]) ** 2) for j in pins_in) for m in pins_in]
        assert row.medoid_pin_id == pins_in[int(np.argmin(cost))]
        mask = np.isin(pins, pins_in)
        assert row.importance == pytest.approx(np.exp(-0.01 * ages[mask]).sum(), rel=1e-9)
        assert row.n_actions == mask.sum() and row.size == len(pins_in)


@pytest.mark.parametrize("seed", range(12))
def test_float32_screened_medoids_equal_the_float64_pass(seed, monkeypatch):
    """The float32 screen decides most clusters and never changes the float64 answer, even on
    near-ties: mirrored members (equal spreads in exact arithmetic) nudged by a few float32 ulps,
    exact duplicates, pairs, tight and loose clusters, members far from unit norm."""
    from pinnersage_dagster.core import representatives

    rng = np.random.default_rng(seed)
    blocks = []
    for _ in range(60):
        size = int(rng.choice([1, 2, 3, 5, 40, 300]))
        centre = rng.standard_normal(32)
        points = centre + rng.standard_normal((size, 32)) * 10.0 ** rng.uniform(-6, 0)
        if size >= 4 and rng.random() < 0.5:  # mirror half the members through the mean, then nudge
            half = size // 2
            points[half : 2 * half] = 2 * points.mean(axis=0) - points[:half]
            points *= 1 + rng.integers(-3, 4, size=points.shape) * np.finfo(np.float32).eps
        if size >= 3 and rng.random() < 0.3:
            points[1] = points[0]
        points /= np.linalg.norm(points, axis=1, keepdims=True)
        blocks.append(points * (1000.0 if seed % 3 == 0 else 1.0))
    x = np.vstack(blocks).astype(np.float32)
    segments = np.repeat(np.arange(len(blocks)), [len(b) for b in blocks])
    starts = np.r_[0, np.cumsum([len(b) for b in blocks])[:-1]]
    exact = representatives._exact_medoids(x.astype(np.float64), starts)
    decided_exactly = []
    original = representatives._exact_medoids
    monkeypatch.setattr(
        representatives, "_exact_medoids", lambda b, s: decided_exactly.append(len(s)) or original(b, s)
    )
    for block_rows in (1, 64, 4096):
        np.testing.assert_array_equal(segment_medoids(x, segments, block_rows=block_rows), exact)
    order = rng.permutation(len(x))
    np.testing.assert_array_equal(segment_medoids(x[order], segments, rows=np.argsort(order)), exact)
    assert 0 < sum(decided_exactly) < 4 * len(blocks)  # the screen decided some clusters, not all
    with pytest.raises(ValueError, match="same number of rows"):
        segment_medoids(x, segments, rows=order[:-1])
