"""Candidate pool refinement, the HNSW artifact, the synthetic world and the recovery metrics."""

from datetime import date

import numpy as np
import pytest

from pinnersage_dagster.core.artifacts import ArtifactIntegrityError, save_npy_rows
from pinnersage_dagster.core.candidates import LOW_QUALITY, NEAR_DUPLICATE, refine_candidate_pool
from pinnersage_dagster.core.hnsw import build_index, load_index, publish_index, read_index_manifest
from pinnersage_dagster.core.metrics import adjusted_rand_index, pool_refinement_scores, purity
from pinnersage_dagster.core.synthetic import SyntheticWorld, generate_day_actions, generate_pins, generate_population

WORLD = SyntheticWorld(n_users=300, n_pins=20_000, seed=11, preset="clean")


def refine(world: SyntheticWorld):
    pins = generate_pins(world)
    refined = refine_candidate_pool(
        pins.pin_id, pins.embedding, pins.quality, pins.created_at, quality_threshold=0.25, duplicate_cosine=0.95
    )
    return pins, refined


def test_pool_refinement_removes_planted_faults_and_almost_nothing_else():
    pins, refined = refine(WORLD)
    scores = pool_refinement_scores(pins.truth(), refined.excluded)
    assert scores["expected_duplicate_removals"] > 500
    assert scores["low_quality_precision"] == 1.0 and scores["low_quality_recall"] == 1.0
    assert scores["duplicate_precision"] >= 0.99
    assert scores["duplicate_recall"] >= 0.98
    assert scores["removed_unplanted_pins"] <= 0.001 * len(pins.pin_id)
    # every pin is kept or excluded, exactly once
    assert len(refined.kept) + len(refined.excluded) == len(pins.pin_id)
    assert not set(refined.kept.pin_id) & set(refined.excluded.pin_id)


def test_duplicate_group_keeps_the_earliest_created_pin():
    rng = np.random.default_rng(0)
    base = rng.standard_normal(32)
    X = np.vstack([base, base + 0.01 * rng.standard_normal(32), base + 0.01 * rng.standard_normal(32), -base])
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    created = np.array(["2026-01-03", "2026-01-01", "2026-01-02", "2026-01-01"], dtype="datetime64[us]")
    refined = refine_candidate_pool(
        np.array([10, 11, 12, 13]),
        X,
        np.array([0.9, 0.5, 0.9, 0.1]),
        created,
        quality_threshold=0.25,
        duplicate_cosine=0.95,
    )
    assert sorted(refined.kept.pin_id) == [11]
    reasons = dict(zip(refined.excluded.pin_id, refined.excluded.reason))
    assert reasons == {13: LOW_QUALITY, 10: NEAR_DUPLICATE, 12: NEAR_DUPLICATE}
    assert set(refined.excluded.loc[refined.excluded.reason == NEAR_DUPLICATE, "representative_pin_id"]) == {11}
    assert refined.kept.n_duplicates.tolist() == [2]


def test_index_publish_load_and_refusal(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((500, 16)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    ids = np.arange(500, dtype=np.int64) * 7 - 100  # any int64 ids, negatives included
    index = build_index(X, M=16, ef_construction=100, ef=50)
    manifest = publish_index(tmp_path, index, ids, source_partition="2026-03-01", M=16, ef_construction=100, ef=50)
    loaded, loaded_ids, again = load_index(tmp_path)
    assert again == manifest and manifest.count == 500 and manifest.dimension == 16
    labels, _ = loaded.knn_query(X[:20], k=1)
    assert (loaded_ids[labels[:, 0]] == ids[:20]).mean() >= 0.95  # each pin finds itself

    # re-publishing swaps the manifest and removes the old build
    second = publish_index(tmp_path, index, ids, source_partition="2026-03-01", M=16, ef_construction=100, ef=50)
    assert [p.name for p in (tmp_path / "builds").iterdir()] == [second.build_id]
    assert read_index_manifest(tmp_path).build_id == second.build_id

    build = tmp_path / "builds" / second.build_id / "index.bin"
    data = bytearray(build.read_bytes())
    data[100] ^= 0xFF
    build.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError, match="checksum"):
        load_index(tmp_path)
    with pytest.raises(ArtifactIntegrityError, match="nothing published"):
        load_index(tmp_path / "missing")


def test_synthetic_world_is_deterministic_and_shaped_as_specified():
    day = date(2026, 6, 1)
    a, b = generate_day_actions(WORLD, day), generate_day_actions(WORLD, day)
    assert a.equals(b)
    assert not a.equals(generate_day_actions(WORLD, date(2026, 6, 2)))
    assert set(a.action) == {"repin", "click"}
    assert a.ts.min() >= np.datetime64("2026-06-01") and a.ts.max() < np.datetime64("2026-06-02")

    pins = generate_pins(WORLD)
    norms = np.linalg.norm(pins.embedding, axis=1)
    assert pins.embedding.shape == (20_000, 256) and np.allclose(norms, 1, atol=1e-5)
    same_topic = pins.topic[:1000] == pins.topic[0]
    cos = pins.embedding[:1000] @ pins.embedding[0]
    assert 0.7 < np.median(cos[same_topic][1:]) < 0.9 and np.median(cos[~same_topic]) < 0.35

    population = generate_population(WORLD)
    interests = np.bincount(population.interest_user)
    assert interests.min() >= 1 and interests.max() > 3 * np.median(interests)  # heavy tail
    assert population.rate.max() > 10 * np.median(population.rate)
    truth = population.truth(WORLD.epoch)
    assert truth.groupby("user_id").start_date.apply(lambda s: s.isna().any()).all()  # a lifelong interest each


def test_adjusted_rand_index_and_purity():
    truth = np.array([0, 0, 0, 1, 1, 1])
    assert adjusted_rand_index(truth, np.array([5, 5, 5, 9, 9, 9])) == pytest.approx(1.0)
    assert adjusted_rand_index(truth, np.array([0, 1, 2, 3, 4, 5])) == pytest.approx(0.0)
    # by hand: pairs 1, row pairs 2, column pairs 1, expected 2*1/6 = 1/3, max 3/2 -> (2/3)/(7/6) = 4/7
    assert adjusted_rand_index(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 2])) == pytest.approx(0.5714285714)
    assert purity(truth, np.array([0, 0, 1, 1, 1, 1])) == pytest.approx(5 / 6)


def test_npy_written_from_row_blocks_loads_as_the_array(tmp_path):
    x = np.random.default_rng(0).standard_normal((1000, 7))
    path = tmp_path / "x.npy"
    save_npy_rows(path, (x[i : i + 300] for i in range(0, 1000, 300)), x.shape, np.float32)
    assert np.array_equal(np.load(path), x.astype(np.float32))
    save_npy_rows(path, iter(()), (0, 7), np.float32)
    assert np.load(path).shape == (0, 7)
    with pytest.raises(ValueError, match="9 rows written, 10 expected"):
        save_npy_rows(path, [x[:9]], (10, 7), np.float32)
    with pytest.raises(ValueError, match="does not fit"):
        save_npy_rows(path, [x[:9], x[:9]], (10, 7), np.float32)
    with pytest.raises(ValueError, match="does not fit"):
        save_npy_rows(path, [x[:9, :6]], (9, 7), np.float32)
