"""The default alpha recovers the planted interests of the synthetic world (a measurement, not a constant)."""

from datetime import date

from pinnersage_dagster.config import PinnerSageParams
from pinnersage_dagster.core.calibration import alpha_sweep, synthetic_window
from pinnersage_dagster.core.synthetic import SyntheticWorld


def test_default_alpha_recovers_planted_interests():
    alpha = PinnerSageParams().alpha
    world = SyntheticWorld(n_users=250, seed=3)
    user_ids, pin_ids, embeddings, topics = synthetic_window(world, date(2026, 9, 30))
    sweep = alpha_sweep(user_ids, pin_ids, embeddings, [0.5, alpha, 6.0], labels=topics).set_index("alpha")
    ari = sweep["mean_adjusted_rand_index"]
    assert ari[alpha] >= 0.98
    assert ari[alpha] > ari[0.5] + 0.2  # too small an alpha splits interests
    assert ari[alpha] > ari[6.0]  # too large an alpha merges them
    assert sweep.loc[alpha, "mean_purity"] >= 0.98


def test_sweep_without_labels_reports_cluster_shape():
    world = SyntheticWorld(n_users=60, seed=4)
    user_ids, pin_ids, embeddings, _ = synthetic_window(world, date(2026, 9, 30), window_days=30)
    sweep = alpha_sweep(user_ids, pin_ids, embeddings, [0.5, 1.3])
    assert "mean_adjusted_rand_index" not in sweep
    assert (sweep["clusters_per_user_p50"].diff().dropna() <= 0).all()  # larger alpha, fewer clusters
