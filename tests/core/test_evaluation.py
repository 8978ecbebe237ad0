"""Offline evaluation: each metric on tiny hand-computed cases, each baseline's construction."""

import numpy as np
import pandas as pd
import pytest

from pinnersage_dagster.core.evaluation import (
    ModelResult,
    Users,
    calibrated_threshold,
    cluster_representation,
    complete_linkage_members,
    decay_average,
    diversity,
    evaluate_representation,
    exact_search,
    kmeans_members,
    last_pin,
    ranking_metrics,
    recall,
    relevance,
    sample_negatives,
    ward_members,
)
from pinnersage_dagster.core.offline import BASELINE, PINNERSAGE, bootstrap_lift_intervals, run_offline

E = np.eye(4, dtype=np.float32)


def test_relevance_and_recall_by_hand():
    test = np.array([E[0], E[1], (E[2] + E[3]) / np.sqrt(2)])
    recs = np.array([E[0], E[2]])
    assert relevance(test, recs, 0.8) == pytest.approx(1 / 3)  # only E0 has a twin (cos 1); cos(t3, E2) = 0.707
    assert relevance(test, recs, 0.7) == pytest.approx(2 / 3)
    assert relevance(test, np.empty((0, 4)), 0.8) == 0.0
    assert recall(np.array([1, 2, 3, 4]), np.array([2, 4, 9])) == pytest.approx(0.5)


def test_diversity_is_mean_pairwise_cosine_distance():
    assert diversity(np.array([E[0], E[1]])) == pytest.approx(1.0)  # orthogonal
    assert diversity(np.array([E[0], E[0], E[1]])) == pytest.approx(1 - (1 + 0 + 0) / 3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cos = x @ x.T
    brute = 1 - (cos.sum() - 30) / (30 * 29)
    assert diversity(x) == pytest.approx(brute)


def test_ranking_metrics_by_hand():
    # actions score 0.9 and 0.3; impressions 0.5, 0.4, 0.1 -> ranks 1 and 4
    r_prec, rr_first, rr_all = ranking_metrics(np.array([0.9, 0.3]), np.array([0.5, 0.4, 0.1]))
    assert r_prec == pytest.approx(0.5)  # top 2 holds one action
    assert rr_first == 1.0  # the first action is ranked 1st
    assert rr_all == pytest.approx((1 / 1 + 1 / 4) / 2)
    # both readings differ when the best action is not first: ranks 2 and 5 of 5
    assert ranking_metrics(np.array([0.6, 0.05]), np.array([0.7, 0.4, 0.1])) == pytest.approx(
        (1 / 2, 1 / 2, (1 / 2 + 1 / 5) / 2)
    )
    # a tie ranks the action after the impression (pessimistic)
    assert ranking_metrics(np.array([0.5]), np.array([0.5])) == (0.0, 0.5, 0.5)


def test_last_pin_breaks_a_tie_by_the_highest_pin_id():
    users = small_users()
    tied = users.history.copy()
    tied.loc[len(tied)] = [1, 12, pd.Timestamp("2026-03-09")]  # 12 and 20 share the latest ts
    tied = tied.sort_values(["user_id", "ts"], kind="stable").iloc[::-1].reset_index(drop=True)  # any input order
    users = Users(
        history=tied, test=users.test, catalog_ids=users.catalog_ids, catalog_x=users.catalog_x, now=users.now
    )
    assert np.allclose(last_pin(users)[1][0], users.x([20]))


def test_impressions_never_include_pins_the_user_acted_on():
    users = small_users()  # a 6-pin catalog: user 1 acted on 10, 11, 12, 20 (history) and 21 (test)
    negatives = sample_negatives(users, np.random.default_rng(0))
    assert len(negatives[1]) == 20 and set(negatives[1]) == {30}
    assert len(negatives[2]) == 20 and not set(negatives[2]) & {30}


def test_micro_averages_weigh_users_by_their_test_actions():
    result = ModelResult(
        user_ids=np.array([1, 2]),
        per_user=np.array([[1.0] * 7, [0.0] * 7]),
        actions=np.array([3.0, 1.0]),
        queries=np.array([3.0, 1.0]),
    )
    assert result.macro("recall") == 0.5 and result.micro("recall") == 0.75
    assert result.recall == 0.5


def test_bootstrap_interval_brackets_the_lift_and_is_paired():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.6, size=(400, 7))
    twin = ModelResult(np.arange(400), base * 1.2, np.ones(400), np.ones(400))
    baseline = ModelResult(np.arange(400), base, np.ones(400), np.ones(400))
    lows, highs = bootstrap_lift_intervals([twin], [baseline], resamples=300)
    # every user gains exactly 20%: a paired bootstrap gives a zero-width interval around +20%
    assert lows["recall"] == pytest.approx(0.2) and highs["recall"] == pytest.approx(0.2)
    noisy = ModelResult(np.arange(400), base * rng.uniform(0.9, 1.5, size=base.shape), np.ones(400), np.ones(400))
    lows, highs = bootstrap_lift_intervals([noisy], [baseline], resamples=300)
    lift = noisy.macro("recall") / baseline.macro("recall") - 1
    assert lows["recall"] < lift < highs["recall"] and highs["recall"] - lows["recall"] < 0.1


def test_exact_search_returns_the_true_nearest_pins():
    users = small_users()
    search = exact_search(users.catalog_ids, users.catalog_x)
    assert search(users.x([10]), 3)[0].tolist() == [10, 11, 12]
    assert search(users.x([20, 30]), 1).tolist() == [[20], [30]]


def test_calibrated_threshold_is_the_99th_percentile_of_random_pairs():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2000, 32))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    t = calibrated_threshold(x, np.random.default_rng(2))
    i, j = rng.integers(0, 2000, 50_000), rng.integers(0, 2000, 50_000)
    share = np.mean(np.einsum("ij,ij->i", x[i], x[j])[i != j] >= t)
    assert share == pytest.approx(0.01, abs=0.003)


def small_users() -> Users:
    """User 1: three actions on topic 0 then one on topic 1 (most recent); user 2: one pin."""
    ids = np.array([10, 11, 12, 20, 21, 30])
    x = np.array([E[0], E[0] * 0.99 + E[3] * 0.14, E[0] * 0.98 + E[2] * 0.2, E[1], E[1] * 0.99 + E[2] * 0.14, E[2]])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    now = pd.Timestamp("2026-03-10")
    history = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 1, 2],
            "pin_id": [10, 11, 12, 20, 30],
            "ts": pd.to_datetime(["2026-03-01", "2026-03-02", "2026-03-03", "2026-03-09", "2026-03-05"]),
        }
    )
    test = pd.DataFrame({"user_id": [1, 2], "pin_id": [21, 30]})
    return Users(history=history, test=test, catalog_ids=ids, catalog_x=x, now=now)


def test_single_embedding_baselines():
    users = small_users()
    last = last_pin(users)
    assert np.allclose(last[1][0], users.x([20]))  # the most recent action
    decay = decay_average(users, 0.0)[1][0][0]
    expected = users.x([10, 11, 12, 20]).sum(axis=0)
    assert np.allclose(decay, expected / np.linalg.norm(expected), atol=1e-6)
    recent = decay_average(users, 10.0)[1][0][0]  # a huge lambda: the last pin dominates
    assert recent @ users.x([20])[0] > 0.99


def test_cluster_baselines_are_built_as_stated():
    users = small_users()
    ward = ward_members(users, alpha=1.3)
    groups = sorted(ward[ward.user_id == 1].groupby("cluster_id").pin_id.apply(frozenset).tolist(), key=min)
    assert groups == [frozenset({10, 11, 12})]  # pin 20 merges with nothing: not a cluster (Algorithm 1)
    assert ward[ward.user_id == 2].kind.tolist() == ["singleton"]  # the product's fallback
    medoid = cluster_representation(users, ward, 0.01, "medoid")[1]
    assert np.allclose(medoid[0][0], users.x([10])[0])  # nearest the mean of {10, 11, 12}
    assert medoid[1][0] == pytest.approx(sum(np.exp(-0.01 * d) for d in (9, 8, 7)))
    centroid = cluster_representation(users, ward, 0.01, "centroid")[1][0][0]
    mean = users.x([10, 11, 12]).mean(axis=0)
    assert np.allclose(centroid, mean / np.linalg.norm(mean), atol=1e-6)
    assert kmeans_members(users, 5, seed=0).query("user_id == 1").cluster_id.nunique() == 4  # k = min(5, 4 pins)
    complete = complete_linkage_members(users, alpha=1.3)
    assert sorted(complete.query("user_id == 1").pin_id) == [10, 11, 12]


def test_evaluate_representation_uses_floor_budget_per_embedding():
    users = small_users()
    asked = []

    def search(queries, k):
        asked.append((len(queries), k))
        return np.tile(users.catalog_ids[:3], (len(queries), 1))

    rep = {1: (users.x([10, 20, 30]), np.ones(3)), 2: (users.x([30]), np.ones(1))}
    negatives = {1: np.array([30] * 20), 2: np.array([10] * 20)}
    result = evaluate_representation(
        users, rep, search, sampled=2, rng=np.random.default_rng(0), threshold=0.8, calibrated=0.8, negatives=negatives
    )
    assert asked == [(2, 200), (1, 400)]
    assert 0 <= result.relevance <= 1 and 0 <= result.recall <= 1
    asked.clear()
    rep = {1: (users.x([10, 20, 30]), np.array([6.0, 3.0, 1.0])), 2: (users.x([30]), np.ones(1))}
    result = evaluate_representation(
        users,
        rep,
        search,
        sampled=None,
        rng=np.random.default_rng(0),
        threshold=0.8,
        calibrated=0.8,
        negatives=negatives,
        policy="proportional",
    )
    # every medoid, its share of 400 by importance: 240/120/40, the cap of 200 gives 40 back by importance
    assert asked == [(1, 200), (1, 150), (1, 50), (1, 400)]
    assert result.queries.tolist() == [3, 1]


@pytest.mark.slow
def test_offline_run_compares_every_model_on_synthetic_users():
    from datetime import date, timedelta

    from pinnersage_dagster.core.hnsw import build_index
    from pinnersage_dagster.core.synthetic import UNKNOWN_PIN_ID, SyntheticWorld, generate_day_actions, generate_pins

    world = SyntheticWorld(n_users=150, n_pins=5000, seed=9, dirty_share=0, preset="clean")
    pins = generate_pins(world)
    order = np.argsort(pins.pin_id)
    ids, x = pins.pin_id[order], pins.embedding[order]
    split = date(2026, 7, 1)
    frame = lambda days: pd.concat([generate_day_actions(world, d) for d in days])
    history = frame([split - timedelta(days=i) for i in range(1, 61)]).query(f"pin_id != {UNKNOWN_PIN_ID}")
    test = frame([split + timedelta(days=i) for i in range(7)])[["user_id", "pin_id"]].drop_duplicates()
    keep = np.intersect1d(history.user_id.unique(), test.user_id.unique())
    users = Users(
        history=history[history.user_id.isin(keep)].sort_values(["user_id", "ts"]).reset_index(drop=True),
        test=test[test.user_id.isin(keep)].reset_index(drop=True),
        catalog_ids=ids,
        catalog_x=x,
        now=pd.Timestamp(split),
    )
    index = build_index(x, M=16, ef_construction=100, ef=200)
    search = lambda q, k: ids[index.knn_query(q, k=k)[0]]
    report = run_offline(
        users,
        search,
        alpha=1.3,
        seeds=2,
        alphas=(0.5, 1.3),
        max_embeddings=3,
        topic_of=pd.Series(pins.topic[order], index=ids),
    )
    assert len(report.table) == 13 and report.table.loc[BASELINE, "relevance_lift"] == 0
    main = report.table.loc[PINNERSAGE]
    assert (
        main.relevance
        > report.table.loc["Decay average (λ=0.01)", "relevance"]
        > report.table.loc[BASELINE, "relevance"]
    )
    assert list(report.curve.e) == [1, 2, 3] and len(report.alpha_sweep) == 2


def test_the_horizon_takes_exactly_its_days_and_zero_means_up_to_the_newest(tmp_path):
    from datetime import date

    import duckdb

    from pinnersage_dagster.assets.evaluation import horizon_to_newest
    from pinnersage_dagster.evaluation_report import load_split
    from pinnersage_dagster.resources import FileSource
    from pinnersage_dagster.warehouse import ensure_tables, write_pins

    split = date(2026, 3, 10)
    x = np.eye(8, dtype=np.float32)
    with duckdb.connect(str(tmp_path / "w.duckdb")) as conn:
        ensure_tables(conn)
        write_pins(conn, pd.DataFrame({"pin_id": np.arange(8), "quality": 1.0, "created_at": pd.NaT}), x)
        history = pd.DataFrame(
            {
                "partition_date": split - pd.Timedelta(days=1),
                "user_id": 1,
                "pin_id": [0, 1],
                "action": "click",
                "ts": pd.to_datetime(["2026-03-08", "2026-03-09"]),
            }
        )
        conn.register("h", history)
        conn.execute(
            "INSERT INTO action_windows SELECT CAST(partition_date AS DATE), user_id, pin_id, action, ts FROM h"
        )
        # one test action on each of the 4 days from the split: pins 2, 3, 4, 5
        conn.execute("""INSERT INTO raw_actions SELECT DATE '2026-03-10' + CAST(i AS INTEGER), 1, 2 + i, 'click',
                        TIMESTAMP '2026-03-10 12:00' + INTERVAL (i) DAY FROM range(4) t(i)""")
        for horizon, pins in ((1, [2]), (2, [2, 3]), (4, [2, 3, 4, 5]), (9, [2, 3, 4, 5])):
            users = load_split(conn, split, horizon, min_train_actions=1, max_users=10, seed=0)
            assert users.test["pin_id"].tolist() == pins, horizon
    log = tmp_path / "log.csv"
    log.write_text(
        "user_id,pin_id,action,ts\n1,2,click,2026-03-10T12:00:00Z\n1,5,click,2026-03-13T12:00:00Z\n"
        "1,6,click,2099-01-01T00:00:00Z\n"
    )  # a future row does not stretch the horizon
    assert horizon_to_newest(FileSource(actions_path=str(log)), split) == 4
    with pytest.raises(ValueError, match="no day on or after the split day"):
        horizon_to_newest(FileSource(actions_path=str(log)), date(2026, 3, 14))
