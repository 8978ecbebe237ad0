"""The default alpha, measured on the realistic synthetic world (a measurement, not a constant),
and the world itself: as hard as real logs, and still deterministic."""

from datetime import date

import numpy as np
import pytest

from pinnersage_dagster.config import PinnerSageParams
from pinnersage_dagster.core.calibration import alpha_sweep, synthetic_window
from pinnersage_dagster.core.synthetic import SyntheticWorld, generate_day_actions, generate_pins, generate_population


@pytest.mark.slow
def test_default_alpha_is_where_recovery_peaks_on_the_realistic_world():
    alpha = PinnerSageParams().alpha
    world = SyntheticWorld(n_users=400, seed=3)  # another seed than the calibration's
    user_ids, pin_ids, embeddings, topics = synthetic_window(world, date(2026, 9, 30))
    grid = [0.6, 1.2, alpha, 2.4, 6.0]
    sweep = alpha_sweep(user_ids, pin_ids, embeddings, grid, labels=topics).set_index("alpha")
    ari = sweep["mean_adjusted_rand_index"]
    assert ari[alpha] >= ari.max() - 0.01  # the default sits at the peak, within noise
    assert ari[alpha] > ari[0.6] + 0.3  # too small an alpha splits interests
    assert ari[alpha] > ari[6.0]  # too large an alpha merges neighbouring topics
    assert 0.9 <= ari[alpha] < 1.0  # overlapping topics: good, not perfect


def test_the_realistic_world_is_messy_where_the_clean_one_is_not():
    real, clean = SyntheticWorld(n_pins=4_000, seed=5), SyntheticWorld(n_pins=4_000, seed=5, preset="clean")
    rng = np.random.default_rng(0)
    spreads = {}
    for name, world in (("real", real), ("clean", clean)):
        pins = generate_pins(world)
        i, j = rng.integers(0, 4_000, 40_000), rng.integers(0, 4_000, 40_000)
        cos = np.einsum("ij,ij->i", pins.embedding[i], pins.embedding[j])
        same = (pins.topic[i] == pins.topic[j]) & (i != j)
        adjacent = (np.abs(pins.topic[i] - pins.topic[j]) == 1) & (pins.category[i] == pins.category[j])
        spreads[name] = (np.percentile(cos[same], [10, 90]), np.median(cos[adjacent]))
    (lo, hi), neighbours = spreads["real"]
    assert hi - lo > 0.2 and neighbours > 0.35  # in-topic cosines spread; neighbouring topics close
    (lo, hi), neighbours = spreads["clean"]
    assert hi - lo < 0.15 and neighbours < 0.4
    # heavy users have many more interests than light ones
    population = generate_population(SyntheticWorld(n_users=2_000, seed=5))
    interests = np.bincount(population.interest_user)
    heavy = population.rate >= np.quantile(population.rate, 0.99)
    assert np.median(interests[~heavy]) <= 5 and interests[heavy].mean() > 50
    # accidental actions land outside the user's interests; every day is reproducible alone
    day = date(2026, 6, 1)
    for world, low, high in (
        (SyntheticWorld(n_users=500, n_pins=4_000, seed=5, dirty_share=0), 0.05, 0.1),
        (SyntheticWorld(n_users=500, n_pins=4_000, seed=5, dirty_share=0, preset="clean"), 0, 0),
    ):
        actions = generate_day_actions(world, day)
        pins, population = generate_pins(world), generate_population(world)
        topic_of = dict(zip(pins.pin_id.tolist(), pins.topic.tolist()))
        interests = set(zip(population.interest_user.tolist(), population.interest_topic.tolist()))
        outside = np.mean([(u - 1, topic_of[p]) not in interests for u, p in zip(actions.user_id, actions.pin_id)])
        assert low <= outside <= high, (world.preset, outside)
    assert generate_day_actions(real, day).equals(generate_day_actions(real, day))


def test_sweep_without_labels_reports_cluster_shape():
    world = SyntheticWorld(n_users=60, seed=4, preset="clean")
    user_ids, pin_ids, embeddings, _ = synthetic_window(world, date(2026, 9, 30), window_days=30)
    sweep = alpha_sweep(user_ids, pin_ids, embeddings, [0.5, 1.3])
    assert "mean_adjusted_rand_index" not in sweep
    assert {"ward_clusters_median_users", "ward_clusters_heaviest_1pct"} <= set(sweep.columns)
    assert (sweep["clusters_per_user_p50"].diff().dropna() <= 0).all()  # larger alpha, fewer clusters
